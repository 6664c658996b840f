import PortcullisProtocol

/// How the shared broker's topics and filters become NATS subjects, and back.
///
/// A topic lives under a configured prefix of NATS tokens (`portcullis`, `acme.portcullis`): topic
/// `devices/a/telemetry` is subject `portcullis.devices.a.telemetry`. Each topic level becomes exactly one token,
/// escaped so that the mapping can be reversed and no level can change the shape of a subject:
///
/// - bytes that NATS refuses in a token or reads as syntax — `.`, `*`, `>`, the escape character `%` itself, `/`
///   (never inside a level, escaped for symmetry), space and the other ASCII whitespace, the controls 0x00–0x1F
///   and 0x7F — and every byte of a non-ASCII character (0x80 and up) are written as `%XX`, the byte in
///   uppercase hexadecimal;
/// - an empty level (`a//b`, `/a`) is written as the token `%` alone, since NATS tokens cannot be empty;
/// - every other byte is written as it is.
///
/// `*` and `>` are wildcards to NATS only as whole tokens, but they are escaped anywhere so that a subject's
/// wildcards can only ever come from a filter's `+` and `#`. Every topic has exactly one subject (the canonical
/// one): `topic(forSubject:)` refuses any other spelling, such as `%41` for `A`, so that the gateway trusts a
/// NATS message only when its subject is exactly what the gateway itself would have written.
public struct SubjectMapping: Sendable, Hashable {
    /// The NATS tokens every subject of the broker starts with, without the trailing `.`.
    public let prefix: String

    /// Longest prefix accepted, in bytes: what is left of NATS's subject length is for the topic.
    public static let maximumPrefixLength = 200

    /// A mapping under `prefix`, or nil when `problem(withPrefix:)` has something to say about it.
    public init?(prefix: String) {
        guard Self.problem(withPrefix: prefix) == nil else { return nil }
        self.prefix = prefix
    }

    /// Why `prefix` cannot be the broker's subject prefix, or nil when it can.
    public static func problem(withPrefix prefix: String) -> String? {
        if prefix.isEmpty { return "a NATS subject prefix must not be empty" }
        if prefix.utf8.count > maximumPrefixLength {
            return "a NATS subject prefix must not be longer than \(maximumPrefixLength) bytes"
        }
        for token in prefix.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            if token.isEmpty { return "a NATS subject prefix must not have an empty token (a leading, trailing or doubled '.')" }
            // Printable ASCII only: whitespace ends a subject on the wire, and `*` and `>` are wildcards.
            if token.contains(where: { $0 <= 0x20 || $0 >= 0x7F || $0 == UInt8(ascii: "*") || $0 == UInt8(ascii: ">") }) {
                return "a NATS subject prefix may hold only printable ASCII other than '*' and '>', in '.'-separated tokens"
            }
        }
        return nil
    }

    /// The subject the gateways announce certificate revocation lists to each other on. Its token `%24crl` spells
    /// `$` escaped, which canonical escaping never does (it writes `$` plainly), so no topic maps to it and a
    /// device can never publish there; `topic(forSubject:)` refuses it.
    public var certificateRevocationListSubject: String { prefix + ".%24crl" }

    /// The subject `topic` (a valid topic name) is published on.
    public func subject(forTopic topic: String) -> String {
        var subject = Array(prefix.utf8)
        subject.reserveCapacity(subject.count + 1 + topic.utf8.count)
        for level in topic.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            subject.append(UInt8(ascii: "."))
            Self.appendToken(forLevel: level, to: &subject)
        }
        return String(decoding: subject, as: UTF8.self)
    }

    /// The NATS subscriptions that together receive exactly what `filter` (a valid filter) matches.
    ///
    /// `+` becomes `*`. A trailing `#` becomes `>` and also brings the parent subject: MQTT's `devices/#` matches
    /// `devices` itself, while NATS's `devices.>` needs at least one more token. A lone `#` needs no parent, since
    /// the prefix alone is no topic's subject.
    public func subjects(forFilter filter: String) -> [String] {
        let levels = filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        var subject = Array(prefix.utf8)
        var parent: [UInt8]?
        for (index, level) in levels.enumerated() {
            if index == levels.count - 1 && level.elementsEqual("#".utf8) && index > 0 { parent = subject }
            subject.append(UInt8(ascii: "."))
            if level.elementsEqual("+".utf8) {
                subject.append(UInt8(ascii: "*"))
            } else if level.elementsEqual("#".utf8) {
                subject.append(UInt8(ascii: ">"))
            } else {
                Self.appendToken(forLevel: level, to: &subject)
            }
        }
        return [subject, parent].compactMap { $0.map { String(decoding: $0, as: UTF8.self) } }
    }

    /// The topic whose subject is exactly `subject`, or nil when the subject is not one `subject(forTopic:)`
    /// writes: outside the prefix, spelled otherwise than canonically, with wildcards, or naming no valid topic.
    public func topic(forSubject subject: String) -> String? {
        let bytes = subject.utf8
        let prefixBytes = prefix.utf8
        guard bytes.count > prefixBytes.count + 1, bytes.starts(with: prefixBytes) else { return nil }
        let rest = bytes.dropFirst(prefixBytes.count)
        guard rest.first == UInt8(ascii: ".") else { return nil }
        var topic: [UInt8] = []
        topic.reserveCapacity(rest.count)
        for (index, token) in rest.dropFirst().split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false).enumerated() {
            if index > 0 { topic.append(UInt8(ascii: "/")) }
            guard Self.appendLevel(forToken: token, to: &topic) else { return nil }
        }
        guard let name = String(validating: topic, as: UTF8.self), Topic.problem(withName: name) == nil else { return nil }
        return name
    }

    // MARK: Escaping

    private static let percent = UInt8(ascii: "%")
    private static let hexDigits = Array("0123456789ABCDEF".utf8)

    /// Whether canonical escaping writes `byte` as `%XX` rather than as itself.
    private static func needsEscaping(_ byte: UInt8) -> Bool {
        switch byte {
        case 0...0x20, 0x7F...0xFF: true
        case UInt8(ascii: "."), UInt8(ascii: "*"), UInt8(ascii: ">"), UInt8(ascii: "%"), UInt8(ascii: "/"): true
        default: false
        }
    }

    private static func appendToken(forLevel level: Substring.UTF8View.SubSequence, to subject: inout [UInt8]) {
        if level.isEmpty {
            subject.append(percent)
            return
        }
        for byte in level {
            if needsEscaping(byte) {
                subject.append(percent)
                subject.append(hexDigits[Int(byte >> 4)])
                subject.append(hexDigits[Int(byte & 0x0F)])
            } else {
                subject.append(byte)
            }
        }
    }

    /// Appends the level `token` stands for, or returns false when `token` is not canonical escaping.
    private static func appendLevel(forToken token: Substring.UTF8View.SubSequence, to topic: inout [UInt8]) -> Bool {
        if token.elementsEqual(CollectionOfOne(percent)) { return true }
        if token.isEmpty { return false }
        var rest = token[...]
        while let byte = rest.popFirst() {
            if byte == percent {
                guard let high = rest.popFirst().flatMap(uppercaseHexValue), let low = rest.popFirst().flatMap(uppercaseHexValue) else {
                    return false
                }
                let decoded = high << 4 | low
                // A byte that may be written plainly must be: one topic, one subject. And `/` separates levels,
                // so it is never inside one: `%2F` would make one token two levels.
                guard needsEscaping(decoded), decoded != UInt8(ascii: "/") else { return false }
                topic.append(decoded)
            } else {
                guard !needsEscaping(byte) else { return false }
                topic.append(byte)
            }
        }
        return true
    }

    private static func uppercaseHexValue(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
