import Crypto
import Foundation
import X509

/// What the policy layer may know about a verified client certificate: the fields identity mapping and
/// audit records use, extracted once so that decisions never touch ASN.1.
public struct CertificateFacts: Sendable, Hashable {
    /// The subject's common name, when it has exactly one.
    public var commonName: String?
    /// The subject as an RFC 4514 string, for audit records.
    public var subject: String
    public var sanURIs: [String]
    public var sanDNSNames: [String]
    public var sanEmails: [String]
    /// Lowercase hex SHA-256 of the DER certificate, no separators.
    public var fingerprint: String
    /// Lowercase hex serial number, no separators.
    public var serial: String
    public var notValidBefore: Date
    public var notValidAfter: Date

    public init(
        commonName: String?,
        subject: String,
        sanURIs: [String] = [],
        sanDNSNames: [String] = [],
        sanEmails: [String] = [],
        fingerprint: String,
        serial: String,
        notValidBefore: Date = .distantPast,
        notValidAfter: Date = .distantFuture
    ) {
        self.commonName = commonName
        self.subject = subject
        self.sanURIs = sanURIs
        self.sanDNSNames = sanDNSNames
        self.sanEmails = sanEmails
        self.fingerprint = fingerprint
        self.serial = serial
        self.notValidBefore = notValidBefore
        self.notValidAfter = notValidAfter
    }

    /// Extracts the facts from a certificate and its DER encoding (the fingerprint is over the DER bytes).
    public init(certificate: Certificate, derBytes: [UInt8]) {
        var names: [String] = []
        for rdn in certificate.subject {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                names.append(Self.text(of: attribute.value))
            }
        }
        var uris: [String] = []
        var dns: [String] = []
        var emails: [String] = []
        if let san = try? certificate.extensions.subjectAlternativeNames {
            for name in san {
                switch name {
                case .uniformResourceIdentifier(let uri): uris.append(uri)
                case .dnsName(let name): dns.append(name)
                case .rfc822Name(let email): emails.append(email)
                default: break
                }
            }
        }
        self.init(
            commonName: names.count == 1 ? names[0] : nil,
            subject: certificate.subject.description,
            sanURIs: uris,
            sanDNSNames: dns,
            sanEmails: emails,
            fingerprint: Self.hex(SHA256.hash(data: derBytes)),
            serial: Self.hex(certificate.serialNumber.bytes),
            notValidBefore: certificate.notValidBefore,
            notValidAfter: certificate.notValidAfter
        )
    }

    private static func text(of value: RelativeDistinguishedName.Attribute.Value) -> String {
        // The description of a string attribute value is the string itself.
        String(describing: value)
    }

    static func hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var result = ""
        for byte in bytes {
            result += String(byte, radix: 16).leftPadded(to: 2)
        }
        return result
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// Normalises a fingerprint as operators paste it (`AB:CD:…`, `sha256:abcd…`, any case) to lowercase hex.
///
/// Read as ASCII bytes: a policy pins 100,000 of them, and only ASCII hex digits can ever equal a
/// certificate's fingerprint (fullwidth digits, which `Character.isHexDigit` accepts, are refused).
public func normalizedFingerprint(_ text: String) -> String? {
    var bytes = text.utf8.map { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") ? $0 | 0x20 : $0 }[...]
    for prefix in ["sha256:", "sha256 fingerprint="] where bytes.starts(with: prefix.utf8) {
        bytes = bytes.dropFirst(prefix.utf8.count)
        break
    }
    let hex = bytes.filter { $0 != UInt8(ascii: ":") }
    guard hex.count == 64,
        hex.allSatisfy({ ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "f")) })
    else { return nil }
    return String(decoding: hex, as: UTF8.self)
}
