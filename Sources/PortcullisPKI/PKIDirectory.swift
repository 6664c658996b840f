import Foundation
import SwiftASN1
import X509

#if canImport(Glibc)
import Glibc
#endif

/// The easy-rsa-like `pki/` directory (see `pki/README.md`): `ca.crt`, `private/` (0700, keys 0600),
/// `issued/`, `reqs/` and `crl.pem`. Every write is atomic and made under an exclusive lock on `pki/.lock`,
/// so concurrent CLI runs and a crash mid-way never leave a half-written state.
public struct PKIDirectory: Sendable {
    public let path: String

    public init(path: String) {
        self.path = path
    }

    public var caCertificatePath: String { "\(path)/ca.crt" }
    public var caKeyPath: String { "\(path)/private/ca.key" }
    public var crlPath: String { "\(path)/crl.pem" }
    public func certificatePath(_ name: String) -> String { "\(path)/issued/\(name).crt" }
    public func keyPath(_ name: String) -> String { "\(path)/private/\(name).key" }

    public var hasCA: Bool { FileManager.default.fileExists(atPath: caCertificatePath) }

    /// Runs `body` holding the directory's exclusive lock.
    public func withLock<T>(_ body: () throws -> T) throws -> T {
        try AtomicFile.makeDirectory(path)
        let fd = open("\(path)/.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw AtomicFile.WriteError(path: "\(path)/.lock", operation: "open", code: errno)
        }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw AtomicFile.WriteError(path: "\(path)/.lock", operation: "lock", code: errno) }
        }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }

    private func prepareLayout() throws {
        try AtomicFile.makeDirectory(path)
        try AtomicFile.makeDirectory("\(path)/private", mode: 0o700)
        try AtomicFile.makeDirectory("\(path)/issued")
        try AtomicFile.makeDirectory("\(path)/reqs")
    }

    /// Creates a root CA; refuses when one exists.
    @discardableResult
    public func createCA(name: String, key algorithm: KeyAlgorithm = .p256, now: Date = Date()) throws
        -> CertificateAuthority
    {
        try withLock {
            guard !hasCA else { throw PKIError.unreadable(path: caCertificatePath, reason: "a CA already exists") }
            try prepareLayout()
            let authority = try CertificateAuthority.makeRoot(name: name, key: try algorithm.generate(), now: now)
            // Key first: a CA certificate without its key would be unusable, a key alone is merely unused.
            try AtomicFile.write(try authority.privateKey.serializeAsPEM(), to: caKeyPath, mode: 0o600)
            try AtomicFile.write(try authority.certificate.serializeAsPEM(), to: caCertificatePath)
            return authority
        }
    }

    public func loadCA() throws -> CertificateAuthority {
        guard let certificate = try readPEMCertificates(path: caCertificatePath).first else {
            throw PKIError.unreadable(path: caCertificatePath, reason: "no certificate")
        }
        let key: Certificate.PrivateKey
        do {
            key = try Certificate.PrivateKey(pemEncoded: try readText(caKeyPath))
        } catch let error as PKIError {
            throw error
        } catch {
            throw PKIError.unreadable(path: caKeyPath, reason: "not a PEM private key")
        }
        guard key.publicKey == certificate.publicKey else {
            throw PKIError.unreadable(path: caKeyPath, reason: "the key does not match \(caCertificatePath)")
        }
        return CertificateAuthority(certificate: certificate, privateKey: key)
    }

    /// Issues a certificate with a new key and writes `issued/NAME.crt` and `private/NAME.key` (0600).
    @discardableResult
    public func issue(
        name: String,
        profile: CertificateProfile,
        days: Int,
        key algorithm: KeyAlgorithm = .p256,
        now: Date = Date()
    ) throws -> Certificate {
        try withLock {
            let authority = try loadCA()
            try prepareLayout()
            let key = try algorithm.generate()
            let certificate = try authority.issue(
                commonName: name, publicKey: key.publicKey, profile: profile,
                notValidAfter: now.addingTimeInterval(TimeInterval(days) * 86400), now: now)
            try AtomicFile.write(try key.serializeAsPEM(), to: keyPath(name), mode: 0o600)
            try AtomicFile.write(try certificate.serializeAsPEM(), to: certificatePath(name))
            return certificate
        }
    }

    /// Writes `crl.pem` listing `entries`, signed by the CA, valid for `validity` seconds.
    @discardableResult
    public func writeCRL(
        entries: [CertificateRevocationList.Entry], number: UInt64, validity: TimeInterval = 7 * 86400,
        now: Date = Date()
    ) throws -> CertificateRevocationList {
        try withLock {
            let crl = try CertificateRevocationList.sign(
                entries: entries, by: try loadCA(), number: number, thisUpdate: now,
                nextUpdate: now.addingTimeInterval(validity))
            try AtomicFile.write(crl.pemDocument, to: crlPath)
            return crl
        }
    }
}

extension PKIDirectory {
    /// What `serve --dev` made, for its start-up message.
    public struct DevelopmentBootstrap: Sendable {
        public var createdCA: Bool
        public var issued: [String]
    }

    /// Creates the development PKI when the directory has no CA: a CA, a server certificate for localhost,
    /// 127.0.0.1 and ::1, and the `demo-device` client certificate. Existing material is reused as it is;
    /// a missing certificate is issued again.
    public func bootstrapDevelopment(now: Date = Date()) throws -> DevelopmentBootstrap {
        var result = DevelopmentBootstrap(createdCA: false, issued: [])
        if !hasCA {
            try createCA(name: "Portcullis Development CA", now: now)
            result.createdCA = true
        }
        let wanted: [(String, CertificateProfile, Int)] = [
            ("server", .server(dnsNames: ["localhost"], ipAddresses: ["127.0.0.1", "::1"]), 365),
            ("demo-device", .client(), 90),
        ]
        for (name, profile, days) in wanted {
            let present = FileManager.default.fileExists(atPath: certificatePath(name))
                && FileManager.default.fileExists(atPath: keyPath(name))
            if !present {
                try issue(name: name, profile: profile, days: days, now: now)
                result.issued.append(name)
            }
        }
        return result
    }
}
