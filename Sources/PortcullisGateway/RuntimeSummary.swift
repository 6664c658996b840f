import Crypto
import Foundation
import PortcullisAudit
import PortcullisConfig
import PortcullisPKI
import PortcullisPolicy
import SwiftASN1
import X509

/// What a runtime was loaded from, in the terms an operator reads: the server certificate, the CAs, the
/// revoked serials, the policy files, origins and routes. A reload compares two of these to say what changed,
/// and the metrics read the certificates' expiry from it.
public struct RuntimeSummary: Sendable, Equatable {
    public struct CertificateSummary: Sendable, Equatable {
        public var subject: String
        public var serial: String
        public var fingerprint: String
        public var notValidAfter: Date

        init(_ certificate: Certificate) {
            var serializer = DER.Serializer()
            try? serializer.serialize(certificate)
            let facts = CertificateFacts(certificate: certificate, derBytes: serializer.serializedBytes)
            subject = facts.subject
            serial = facts.serial
            fingerprint = facts.fingerprint
            notValidAfter = certificate.notValidAfter
        }
    }

    public var serverCertificate: CertificateSummary
    /// Roots and intermediates of the client trust, in bundle order.
    public var certificateAuthorities: [CertificateSummary]
    /// Serials (hex) listed by the CRLs in force.
    public var revokedSerials: Set<String>
    /// Each CRL in force by issuer, number and next update: a renewed CRL with the same entries is a change too
    /// (it ends a stale CRL's `crl_expired` refusals).
    public var crlVersions: [String]
    /// Policy file name → SHA-256 of its contents.
    public var policyFiles: [String: String]
    public var allowedOrigins: [String]
    public var routes: [String]
    /// SHA-256 of each file the TLS context is built from (server chain, key, client CAs, intermediates): the
    /// same digests mean the same context.
    var tlsInputs: [String: String]

    /// Reads the server chain and the policy files; `trust` is what loading made of the CA bundle and CRL
    /// (nil when that failed, which the caller reports).
    ///
    /// - Throws: ``GatewayStartupError`` when the server certificate chain cannot be read.
    init(configuration: GatewayConfiguration, trust: ClientTrust?) throws {
        let tls = configuration.tls
        let chain: [Certificate]
        do {
            chain = try readPEMCertificates(path: tls.certificateChain)
        } catch {
            throw GatewayStartupError(problems: ["\(tls.certificateChain): cannot read the server certificate chain (\(error))"])
        }
        guard let leaf = chain.first else {
            throw GatewayStartupError(problems: ["\(tls.certificateChain): no certificate in the file"])
        }
        serverCertificate = CertificateSummary(leaf)
        certificateAuthorities = ((trust?.roots ?? []) + (trust?.intermediates ?? [])).map(CertificateSummary.init)
        revokedSerials = Set((trust?.crls ?? []).flatMap { $0.entries.map { hexString($0.serial) } })
        crlVersions = (trust?.crls ?? []).map { crl in
            "\(crl.issuer) number \(crl.number.map { hexString($0) } ?? "none"), next update "
                + (crl.nextUpdate.map { ISO8601DateFormatter().string(from: $0) } ?? "none")
        }
        policyFiles = [:]
        let directory = configuration.policiesDirectory
        for name in (try? PolicySet.fileNames(in: directory)) ?? [] {
            policyFiles[name] = Self.digest(ofFile: "\(directory)/\(name)")
        }
        allowedOrigins = configuration.allowedOrigins
        routes = configuration.routes.map { "\($0.path) (\($0.kind.rawValue))" }
        tlsInputs = [:]
        for path in [tls.certificateChain, tls.privateKey, tls.clientCA] + (tls.clientIntermediates.map { [$0] } ?? []) {
            tlsInputs[path] = Self.digest(ofFile: path)
        }
    }

    /// What differs from `old`, one line per kind of change; empty when nothing does.
    public func changes(from old: RuntimeSummary) -> [String] {
        var changes: [String] = []
        if serverCertificate != old.serverCertificate {
            changes.append(
                "server certificate: serial \(old.serverCertificate.serial) → \(serverCertificate.serial) "
                    + "(not after \(AuditTime.format(serverCertificate.notValidAfter)))")
        } else if tlsInputs != old.tlsInputs, certificateAuthorities == old.certificateAuthorities {
            changes.append("server key or chain file rewritten (same certificate)")
        }
        let oldCAs = Set(old.certificateAuthorities.map(\.fingerprint))
        let newCAs = Set(certificateAuthorities.map(\.fingerprint))
        let addedCAs = certificateAuthorities.filter { !oldCAs.contains($0.fingerprint) }.map(\.subject)
        let removedCAs = old.certificateAuthorities.filter { !newCAs.contains($0.fingerprint) }.map(\.subject)
        if !addedCAs.isEmpty || !removedCAs.isEmpty {
            changes.append(
                "client CAs: " + [
                    addedCAs.isEmpty ? nil : "added \(addedCAs.joined(separator: "; "))",
                    removedCAs.isEmpty ? nil : "removed \(removedCAs.joined(separator: "; "))",
                ].compactMap { $0 }.joined(separator: ", "))
        }
        let revoked = revokedSerials.subtracting(old.revokedSerials).sorted()
        let reinstated = old.revokedSerials.subtracting(revokedSerials).sorted()
        if !revoked.isEmpty || !reinstated.isEmpty {
            changes.append(
                "CRL: " + [
                    revoked.isEmpty ? nil : "newly revoked \(Self.list(revoked))",
                    reinstated.isEmpty ? nil : "no longer listed \(Self.list(reinstated))",
                ].compactMap { $0 }.joined(separator: ", ") + " (\(revokedSerials.count) revoked in all)")
        }
        if revoked.isEmpty, reinstated.isEmpty, crlVersions != old.crlVersions {
            changes.append("CRL: renewed, " + crlVersions.joined(separator: "; "))
        }
        if policyFiles != old.policyFiles {
            let names = Set(policyFiles.keys).union(old.policyFiles.keys).sorted()
            let parts = names.compactMap { name -> String? in
                switch (old.policyFiles[name], policyFiles[name]) {
                case (nil, _?): "added \(name)"
                case (_?, nil): "removed \(name)"
                case let (before?, after?) where before != after: "changed \(name)"
                default: nil
                }
            }
            changes.append("policies: " + parts.joined(separator: ", "))
        }
        if allowedOrigins != old.allowedOrigins {
            changes.append("allowed origins: \(old.allowedOrigins) → \(allowedOrigins)")
        }
        if routes != old.routes {
            changes.append("routes: \(old.routes.joined(separator: ", ")) → \(routes.joined(separator: ", "))")
        }
        return changes
    }

    private static func list(_ serials: [String]) -> String {
        serials.count <= 10 ? serials.joined(separator: ", ")
            : serials.prefix(10).joined(separator: ", ") + " and \(serials.count - 10) more"
    }

    /// Hex SHA-256 of a file's contents; empty when it cannot be read (loading reports why).
    static func digest(ofFile path: String) -> String {
        guard let data = FileManager.default.contents(atPath: path) else { return "" }
        return hexString(SHA256.hash(data: data))
    }
}

extension GatewayConfiguration.TLS {
    /// These settings without the CRL, which is not part of the TLS context.
    var minusCRL: Self {
        var copy = self
        copy.crl = nil
        copy.crlMayBeAbsent = false
        return copy
    }
}
