import Foundation
import NIOSSL
import PortcullisAdmission
import PortcullisConfig
import PortcullisPKI
import PortcullisPolicy
import PortcullisYAML
import SwiftASN1
import X509

/// One consistent, immutable set of everything admission needs: TLS context, client trust, policies.
///
/// Built off the event loop (it reads files and builds an `NIOSSLContext`, both blocking) and shared by
/// every connection; a reload builds a new one and swaps it in whole.
public struct GatewayRuntime: Sendable {
    public let configuration: GatewayConfiguration
    public let sslContext: NIOSSLContext
    public let verifier: ClientCertificateVerifier
    /// Chains `verifier` accepted, with their leaf's facts; it belongs to this trust set and goes with it.
    let verifiedChains = VerifiedChainCache<CertificateFacts>()
    /// Intermediates of verified chains, for rebuilding a resumed session's chain; kept with the TLS context,
    /// whose session tickets outlive a reload that changes only the CRL or the policies.
    let seenIntermediates: SeenIntermediates
    /// What loading kept or decided that a reload's outcome should say (a vanished CRL kept in force).
    let notes: [String]
    public let admission: Admission
    /// What was loaded, for a reload to say what changed and for the expiry metrics.
    public let summary: RuntimeSummary

    /// Whether `other` is this very runtime (and not one loaded from the same files).
    func isSame(as other: GatewayRuntime) -> Bool { verifiedChains === other.verifiedChains }

    /// Reads the configured files and builds the runtime. With `previous`, its TLS context is kept when the
    /// server certificate, key, client CAs and TLS settings are unchanged, so that session tickets it issued
    /// stay valid: a CRL or policy reload then costs clients no full handshake.
    ///
    /// - Throws: ``GatewayStartupError`` naming the file and the problem.
    public static func load(_ configuration: GatewayConfiguration, previous: GatewayRuntime? = nil) throws
        -> GatewayRuntime
    {
        // Every stage is tried so that one start lists every problem, not only the first.
        var problems: [String] = []
        var policies: PolicySet?
        do {
            policies = try PolicySet.load(directory: configuration.policiesDirectory)
        } catch let error as DiagnosticsError {
            problems += error.diagnostics.map(\.description)
        }
        var trust: ClientTrust?
        var notes: [String] = []
        do {
            let tls = configuration.tls
            let vanished = tls.crl.map { tls.crlMayBeAbsent && !FileManager.default.fileExists(atPath: $0) } ?? false
            var loaded = try ClientTrust.load(
                caBundlePath: tls.clientCA, intermediatesPath: tls.clientIntermediates, crlPath: vanished ? nil : tls.crl,
                refusesExpiredCRLs: tls.crlExpired == .refuse)
            if let previous {
                let inForce = previous.verifier.trust.crls
                // Deleting the file must not un-revoke every certificate: the last CRL stays until a newer one
                // (as long as a CA of the bundle still signs it: a CRL of a CA taken out goes with it).
                let issuers = loaded.roots + loaded.intermediates
                let kept = inForce.filter { crl in issuers.contains { crl.isSigned(by: $0) } }
                if vanished, !kept.isEmpty {
                    loaded = loaded.replacingCRLs(with: kept)
                    notes.append(
                        "\(tls.crl ?? "the CRL") is gone: the CRL in force stays (revocations end only with a newer CRL)")
                }
                problems += olderCRLs(loaded.crls, than: inForce, path: tls.crl ?? "")
            }
            trust = loaded
        } catch {
            problems.append("client CA / CRL: \(error)")
        }
        var summary: RuntimeSummary?
        do {
            summary = try RuntimeSummary(configuration: configuration, trust: trust)
        } catch let error as GatewayStartupError {
            problems += error.problems
        }
        var sslContext: NIOSSLContext?
        var seenIntermediates = SeenIntermediates()
        if let previous, let summary, previous.configuration.tls.minusCRL == configuration.tls.minusCRL,
            previous.summary.tlsInputs == summary.tlsInputs
        {
            sslContext = previous.sslContext
            seenIntermediates = previous.seenIntermediates
        } else if summary != nil {
            do {
                sslContext = try makeSSLContext(configuration.tls, clientCAs: (trust?.roots ?? []) + (trust?.intermediates ?? []))
            } catch let error as GatewayStartupError {
                problems += error.problems
            }
        }
        guard let policies, let trust, let sslContext, let summary, problems.isEmpty else {
            throw GatewayStartupError(problems: problems)
        }
        return GatewayRuntime(
            configuration: configuration,
            sslContext: sslContext,
            verifier: ClientCertificateVerifier(trust: trust),
            seenIntermediates: seenIntermediates,
            notes: notes,
            admission: Admission(
                routes: configuration.routes, policies: policies,
                gatewayOrigins: OriginMatcher(configuration.allowedOrigins),
                maxHeaderBytes: configuration.maxHeaderBytes),
            summary: summary)
    }

    /// A problem for each CRL of `loaded` older than the one in force for the same issuer: by CRL number, or by
    /// `thisUpdate` when either has none. Installing it would un-revoke what the newer one revoked.
    static func olderCRLs(_ loaded: [CertificateRevocationList], than inForce: [CertificateRevocationList], path: String)
        -> [String]
    {
        loaded.compactMap { crl in
            guard let current = inForce.first(where: { $0.issuer == crl.issuer }) else { return nil }
            if let number = crl.number, let currentNumber = current.number {
                guard CertificateRevocationList.compareNumbers(number, currentNumber) == .orderedAscending else { return nil }
                return "\(path): CRL number \(hexString(number)) of \(crl.issuer) is older than the one in force "
                    + "(\(hexString(currentNumber))); an older CRL would un-revoke certificates"
            }
            guard crl.thisUpdate < current.thisUpdate else { return nil }
            return "\(path): the CRL of \(crl.issuer) was issued before the one in force; an older CRL would un-revoke certificates"
        }
    }

    /// ECDHE key exchange with AEAD ciphers only, TLS 1.2 or 1.3 minimum, client certificate required.
    static func makeSSLContext(_ tls: GatewayConfiguration.TLS, clientCAs: [Certificate]) throws -> NIOSSLContext {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(tls.certificateChain)
        } catch {
            throw GatewayStartupError(problems: ["\(tls.certificateChain): cannot read the server certificate chain"])
        }
        guard !chain.isEmpty else {
            throw GatewayStartupError(problems: ["\(tls.certificateChain): no certificate in the file"])
        }
        do {
            key = try NIOSSLPrivateKey(file: tls.privateKey, format: .pem)
        } catch {
            throw GatewayStartupError(problems: ["\(tls.privateKey): cannot read the server private key"])
        }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = tls.minimumVersion == .v1_3 ? .tlsv13 : .tlsv12
        configuration.curves = tls.keyExchange?.map { group -> NIOTLSCurve in
            switch group {
            case .x25519MLKEM768: .x25519_MLKEM768
            case .x25519: .x25519
            case .p256: .secp256r1
            case .p384: .secp384r1
            }
        }
        // TLS 1.2 suites: ECDHE and AEAD only. TLS 1.3 suites are not configurable and are all AEAD.
        configuration.cipherSuiteValues = [
            .TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, .TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            .TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, .TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            .TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, .TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ]
        // A client certificate is mandatory. Our verification callback replaces BoringSSL's checks; the trust
        // roots are still set so the CertificateRequest names our CAs and the system store is never loaded.
        configuration.certificateVerification = .noHostnameVerification
        let clientCADER = try clientCAs.map { cert -> NIOSSLCertificate in
            var serializer = DER.Serializer()
            try serializer.serialize(cert)
            return try NIOSSLCertificate(bytes: serializer.serializedBytes, format: .der)
        }
        configuration.trustRoots = .certificates(clientCADER)
        configuration.sendCANameList = true
        configuration.renegotiationSupport = .none
        do {
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw GatewayStartupError(problems: [
                "cannot build the TLS context from \(tls.certificateChain) and \(tls.privateKey): \(error)"
            ])
        }
    }
}

/// Why the gateway cannot start: every problem found, one per line.
public struct GatewayStartupError: Error, CustomStringConvertible {
    public var problems: [String]
    public var description: String { problems.joined(separator: "\n") }
}
