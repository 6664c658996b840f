import NIOSSL

/// A device's TLS material as read from its files for one attempt: the context to connect with, and the serial
/// of the certificate it presents.
struct DeviceCredentials {
    let context: NIOSSLContext
    /// Lowercase hex of the leaf's serial number as DER writes it (a leading zero byte when the top bit is set),
    /// which is how the gateway's audit records write it.
    let serial: String

    /// Reads the three PEM files now. Certificate and key come from one read each, so what is presented is a pair
    /// as the files held it at this instant; a renewal caught between its two writes gives a key that does not
    /// match, which BoringSSL refuses here (and the next attempt reads again).
    static func read(certificate: String, key: String, ca: String) throws -> DeviceCredentials {
        let chain = try reading(certificate) { try NIOSSLCertificate.fromPEMFile(certificate) }
        guard let leaf = chain.first else { throw CredentialError(description: "no certificate in \(certificate)") }
        let privateKey = try reading(key) { try NIOSSLPrivateKey(file: key, format: .pem) }
        let roots = try reading(ca) { try NIOSSLCertificate.fromPEMFile(ca) }
        guard !roots.isEmpty else { throw CredentialError(description: "no CA certificate in \(ca)") }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.trustRoots = .certificates(roots)
        configuration.certificateChain = chain.map { .certificate($0) }
        configuration.privateKey = .privateKey(privateKey)
        let context = try reading("\(certificate) with \(key)") { try NIOSSLContext(configuration: configuration) }
        return DeviceCredentials(context: context, serial: Self.serialHex(leaf.serialNumber))
    }

    /// Runs `load`, naming `file` in its error: NIOSSL's errors (`failedToLoadCertificate`) do not say which file.
    private static func reading<Value>(_ file: String, _ load: () throws -> Value) throws -> Value {
        do {
            return try load()
        } catch {
            throw CredentialError(description: "\(file): \(error)")
        }
    }

    /// `magnitude` (BoringSSL's serial bytes, without sign) in lowercase hex without leading zero bytes, as the
    /// gateway's audit log, `portcullis pki` and swift-certificates write a serial (`9f01`, not DER's `009f01`).
    static func serialHex(_ magnitude: [UInt8]) -> String {
        let significant = magnitude.drop { $0 == 0 }
        guard !significant.isEmpty else { return "00" }
        return significant.map { byte in
            let hex = String(byte, radix: 16)
            return byte < 0x10 ? "0" + hex : hex
        }.joined()
    }
}

struct CredentialError: Error, CustomStringConvertible {
    var description: String
}
