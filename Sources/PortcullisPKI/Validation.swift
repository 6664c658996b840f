import Crypto
import Foundation
import SwiftASN1
import X509
import _CryptoExtras

/// Checks on operator input, each failing with a one-line reason before anything is written.
enum Validation {
    /// Names become file names and identities: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
    static func name(_ name: String) throws {
        let allowed = name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }
        guard !name.isEmpty, name.count <= 64, allowed, name.first!.isLetter || name.first!.isNumber else {
            throw PKIError.invalid(
                "invalid name '\(name)': use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        }
        guard !["ca", "issuing-ca"].contains(name) else { throw PKIError.invalid("'\(name)' is reserved for the CA") }
    }

    static func profile(_ profile: CertificateProfile) throws {
        switch profile {
        case .server(let dnsNames, let ipAddresses):
            guard !dnsNames.isEmpty || !ipAddresses.isEmpty else {
                throw PKIError.invalid("a server certificate needs at least one --dns or --ip")
            }
            try dnsNames.forEach(dns)
            for address in ipAddresses where IPAddressBytes(address) == nil {
                throw PKIError.invalid("invalid IP SAN '\(address)': not an IPv4 or IPv6 address")
            }
        case .client(let uris, let dnsNames, let emails):
            try dnsNames.forEach(dns)
            try uris.forEach(uri)
            try emails.forEach(email)
        }
    }

    static func dns(_ name: String) throws {
        var labels = name.split(separator: ".", omittingEmptySubsequences: false)
        if labels.first == "*" { labels.removeFirst() }
        let valid = !labels.isEmpty && name.count <= 253 && labels.allSatisfy { label in
            (1...63).contains(label.count) && label.first != "-" && label.last != "-"
                && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }
        }
        guard valid else { throw PKIError.invalid("invalid DNS SAN '\(name)'") }
    }

    static func uri(_ uri: String) throws {
        guard let colon = uri.firstIndex(of: ":"), colon != uri.startIndex,
            uri[..<colon].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "+-.".contains($0)) }),
            uri[uri.startIndex].isLetter, uri.index(after: colon) != uri.endIndex,
            !uri.contains(where: { $0.isWhitespace || !$0.isASCII })
        else { throw PKIError.invalid("invalid URI SAN '\(uri)': expected scheme:rest, e.g. spiffe://example.test/device/42") }
    }

    static func email(_ email: String) throws {
        let parts = email.split(separator: "@", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty, !email.contains(where: \.isWhitespace) else {
            throw PKIError.invalid("invalid email SAN '\(email)'")
        }
    }

    /// The profile a certificate was issued under, recovered from its EKU and SANs (for renewals).
    static func profile(of certificate: Certificate) throws -> CertificateProfile {
        let usage = try? certificate.extensions.extendedKeyUsage
        var uris: [String] = [], dns: [String] = [], emails: [String] = [], ips: [String] = []
        for name in (try? certificate.extensions.subjectAlternativeNames) ?? SubjectAlternativeNames([]) {
            switch name {
            case .uniformResourceIdentifier(let uri): uris.append(uri)
            case .dnsName(let name): dns.append(name)
            case .rfc822Name(let email): emails.append(email)
            case .ipAddress(let octets): ips.append(ipString(Array(octets.bytes)))
            default: break
            }
        }
        if usage?.contains(.serverAuth) == true { return .server(dnsNames: dns, ipAddresses: ips) }
        return .client(uris: uris, dnsNames: dns, emails: emails)
    }

    static func sans(of certificate: Certificate) -> [String] {
        var result: [String] = []
        for name in (try? certificate.extensions.subjectAlternativeNames) ?? SubjectAlternativeNames([]) {
            switch name {
            case .uniformResourceIdentifier(let uri): result.append("URI:\(uri)")
            case .dnsName(let name): result.append("DNS:\(name)")
            case .rfc822Name(let email): result.append("email:\(email)")
            case .ipAddress(let octets): result.append("IP:\(ipString(Array(octets.bytes)))")
            default: break
            }
        }
        return result
    }

    static func ipString(_ bytes: [UInt8]) -> String {
        var buffer = [CChar](repeating: 0, count: 64)
        let family = bytes.count == 4 ? AF_INET : AF_INET6
        return bytes.withUnsafeBytes { raw in
            inet_ntop(family, raw.baseAddress, &buffer, socklen_t(buffer.count)) != nil
                ? String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : hexString(bytes)
        }
    }

    static func keyAlgorithmName(_ key: Certificate.PublicKey) -> String {
        if P256.Signing.PublicKey(key) != nil { return KeyAlgorithm.p256.rawValue }
        if P384.Signing.PublicKey(key) != nil { return KeyAlgorithm.p384.rawValue }
        if _RSA.Signing.PublicKey(key) != nil { return "rsa" }
        if Curve25519.Signing.PublicKey(key) != nil { return "ed25519" }
        return "other"
    }

    static func bytes(hex: String) -> [UInt8] {
        var result: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex, let next = hex.index(index, offsetBy: 2, limitedBy: hex.endIndex) {
            result.append(UInt8(hex[index..<next], radix: 16) ?? 0)
            index = next
        }
        return result
    }
}
