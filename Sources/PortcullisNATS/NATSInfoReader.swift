/// Reads the few fields the client needs from an `INFO` line's JSON object, checking the whole object is JSON.
///
/// Hand-written rather than Foundation's `JSONSerialization` so that the target stays free of Foundation and
/// its bounds are its own: nesting is limited to `maximumDepth` (the line itself to 64 KiB), and a number is only
/// ever converted when it is a field that is read, within that field's range.
enum NATSInfoReader {
    /// Deepest nesting of objects and arrays accepted; a server's INFO nests two or three deep.
    static let maximumDepth = 32

    static func read(_ json: ArraySlice<UInt8>) throws(NATSProtocolError) -> NATSServerInfo {
        var reader = Reader(bytes: json, index: json.startIndex)
        var info = NATSServerInfo()
        var seen: Set<String> = []
        reader.skipWhitespace()
        try reader.expect(UInt8(ascii: "{"))
        reader.skipWhitespace()
        if reader.peek() == UInt8(ascii: "}") {
            reader.index += 1
        } else {
            while true {
                reader.skipWhitespace()
                let key = try reader.string()
                reader.skipWhitespace()
                try reader.expect(UInt8(ascii: ":"))
                reader.skipWhitespace()
                if ["server_id", "max_payload", "headers", "tls_required", "auth_required"].contains(key) {
                    // The same field twice could be read one way here and another way elsewhere.
                    guard seen.insert(key).inserted else { throw NATSProtocolError("INFO has '\(key)' twice") }
                }
                switch key {
                case "server_id": info.serverID = try reader.string()
                case "max_payload": info.maximumPayload = try reader.maximumPayload()
                case "headers": info.supportsHeaders = try reader.boolean(key)
                case "tls_required": info.tlsRequired = try reader.boolean(key)
                case "auth_required": info.authRequired = try reader.boolean(key)
                default: try reader.skipValue(depth: 1)
                }
                reader.skipWhitespace()
                if reader.peek() == UInt8(ascii: ",") {
                    reader.index += 1
                    continue
                }
                try reader.expect(UInt8(ascii: "}"))
                break
            }
        }
        reader.skipWhitespace()
        guard reader.index == json.endIndex else { throw NATSProtocolError("INFO has something after its JSON object") }
        return info
    }

    private struct Reader {
        let bytes: ArraySlice<UInt8>
        var index: Int

        func peek() -> UInt8? { index < bytes.endIndex ? bytes[index] : nil }

        mutating func skipWhitespace() {
            while let byte = peek(), byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D { index += 1 }
        }

        mutating func expect(_ byte: UInt8) throws(NATSProtocolError) {
            guard peek() == byte else {
                throw NATSProtocolError("INFO's JSON wants '\(Character(Unicode.Scalar(byte)))' at byte \(index - bytes.startIndex)")
            }
            index += 1
        }

        mutating func literal(_ word: String) throws(NATSProtocolError) {
            for byte in word.utf8 { try expect(byte) }
        }

        mutating func boolean(_ key: String) throws(NATSProtocolError) -> Bool {
            switch peek() {
            case UInt8(ascii: "t"): try literal("true"); return true
            case UInt8(ascii: "f"): try literal("false"); return false
            default: throw NATSProtocolError("INFO's '\(key)' must be true or false")
            }
        }

        /// `max_payload`: a whole number of bytes that NATS's own int32 holds.
        mutating func maximumPayload() throws(NATSProtocolError) -> Int {
            let numberStart = index
            try number()
            var value = 0
            for byte in bytes[numberStart..<index] {
                guard let digit = NATSServerParser.decimalDigit(byte), value <= (Int(Int32.max) - digit) / 10 else {
                    throw NATSProtocolError("INFO's 'max_payload' must be a whole number from 0 to \(Int32.max)")
                }
                value = value * 10 + digit
            }
            return value
        }

        /// Skips a JSON number, checking its form.
        mutating func number() throws(NATSProtocolError) {
            func digits() throws(NATSProtocolError) {
                guard let byte = peek(), NATSServerParser.decimalDigit(byte) != nil else {
                    throw NATSProtocolError("INFO's JSON has a malformed number")
                }
                while let byte = peek(), NATSServerParser.decimalDigit(byte) != nil { index += 1 }
            }
            if peek() == UInt8(ascii: "-") { index += 1 }
            if peek() == UInt8(ascii: "0") { index += 1 } else { try digits() }
            if peek() == UInt8(ascii: ".") {
                index += 1
                try digits()
            }
            if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
                index += 1
                if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
                try digits()
            }
        }

        /// A JSON string, unescaped.
        mutating func string() throws(NATSProtocolError) -> String {
            try expect(UInt8(ascii: "\""))
            var text: [UInt8] = []
            while true {
                guard let byte = peek() else { throw NATSProtocolError("INFO's JSON has an unterminated string") }
                index += 1
                switch byte {
                case UInt8(ascii: "\""):
                    guard let string = String(validating: text, as: UTF8.self) else {
                        throw NATSProtocolError("INFO's JSON has a string that is not UTF-8")
                    }
                    return string
                case UInt8(ascii: "\\"):
                    try escape(into: &text)
                case 0..<0x20:
                    throw NATSProtocolError("INFO's JSON has a control character in a string")
                default:
                    text.append(byte)
                }
            }
        }

        private mutating func escape(into text: inout [UInt8]) throws(NATSProtocolError) {
            guard let byte = peek() else { throw NATSProtocolError("INFO's JSON has an unterminated string") }
            index += 1
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): text.append(byte)
            case UInt8(ascii: "b"): text.append(0x08)
            case UInt8(ascii: "f"): text.append(0x0C)
            case UInt8(ascii: "n"): text.append(0x0A)
            case UInt8(ascii: "r"): text.append(0x0D)
            case UInt8(ascii: "t"): text.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hexQuad()
                if (0xD800..<0xDC00).contains(scalar) {
                    // A high surrogate must be followed by an escaped low one; together they are one scalar.
                    try literal("\\u")
                    let low = try hexQuad()
                    guard (0xDC00..<0xE000).contains(low) else { throw NATSProtocolError("INFO's JSON has a lone surrogate") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let unicodeScalar = Unicode.Scalar(scalar) else { throw NATSProtocolError("INFO's JSON has a lone surrogate") }
                text.append(contentsOf: String(Character(unicodeScalar)).utf8)
            default:
                throw NATSProtocolError("INFO's JSON has an unknown escape")
            }
        }

        private mutating func hexQuad() throws(NATSProtocolError) -> UInt32 {
            var value: UInt32 = 0
            for _ in 0..<4 {
                guard let byte = peek(), let digit = Self.hexValue(byte) else {
                    throw NATSProtocolError("INFO's JSON has a malformed \\u escape")
                }
                index += 1
                value = value << 4 | digit
            }
            return value
        }

        private static func hexValue(_ byte: UInt8) -> UInt32? {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(byte - UInt8(ascii: "A") + 10)
            default: nil
            }
        }

        /// Skips any JSON value, checking its form; recursion is bounded by `maximumDepth`.
        mutating func skipValue(depth: Int) throws(NATSProtocolError) {
            guard depth <= NATSInfoReader.maximumDepth else {
                throw NATSProtocolError("INFO's JSON nests deeper than \(NATSInfoReader.maximumDepth)")
            }
            skipWhitespace()
            switch peek() {
            case UInt8(ascii: "\""): _ = try string()
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            case UInt8(ascii: "{"): try skipContainer(closer: UInt8(ascii: "}"), keyed: true, depth: depth)
            case UInt8(ascii: "["): try skipContainer(closer: UInt8(ascii: "]"), keyed: false, depth: depth)
            default: try number()
            }
        }

        private mutating func skipContainer(closer: UInt8, keyed: Bool, depth: Int) throws(NATSProtocolError) {
            index += 1
            skipWhitespace()
            if peek() == closer {
                index += 1
                return
            }
            while true {
                skipWhitespace()
                if keyed {
                    _ = try string()
                    skipWhitespace()
                    try expect(UInt8(ascii: ":"))
                }
                try skipValue(depth: depth + 1)
                skipWhitespace()
                if peek() == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                try expect(closer)
                return
            }
        }
    }
}
