/// NATS's NKeys: Ed25519 keys written as text (github.com/nats-io/nkeys, `strkey.go`).
///
/// - A public key is one prefix byte (what the key is for: `U` user, `A` account, `O` operator, …), the 32-byte
///   Ed25519 public key and a CRC-16 of both (XMODEM: polynomial 0x1021, initial 0, little-endian), in base32
///   (RFC 4648 alphabet, no padding): 35 bytes, 56 characters.
/// - A seed (the private key) is two prefix bytes (`S` and the kind of the key, packed so that the text starts
///   `SU`, `SA`, `SO`), the 32-byte Ed25519 seed and the CRC-16: 36 bytes, 58 characters.
///
/// Everything here is bounded and total: any input gives a value or an ``NKeyError``, never a trap, and an error
/// never quotes the input (a seed is a secret; a damaged one is still most of one).
public enum NKey {
    /// What a key is for: its public key's prefix byte, which base32 writes as the first character.
    public enum Kind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
        case user = 0xA0  // 20 << 3: 'U'
        case account = 0x00  // 0 << 3: 'A'
        case `operator` = 0x70  // 14 << 3: 'O'
        case server = 0x68  // 13 << 3: 'N'
        case cluster = 0x10  // 2 << 3: 'C'

        public var description: String {
            switch self {
            case .user: "user"
            case .account: "account"
            case .operator: "operator"
            case .server: "server"
            case .cluster: "cluster"
            }
        }
    }

    /// The first prefix byte of every seed: base32 writes it as `S`.
    static let seedPrefix: UInt8 = 18 << 3
    public static let publicKeyTextLength = 56
    public static let seedTextLength = 58

    // MARK: Public keys

    /// The text of the Ed25519 public key `key` (32 bytes) of a `kind` key: `U…` for a user.
    public static func encodePublicKey(_ key: [UInt8], kind: Kind) throws(NKeyError) -> String {
        guard key.count == 32 else { throw NKeyError("an Ed25519 public key is 32 bytes, not \(key.count)") }
        return encode([kind.rawValue] + key)
    }

    /// The 32-byte Ed25519 public key that `text` (`U…` for a user) holds, checked against its checksum and kind.
    public static func decodePublicKey(_ text: String, kind: Kind) throws(NKeyError) -> [UInt8] {
        guard text.utf8.count == publicKeyTextLength else {
            throw NKeyError("a public NKey is \(publicKeyTextLength) characters, not \(text.utf8.count)")
        }
        let raw = try decode(text.utf8)
        guard raw[0] == kind.rawValue else {
            throw NKeyError("not the public key of \(article(kind)) (it starts with '\(prefixLetter(raw[0]))')")
        }
        return Array(raw[1..<33])
    }

    // MARK: Seeds

    /// The text of the 32-byte Ed25519 seed `seed` of a `kind` key: `SU…` for a user.
    static func encodeSeed(_ seed: [UInt8], kind: Kind) throws(NKeyError) -> String {
        guard seed.count == 32 else { throw NKeyError("an Ed25519 seed is 32 bytes, not \(seed.count)") }
        // Two bytes so that both letters print: 5 bits of `S`, then the kind's 5 bits, then 6 zero bits.
        return encode([seedPrefix | (kind.rawValue >> 5), (kind.rawValue & 0x1F) << 3] + seed)
    }

    /// The kind and 32-byte Ed25519 seed that the seed text `text` holds.
    static func decodeSeed(_ text: some Collection<UInt8>) throws(NKeyError) -> (kind: Kind, seed: [UInt8]) {
        // `count` of a collection that is not random-access walks it: the length is checked on the way instead.
        var length = 0
        for _ in text {
            length += 1
            guard length <= seedTextLength else { break }
        }
        guard length == seedTextLength else {
            throw NKeyError(
                length > seedTextLength
                    ? "an NKey seed is \(seedTextLength) characters; this is longer"
                    : "an NKey seed is \(seedTextLength) characters, not \(length)")
        }
        let raw = try decode(text)
        guard raw[0] & 0xF8 == seedPrefix else {
            throw NKeyError("not an NKey seed (a seed starts with 'S')")
        }
        let kindByte = (raw[0] & 0x07) << 5 | (raw[1] & 0xF8) >> 3
        guard raw[1] & 0x07 == 0, let kind = Kind(rawValue: kindByte) else {
            throw NKeyError("not an NKey seed: its second character names no kind of key")
        }
        return (kind, Array(raw[2..<34]))
    }

    // MARK: Text: base32 with a checksum

    /// `bytes` and their CRC-16 (little-endian), in base32 without padding.
    static func encode(_ bytes: [UInt8]) -> String {
        let checksum = crc16(bytes)
        return String(decoding: base32Encode(bytes + [UInt8(checksum & 0xFF), UInt8(checksum >> 8)]), as: UTF8.self)
    }

    /// The bytes `text` holds without their checksum, once the checksum matches. The caller bounds the length.
    private static func decode(_ text: some Collection<UInt8>) throws(NKeyError) -> [UInt8] {
        let raw = try base32Decode(text)
        guard raw.count >= 4 else { throw NKeyError("too short to be an NKey") }
        let body = raw.dropLast(2)
        let stored = UInt16(raw[raw.count - 2]) | UInt16(raw[raw.count - 1]) << 8
        guard crc16(body) == stored else {
            throw NKeyError("its checksum does not match: the key is damaged or mistyped")
        }
        return Array(body)
    }

    static let base32Alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)

    /// RFC 4648 base32 without padding: every 5 bits one character, the last padded with zero bits. (JWTs' `jti`
    /// is a hash written this way.)
    public static func base32Encode(_ bytes: [UInt8]) -> [UInt8] {
        packBits(bytes, width: 5, alphabet: base32Alphabet)
    }

    /// `bytes` written `width` bits a character (base32 5, base64url 6) from `alphabet`, the last character
    /// filled with zero bits, without padding characters.
    private static func packBits(_ bytes: some Collection<UInt8>, width: Int, alphabet: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity((bytes.count * 8 + width - 1) / width)
        let mask = UInt32(1 << width - 1)
        var buffer: UInt32 = 0
        var bits = 0
        for byte in bytes {
            buffer = (buffer << 8 | UInt32(byte)) & 0xFFFF
            bits += 8
            while bits >= width {
                bits -= width
                output.append(alphabet[Int((buffer >> UInt32(bits)) & mask)])
            }
        }
        if bits > 0 { output.append(alphabet[Int((buffer << UInt32(width - bits)) & mask)]) }
        return output
    }

    /// RFC 4648 base32 without padding, strictly: only `A`–`Z` and `2`–`7`, no `=`, and the bits past the last
    /// whole byte zero (as every encoder writes them), so that one key has one text.
    static func base32Decode(_ text: some Collection<UInt8>) throws(NKeyError) -> [UInt8] {
        var output: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for (offset, character) in text.enumerated() {
            let value: UInt8
            switch character {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = character - UInt8(ascii: "A")
            case UInt8(ascii: "2")...UInt8(ascii: "7"): value = character - UInt8(ascii: "2") + 26
            default:
                throw NKeyError("character \(offset + 1) is not base32 (an NKey holds only A–Z and 2–7)")
            }
            buffer = (buffer << 5 | UInt32(value)) & 0xFFFF
            bits += 5
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        // 1, 3 or 6 characters past a whole group of 8 cannot come from any number of bytes.
        guard bits < 5, buffer & ((1 << UInt32(bits)) - 1) == 0 else {
            throw NKeyError("not an NKey: its base32 ends in bits no encoder writes")
        }
        return output
    }

    /// CRC-16/XMODEM (polynomial 0x1021, initial value 0, not reflected), as nkeys' `crc16.go` computes it.
    static func crc16(_ bytes: some Sequence<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc ^= UInt16(byte) << 8
            for _ in 0..<8 {
                crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1
            }
        }
        return crc
    }

    // MARK: Base64url

    static let base64URLAlphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// RFC 4648 §5 base64url without padding: what nats-server reads a `CONNECT`'s `sig` as, and JWTs are made of.
    public static func base64URLEncode(_ bytes: some Collection<UInt8>) -> String {
        String(decoding: packBits(bytes, width: 6, alphabet: base64URLAlphabet), as: UTF8.self)
    }

    /// Base64url without padding, strictly (the bits past the last whole byte zero); nil when `text` is not.
    public static func base64URLDecode(_ text: some Collection<UInt8>) -> [UInt8]? {
        var output: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for character in text {
            let value: UInt8
            switch character {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = character - UInt8(ascii: "A")
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = character - UInt8(ascii: "a") + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = character - UInt8(ascii: "0") + 52
            case UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "_"): value = 63
            default: return nil
            }
            buffer = (buffer << 6 | UInt32(value)) & 0xFFFF
            bits += 6
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        guard bits < 6, buffer & ((1 << UInt32(bits)) - 1) == 0 else { return nil }
        return output
    }

    // MARK: Messages

    private static func article(_ kind: Kind) -> String {
        kind == .account || kind == .operator ? "an \(kind)" : "a \(kind)"
    }

    /// The letter a prefix byte is written as (its top 5 bits), for messages: never more of the key than that.
    private static func prefixLetter(_ byte: UInt8) -> Character {
        Character(Unicode.Scalar(base32Alphabet[Int(byte >> 3)]))
    }
}

/// Why a text is not the NKey it should be. It never holds the text itself.
public struct NKeyError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }
}
