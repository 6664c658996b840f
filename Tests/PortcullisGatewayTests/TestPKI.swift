import Foundation
import PortcullisPKI
import X509

/// A PKI minted per test in its own temporary directory (as swift-certificates' tests mint theirs), with one
/// certificate for every admission case: valid, expired, without clientAuth, revoked, from another CA.
struct TestPKI {
    let directory: String
    let pki: PKIDirectory
    let authority: CertificateAuthority

    struct Credential {
        let certificate: String
        let key: String
    }

    init() throws {
        directory = NSTemporaryDirectory() + "portcullis-test-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        pki = PKIDirectory(path: "\(directory)/pki")
        try pki.initialize(name: "Portcullis Test CA")
        authority = try pki.loadCA()
        try pki.issue(.init(name: "server", profile: .server(dnsNames: ["localhost"], ipAddresses: ["127.0.0.1", "::1"])))
    }

    var caPath: String { pki.caCertificatePath }
    var crlPath: String { pki.crlPath }

    /// Issues a client certificate signed by the test CA (or `authority`), written under `pki/`.
    @discardableResult
    func client(
        _ name: String,
        profile: CertificateProfile = .client(),
        notValidBefore: Date? = nil,
        notValidAfter: Date = Date().addingTimeInterval(86400),
        by issuer: CertificateAuthority? = nil
    ) throws -> (Credential, Certificate) {
        let key = try KeyAlgorithm.p256.generate()
        let certificate = try (issuer ?? authority).issue(
            commonName: name, publicKey: key.publicKey, profile: profile, notValidBefore: notValidBefore,
            notValidAfter: notValidAfter)
        try AtomicFile.makeDirectory("\(pki.path)/issued")
        try AtomicFile.write(try key.serializeAsPEM(), to: pki.keyPath(name), mode: 0o600)
        try AtomicFile.write(try certificate.serializeAsPEM(), to: pki.certificatePath(name))
        return (Credential(certificate: pki.certificatePath(name), key: pki.keyPath(name)), certificate)
    }

    /// A CA nobody trusts.
    static func foreignAuthority() throws -> CertificateAuthority {
        try CertificateAuthority.makeRoot(name: "Some Other CA", key: try KeyAlgorithm.p256.generate())
    }

    /// Writes `crl.pem` revoking `certificates` (made outside the inventory, so signed here directly).
    func revoke(
        _ certificates: [Certificate], number: UInt64 = 1, thisUpdate: Date = Date(),
        nextUpdate: Date = Date().addingTimeInterval(86400)
    ) throws {
        let crl = try CertificateRevocationList.sign(
            entries: certificates.map {
                CertificateRevocationList.Entry(serial: Array($0.serialNumber.bytes), revocationDate: thisUpdate, reason: .keyCompromise)
            },
            by: authority, number: number, thisUpdate: thisUpdate, nextUpdate: nextUpdate)
        try AtomicFile.write(crl.pemDocument, to: pki.crlPath)
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}
