import Foundation

/// A verified client, named by the identity-mapping rule that matched its certificate.
public struct Identity: Sendable, Hashable {
    public var name: String
    public var groups: [String]
    /// The index of the mapping rule that produced this identity, for explanations.
    public var mappingRule: String
    public var certificate: CertificateFacts

    public init(name: String, groups: [String] = [], mappingRule: String, certificate: CertificateFacts) {
        self.name = name
        self.groups = groups
        self.mappingRule = mappingRule
        self.certificate = certificate
    }
}

extension Identity {
    /// Longest identity name, in UTF-8 bytes.
    public static let maximumNameBytes = 1024

    /// Why `name` cannot name an identity, or nil when it can.
    ///
    /// Names are compared as bytes. Swift's `==` on strings treats canonically equivalent ones as equal
    /// (`cafe\u{301}` and `café`, the Kelvin sign and `K`), so a name must be in Unicode NFC: then no two
    /// different byte strings can be the same name, and a look-alike certificate name that is not NFC maps to
    /// no identity at all. Control characters (C0, DEL, C1, line and paragraph separators) would reach request
    /// headers towards backends, logs and terminals, so they are refused too.
    public static func problem(withName name: String) -> String? {
        if name.isEmpty { return "an identity name must not be empty" }
        if name.utf8.count > maximumNameBytes { return "an identity name must not be longer than \(maximumNameBytes) bytes" }
        if name.unicodeScalars.contains(where: { scalar in
            scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
        }) {
            return "an identity name must not contain control characters"
        }
        if name.utf8.contains(where: { $0 >= 0x80 }),
            !name.precomposedStringWithCanonicalMapping.utf8.elementsEqual(name.utf8)
        {
            return "an identity name must be in Unicode normalization form C (NFC)"
        }
        return nil
    }
}
