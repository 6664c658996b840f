import Crypto
import Foundation
import SwiftASN1
import X509

/// What a certificate is for: the profile decides its extensions.
public enum CertificateProfile: Sendable, Hashable {
    /// A TLS server: serverAuth, with DNS and IP subject alternative names.
    case server(dnsNames: [String], ipAddresses: [String])
    /// A device or service: clientAuth, CN = its name, optional SAN URIs, DNS names and emails.
    case client(uris: [String] = [], dnsNames: [String] = [], emails: [String] = [])

    public var name: String {
        switch self {
        case .server: "server"
        case .client: "client"
        }
    }
}

/// A certificate authority: its certificate and the key that signs with it.
public struct CertificateAuthority: Sendable {
    public let certificate: Certificate
    public let privateKey: Certificate.PrivateKey

    public init(certificate: Certificate, privateKey: Certificate.PrivateKey) {
        self.certificate = certificate
        self.privateKey = privateKey
    }

    /// A new self-signed root CA.
    public static func makeRoot(
        name: String,
        key: Certificate.PrivateKey,
        validity: TimeInterval = 10 * 365 * 86400,
        now: Date = Date()
    ) throws -> CertificateAuthority {
        let subject = try DistinguishedName { CommonName(name) }
        let certificate = try Certificate(
            version: .v3,
            serialNumber: SerialNumbers.random(),
            publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: now.addingTimeInterval(validity),
            issuer: subject,
            subject: subject,
            signatureAlgorithm: key.signatureAlgorithm,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 1))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: key.publicKey)
            },
            issuerPrivateKey: key
        )
        return CertificateAuthority(certificate: certificate, privateKey: key)
    }

    /// A new issuing CA signed by this one, so this (root) key can be kept offline.
    public func makeIntermediate(
        name: String, key: Certificate.PrivateKey, validity: TimeInterval = 5 * 365 * 86400, now: Date = Date()
    ) throws -> CertificateAuthority {
        let issuerKeyIdentifier = try? certificate.extensions.subjectKeyIdentifier?.keyIdentifier
        let certificate = try Certificate(
            version: .v3,
            serialNumber: SerialNumbers.random(),
            publicKey: key.publicKey,
            notValidBefore: now.addingTimeInterval(-300),
            notValidAfter: min(now.addingTimeInterval(validity), self.certificate.notValidAfter),
            issuer: self.certificate.subject,
            subject: try DistinguishedName { CommonName(name) },
            signatureAlgorithm: privateKey.signatureAlgorithm,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: key.publicKey)
                if let issuerKeyIdentifier { AuthorityKeyIdentifier(keyIdentifier: issuerKeyIdentifier) }
            },
            issuerPrivateKey: privateKey
        )
        return CertificateAuthority(certificate: certificate, privateKey: key)
    }

    /// Issues a certificate for `publicKey` under `profile`.
    ///
    /// - Parameters:
    ///   - commonName: the subject CN (for clients, the identity name).
    ///   - notValidBefore / notValidAfter: validity; nil `notValidBefore` backdates five minutes for clock skew.
    public func issue(
        commonName: String,
        publicKey: Certificate.PublicKey,
        profile: CertificateProfile,
        notValidBefore: Date? = nil,
        notValidAfter: Date,
        now: Date = Date(),
        serialNumber: Certificate.SerialNumber = SerialNumbers.random()
    ) throws -> Certificate {
        let subject = try DistinguishedName { CommonName(commonName) }
        var names: [GeneralName] = []
        let usage: ExtendedKeyUsage.Usage
        switch profile {
        case .server(let dnsNames, let ipAddresses):
            usage = .serverAuth
            names += dnsNames.map { .dnsName($0) }
            for address in ipAddresses {
                guard let bytes = IPAddressBytes(address) else { throw PKIError.invalidIPAddress(address) }
                names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes))))
            }
        case .client(let uris, let dnsNames, let emails):
            usage = .clientAuth
            names += uris.map { .uniformResourceIdentifier($0) }
            names += dnsNames.map { .dnsName($0) }
            names += emails.map { .rfc822Name($0) }
        }
        let issuerKeyIdentifier = try? certificate.extensions.subjectKeyIdentifier?.keyIdentifier
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            try ExtendedKeyUsage([usage])
            SubjectKeyIdentifier(hash: publicKey)
            if let issuerKeyIdentifier {
                AuthorityKeyIdentifier(keyIdentifier: issuerKeyIdentifier)
            }
            if !names.isEmpty {
                SubjectAlternativeNames(names)
            }
        }
        return try Certificate(
            version: .v3,
            serialNumber: serialNumber,
            publicKey: publicKey,
            notValidBefore: notValidBefore ?? now.addingTimeInterval(-300),
            notValidAfter: notValidAfter,
            issuer: certificate.subject,
            subject: subject,
            signatureAlgorithm: privateKey.signatureAlgorithm,
            extensions: extensions,
            issuerPrivateKey: privateKey
        )
    }
}

/// Random serial numbers: 19 random bytes with the top bit clear, so the DER INTEGER stays positive and
/// within RFC 5280's 20-octet limit while carrying 151 bits of randomness.
public enum SerialNumbers {
    public static func random() -> Certificate.SerialNumber {
        var bytes = (0..<19).map { _ in UInt8.random(in: 0...255) }
        bytes[0] &= 0x7F
        if bytes[0] == 0 { bytes[0] = 0x01 }
        return Certificate.SerialNumber(bytes: bytes)
    }
}

/// Why a PKI operation was refused; `description` is the one-line reason the CLI prints.
public enum PKIError: Error, CustomStringConvertible, Equatable {
    case invalidIPAddress(String)
    case unreadable(path: String, reason: String)
    case invalidCRL(String)
    /// Bad input: the message says which and why.
    case invalid(String)

    public var description: String {
        switch self {
        case .invalidIPAddress(let address): "'\(address)' is not an IPv4 or IPv6 address"
        case .unreadable(let path, let reason): "\(path): \(reason)"
        case .invalidCRL(let reason): "invalid CRL: \(reason)"
        case .invalid(let message): message
        }
    }
}

/// The 4 or 16 network-order bytes of an IP address literal.
func IPAddressBytes(_ text: String) -> [UInt8]? {
    var v4 = in_addr()
    if inet_pton(AF_INET, text, &v4) == 1 {
        return withUnsafeBytes(of: &v4) { Array($0) }
    }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, text, &v6) == 1 {
        return withUnsafeBytes(of: &v6) { Array($0) }
    }
    return nil
}
