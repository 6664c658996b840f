/// Validates UTF-8 (RFC 3629) as it arrives in pieces, so that a text message sent in fragments fails at the
/// fragment that makes it invalid (RFC 6455 §8.1), not when its last fragment arrives.
///
/// Written by hand because the standard library validates whole strings only. It follows the well-formed
/// byte sequences of the Unicode standard (table 3-7): no overlong forms, no surrogates, nothing above
/// U+10FFFF.
struct UTF8Validator: Sendable, Equatable {
    /// Continuation bytes still owed by the current sequence.
    private var remaining: UInt8 = 0
    /// The range the next continuation byte must fall in (narrower after E0, ED, F0 and F4).
    private var lower: UInt8 = 0x80
    private var upper: UInt8 = 0xBF

    init() {}

    /// Whether the bytes so far end on a whole character: a message may only end there.
    var isAtCharacterBoundary: Bool { remaining == 0 }

    /// Takes the next bytes; false once they cannot be part of valid UTF-8 (and it stays invalid).
    mutating func consume(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var index = 0
        let count = bytes.count
        while index < count {
            // Between characters, runs of ASCII go eight bytes at a time.
            if remaining == 0 {
                while index + 8 <= count,
                    bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self) & 0x8080_8080_8080_8080 == 0
                {
                    index += 8
                }
                guard index < count else { break }
            }
            let byte = bytes[index]
            index += 1
            if remaining == 0 {
                switch byte {
                case 0x00...0x7F: continue
                case 0xC2...0xDF: remaining = 1
                case 0xE0: (remaining, lower) = (2, 0xA0)
                case 0xE1...0xEC, 0xEE...0xEF: remaining = 2
                case 0xED: (remaining, upper) = (2, 0x9F)
                case 0xF0: (remaining, lower) = (3, 0x90)
                case 0xF1...0xF3: remaining = 3
                case 0xF4: (remaining, upper) = (3, 0x8F)
                default:
                    remaining = .max
                    return false
                }
            } else {
                guard remaining != .max, byte >= lower, byte <= upper else {
                    remaining = .max
                    return false
                }
                (lower, upper) = (0x80, 0xBF)
                remaining -= 1
            }
        }
        return remaining != .max
    }
}
