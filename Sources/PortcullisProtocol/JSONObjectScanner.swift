/// Finds the members of a JSON object without building it: each key with the byte range of its raw value.
///
/// The broker must forward a `payload` exactly as the publisher wrote it (any JSON value) and read only
/// `type`, `topic` and `id`; Foundation's JSON types can neither give a value's raw bytes nor round-trip
/// numbers and booleans faithfully, so this validating scanner (RFC 8259) is written here.
public struct JSONObjectScanner {
    public struct Member {
        public var key: String
        public var value: Range<Int>
    }

    public struct SyntaxError: Error, CustomStringConvertible {
        public var offset: Int
        public var reason: String
        public var description: String { "invalid JSON at byte \(offset): \(reason)" }
    }

    /// Deepest nesting accepted inside a value.
    public static let maximumDepth = 64

    private let bytes: UnsafeRawBufferPointer
    private var index = 0

    private init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    /// The members of the top-level object in `bytes`, in order; duplicate keys are an error.
    public static func members(of bytes: UnsafeRawBufferPointer) throws -> [Member] {
        var scanner = JSONObjectScanner(bytes)
        scanner.skipWhitespace()
        guard scanner.peek() == UInt8(ascii: "{") else { throw scanner.error("expected an object") }
        scanner.index += 1
        var members: [Member] = []
        // Duplicates are found with a set, not by comparing each key with every earlier one: a message of
        // 32,000 distinct keys took 1.9 s of the event loop that way. Swift's hashing is seeded per process,
        // so chosen keys cannot collide on purpose.
        var keys: Set<String> = []
        scanner.skipWhitespace()
        if scanner.peek() == UInt8(ascii: "}") {
            scanner.index += 1
        } else {
            while true {
                scanner.skipWhitespace()
                let key = try scanner.string()
                guard keys.insert(key).inserted else { throw scanner.error("duplicate key '\(key)'") }
                scanner.skipWhitespace()
                guard scanner.peek() == UInt8(ascii: ":") else { throw scanner.error("expected ':'") }
                scanner.index += 1
                scanner.skipWhitespace()
                let start = scanner.index
                try scanner.skipValue(depth: 0)
                members.append(Member(key: key, value: start..<scanner.index))
                scanner.skipWhitespace()
                if scanner.peek() == UInt8(ascii: ",") {
                    scanner.index += 1
                    continue
                }
                guard scanner.peek() == UInt8(ascii: "}") else { throw scanner.error("expected ',' or '}'") }
                scanner.index += 1
                break
            }
        }
        scanner.skipWhitespace()
        guard scanner.index == bytes.count else { throw scanner.error("unexpected data after the object") }
        return members
    }

    /// The decoded string if `range` of `bytes` holds a JSON string, else nil.
    public static func string(in bytes: UnsafeRawBufferPointer, at range: Range<Int>) -> String? {
        guard range.lowerBound < bytes.count, bytes[range.lowerBound] == UInt8(ascii: "\"") else { return nil }
        var scanner = JSONObjectScanner(bytes)
        scanner.index = range.lowerBound
        return try? scanner.string()
    }

    private func peek() -> UInt8? {
        index < bytes.count ? bytes[index] : nil
    }

    private func error(_ reason: String) -> SyntaxError {
        SyntaxError(offset: index, reason: reason)
    }

    private mutating func skipWhitespace() {
        while let byte = peek(), byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09 { index += 1 }
    }

    private mutating func skipValue(depth: Int) throws {
        guard depth <= Self.maximumDepth else { throw error("nested too deeply") }
        switch peek() {
        case UInt8(ascii: "\""):
            _ = try string()
        case UInt8(ascii: "{"):
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "}") {
                index += 1
                return
            }
            while true {
                skipWhitespace()
                _ = try string()
                skipWhitespace()
                guard peek() == UInt8(ascii: ":") else { throw error("expected ':'") }
                index += 1
                skipWhitespace()
                try skipValue(depth: depth + 1)
                skipWhitespace()
                if peek() == UInt8(ascii: ",") {
                    index += 1
                } else if peek() == UInt8(ascii: "}") {
                    index += 1
                    return
                } else {
                    throw error("expected ',' or '}'")
                }
            }
        case UInt8(ascii: "["):
            index += 1
            skipWhitespace()
            if peek() == UInt8(ascii: "]") {
                index += 1
                return
            }
            while true {
                skipWhitespace()
                try skipValue(depth: depth + 1)
                skipWhitespace()
                if peek() == UInt8(ascii: ",") {
                    index += 1
                } else if peek() == UInt8(ascii: "]") {
                    index += 1
                    return
                } else {
                    throw error("expected ',' or ']'")
                }
            }
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        case UInt8(ascii: "n"): try literal("null")
        case let byte? where byte == UInt8(ascii: "-") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte):
            try number()
        default:
            throw error("expected a value")
        }
    }

    private mutating func literal(_ word: StaticString) throws {
        let length = word.utf8CodeUnitCount
        guard index + length <= bytes.count else { throw error("truncated literal") }
        for offset in 0..<length where bytes[index + offset] != word.utf8Start[offset] {
            throw error("invalid literal")
        }
        index += length
    }

    private mutating func digits() -> Int {
        let start = index
        while let byte = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) { index += 1 }
        return index - start
    }

    private mutating func number() throws {
        if peek() == UInt8(ascii: "-") { index += 1 }
        if peek() == UInt8(ascii: "0") {
            index += 1
        } else if digits() == 0 {
            throw error("invalid number")
        }
        if peek() == UInt8(ascii: ".") {
            index += 1
            guard digits() > 0 else { throw error("invalid number") }
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            index += 1
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
            guard digits() > 0 else { throw error("invalid number") }
        }
    }

    private mutating func hex4() throws -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw error("invalid \\u escape")
            }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }

    /// Reads a string at `index` (which must be its opening quote), unescaping it.
    private mutating func string() throws -> String {
        guard peek() == UInt8(ascii: "\"") else { throw error("expected a string") }
        index += 1
        var scalars = String.UnicodeScalarView()
        var run = index  // start of the current unescaped run
        func flush(_ end: Int) throws {
            guard end > run else { return }
            guard let text = String(validating: UnsafeRawBufferPointer(rebasing: bytes[run..<end]), as: UTF8.self) else {
                throw error("invalid UTF-8")
            }
            scalars.append(contentsOf: text.unicodeScalars)
        }
        while true {
            guard let byte = peek() else { throw error("unterminated string") }
            if byte == UInt8(ascii: "\"") {
                try flush(index)
                index += 1
                return String(scalars)
            }
            if byte < 0x20 { throw error("control character in a string") }
            if byte != UInt8(ascii: "\\") {
                index += 1
                continue
            }
            try flush(index)
            index += 1
            guard let escape = peek() else { throw error("unterminated escape") }
            index += 1
            switch escape {
            case UInt8(ascii: "\""): scalars.append("\"")
            case UInt8(ascii: "\\"): scalars.append("\\")
            case UInt8(ascii: "/"): scalars.append("/")
            case UInt8(ascii: "b"): scalars.append("\u{08}")
            case UInt8(ascii: "f"): scalars.append("\u{0C}")
            case UInt8(ascii: "n"): scalars.append("\n")
            case UInt8(ascii: "r"): scalars.append("\r")
            case UInt8(ascii: "t"): scalars.append("\t")
            case UInt8(ascii: "u"):
                var value = try hex4()
                if (0xD800...0xDBFF).contains(value) {
                    guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u")
                    else { throw error("unpaired surrogate") }
                    index += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw error("unpaired surrogate") }
                    value = 0x10000 + ((value - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let scalar = Unicode.Scalar(value) else { throw error("invalid code point") }
                scalars.append(scalar)
            default:
                throw error("invalid escape")
            }
            run = index
        }
    }
}

/// A JSON string literal for `text` (RFC 8259 escaping), appended to `output`.
public func appendJSONString(_ text: String, to output: inout [UInt8]) {
    output.append(UInt8(ascii: "\""))
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "\""): output += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
        case UInt8(ascii: "\\"): output += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
        case 0x0A: output += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
        case 0x0D: output += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
        case 0x09: output += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
        case 0..<0x20:
            let digits = Array("0123456789abcdef".utf8)
            output += [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), digits[Int(byte >> 4)], digits[Int(byte & 0xF)]]
        default: output.append(byte)
        }
    }
    output.append(UInt8(ascii: "\""))
}
