import Foundation
import SwiftASN1
@_spi(FixedExpiryValidationTime) @_spi(DisableValidityCheck) import X509

/// Why a client certificate was refused; the raw value is the stable code written to the audit log.
public enum CertificateRefusal: String, Sendable, Hashable, CaseIterable {
    /// No chain to a trusted root: another CA, a bad signature, a missing intermediate.
    case untrusted = "certificate_untrusted"
    case expired = "certificate_expired"
    case notYetValid = "certificate_not_yet_valid"
    case missingClientAuth = "certificate_missing_client_auth"
    case revoked = "certificate_revoked"
    /// The CRL of an issuer in the chain is past its `nextUpdate` (`tls.crl_expired: refuse`): it may miss
    /// revocations made since.
    case crlExpired = "crl_expired"
    /// Any other RFC 5280 failure (basic constraints, name constraints, an unhandled critical extension).
    case invalid = "certificate_invalid"
}

/// The outcome of verifying a client's certificate chain.
public enum ClientVerification: Sendable {
    /// Verified: the chain runs from the leaf to a trusted root.
    case trusted(chain: [Certificate])
    case refused(CertificateRefusal, detail: String)
}

/// Verifies client certificates as the gateway's TLS handshake requires: a chain to a root of the bundle
/// (swift-certificates `Verifier` with `RFC5280Policy`), clientAuth in the leaf's extended key usage, inside
/// its validity at `now`, and no certificate of the chain on its issuer's CRL.
///
/// swift-nio-ssl's custom verification callback replaces BoringSSL's checks entirely, so this is the whole
/// verification, not an addition to it.
public struct ClientCertificateVerifier: Sendable {
    public let trust: ClientTrust

    public init(trust: ClientTrust) {
        self.trust = trust
    }

    /// The most certificates a client may present (leaf and intermediates). Path building tries every
    /// combination of candidate issuers: 10 layers of 4 certificates sharing subject and key cost seconds of
    /// CPU per handshake before any trust is established. Real chains are a leaf and one to three
    /// intermediates; with at most 10, the worst search is a few dozen paths.
    public static let maximumPresentedCertificates = 10

    /// Refuses a presentation longer than ``maximumPresentedCertificates`` before anything is parsed.
    public static func refusal(presenting count: Int) -> ClientVerification? {
        guard count > maximumPresentedCertificates else { return nil }
        return .refused(
            .untrusted,
            detail: "the client presented \(count) certificates; at most \(maximumPresentedCertificates) are accepted")
    }

    /// Verifies `presented` (leaf first, then whatever intermediates the client sent).
    public func verify(presented: [Certificate], now: Date = Date()) async -> ClientVerification {
        guard let leaf = presented.first else {
            return .refused(.untrusted, detail: "no certificate presented")
        }
        if let refusal = Self.refusal(presenting: presented.count) { return refusal }
        let intermediates = CertificateStore(Array(presented.dropFirst()) + trust.intermediates)
        var verifier = Verifier(rootCertificates: CertificateStore(trust.roots)) {
            RFC5280Policy(fixedExpiryValidationTime: now)
            ClientAuthUsagePolicy()
            RevocationPolicy(trust: trust, now: now)
        }
        let result = await verifier.validate(leaf: leaf, intermediates: intermediates)
        if case .validCertificate(let chain) = result {
            return .trusted(chain: Array(chain))
        }
        let failures: [String]
        if case .couldNotValidate(let list) = result {
            failures = list.map { "\($0.policyFailureReason)" }
        } else {
            failures = []
        }
        return await diagnose(leaf: leaf, intermediates: intermediates, now: now, failures: failures)
    }

    /// The checks that depend on time and on the CRLs rather than on the bytes, for a chain accepted earlier:
    /// every certificate inside its validity at `now`, none but the root on its issuer's CRL (a chain of one,
    /// a leaf alone, is looked up too).
    ///
    /// Two callers need them: a hit in a ``VerifiedChainCache``, and a resumed TLS session, which BoringSSL
    /// admits without running the verification callback again. A resumed session's chain was verified at its
    /// full handshake by a context built from the same CA bundle; a new bundle means a new context, whose
    /// tickets old sessions lack.
    public func recheck(chain: [Certificate], now: Date = Date()) -> ClientVerification? {
        for certificate in chain {
            if let refusal = validityRefusal(certificate, now: now) { return refusal }
        }
        for certificate in chain.count > 1 ? chain.dropLast() : chain[...] {
            if let refusal = revocationRefusal(certificate, now: now) { return refusal }
        }
        return nil
    }

    /// Refuses `certificate` when its issuer's CRL lists it, or is stale and stale CRLs refuse.
    private func revocationRefusal(_ certificate: Certificate, now: Date) -> ClientVerification? {
        if let crl = trust.expiredCRL(covering: certificate, at: now) {
            return .refused(.crlExpired, detail: Self.describeExpired(crl, covering: certificate))
        }
        if let entry = trust.revocation(of: certificate) {
            return .refused(.revoked, detail: Self.describe(entry, of: certificate))
        }
        return nil
    }

    static func describeExpired(_ crl: CertificateRevocationList, covering certificate: Certificate) -> String {
        "the CRL of \(crl.issuer) was due to be replaced at "
            + ISO8601DateFormatter().string(from: crl.nextUpdate ?? crl.thisUpdate)
            + " (its nextUpdate) and may miss revocations since, so \(certificate.subject) is refused "
            + "(tls.crl_expired: refuse); publish a new CRL"
    }

    /// The chain of a leaf whose TLS session was resumed, rebuilt by issuer name and signature from the trust
    /// set's roots and intermediates and from `seen` (intermediates of chains verified before; a resumed session
    /// does not carry what the client presented). The chain passed every policy at the session's full
    /// handshake; what can have changed since is left to ``recheck(chain:now:)``. Nil when no chain to a root
    /// can be rebuilt.
    public func rebuildChain(leaf: Certificate, seen: [Certificate]) -> [Certificate]? {
        var chain = [leaf]
        while chain.count <= Self.maximumPresentedCertificates, let tip = chain.last {
            func signs(_ issuer: Certificate) -> Bool {
                issuer.subject == tip.issuer && !chain.contains(issuer)
                    && issuer.publicKey.isValidSignature(tip.signature, for: tip)
            }
            if let root = trust.roots.first(where: signs) { return chain + [root] }
            guard let next = (trust.intermediates + seen).first(where: signs) else { return nil }
            chain.append(next)
        }
        return nil
    }

    /// Names the precise reason for a failed validation, in the order an operator would look for it.
    private func diagnose(
        leaf: Certificate, intermediates: CertificateStore, now: Date, failures: [String]
    ) async -> ClientVerification {
        var pathOnly = Verifier(rootCertificates: CertificateStore(trust.roots)) {
            RFC5280Policy.withValidityCheckDisabled()
            ClientAuthUsagePolicy.ignoringUsage
        }
        let joined = failures.isEmpty ? "no chain to a trusted root" : failures.joined(separator: "; ")
        guard case .validCertificate(let chain) = await pathOnly.validate(leaf: leaf, intermediates: intermediates)
        else {
            return .refused(.untrusted, detail: "issuer \(leaf.issuer) is not trusted: \(joined)")
        }
        for certificate in chain {
            if let refusal = validityRefusal(certificate, now: now) { return refusal }
        }
        if !ClientAuthUsagePolicy.allowsClientAuth(leaf) {
            return .refused(.missingClientAuth, detail: "the certificate's extended key usage lacks clientAuth")
        }
        for certificate in chain.dropLast() {
            if let refusal = revocationRefusal(certificate, now: now) { return refusal }
        }
        return .refused(.invalid, detail: joined)
    }

    private func validityRefusal(_ certificate: Certificate, now: Date) -> ClientVerification? {
        // The formatter is made only for a refusal: building one costs more than the rest of a re-check.
        if now > certificate.notValidAfter {
            return .refused(
                .expired,
                detail: "\(certificate.subject) expired at \(ISO8601DateFormatter().string(from: certificate.notValidAfter))")
        }
        if now < certificate.notValidBefore {
            return .refused(
                .notYetValid,
                detail: "\(certificate.subject) is not valid before "
                    + ISO8601DateFormatter().string(from: certificate.notValidBefore))
        }
        return nil
    }

    private static func describe(_ entry: CertificateRevocationList.Entry, of certificate: Certificate) -> String {
        let reason = entry.reason.map { " (\($0.name))" } ?? ""
        return "serial \(hexString(entry.serial)) of \(certificate.subject) revoked at "
            + ISO8601DateFormatter().string(from: entry.revocationDate) + reason
    }
}

/// Requires `clientAuth` in the leaf's extended key usage. `RFC5280Policy` does not look at EKU, so this
/// policy also declares the extension as handled (it may be critical).
struct ClientAuthUsagePolicy: VerifierPolicy {
    let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [.X509ExtensionID.extendedKeyUsage]
    var enforce = true

    static let ignoringUsage = ClientAuthUsagePolicy(enforce: false)

    static func allowsClientAuth(_ certificate: Certificate) -> Bool {
        guard let usage = try? certificate.extensions.extendedKeyUsage else { return false }
        return usage.contains(.clientAuth) || usage.contains(.any)
    }

    func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) -> PolicyEvaluationResult {
        guard enforce, !Self.allowsClientAuth(chain.leaf) else { return .meetsPolicy }
        return .failsToMeetPolicy(reason: "leaf certificate does not carry the clientAuth extended key usage")
    }
}

/// Refuses a chain when a CRL of the trust set lists any certificate of it, or (when stale CRLs refuse) the
/// CRL of an issuer in it is past its `nextUpdate`.
struct RevocationPolicy: VerifierPolicy {
    let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = []
    let trust: ClientTrust
    let now: Date

    func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) -> PolicyEvaluationResult {
        for certificate in chain.dropLast() {
            if trust.expiredCRL(covering: certificate, at: now) != nil {
                return .failsToMeetPolicy(reason: "the CRL covering \(certificate.subject) is past its nextUpdate")
            }
            if trust.revocation(of: certificate) != nil {
                return .failsToMeetPolicy(reason: "certificate \(certificate.subject) is revoked")
            }
        }
        return .meetsPolicy
    }
}

/// Lowercase hex, no separators: how serials and fingerprints appear in audit records and the CLI.
public func hexString<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
    let digits = Array("0123456789abcdef".utf8)
    var result: [UInt8] = []
    for byte in bytes {
        result.append(digits[Int(byte >> 4)])
        result.append(digits[Int(byte & 0x0F)])
    }
    return String(decoding: result, as: UTF8.self)
}
