/// Audit records carry text an unauthenticated client chose (certificate names, an `Origin`, a path). Printed
/// raw, an escape sequence in one would drive the admin's terminal: `audit query`, `tail` and `stats` print
/// them through these, which make such characters visible.

/// Whether `scalar` must not reach a terminal as it is: C0 and C1 controls, DEL, the line and paragraph
/// separators, and the bidirectional overrides and isolates (which reorder what the reader sees).
public func isTerminalUnsafe(_ scalar: Unicode.Scalar) -> Bool {
    switch scalar.value {
    case 0x00...0x1F, 0x7F...0x9F, 0x2028, 0x2029, 0x202A...0x202E, 0x2066...0x2069: true
    default: false
    }
}

/// `text` with each unsafe character written as `\u{…}`, for tables meant for people.
public func terminalSafe(_ text: String) -> String {
    guard text.unicodeScalars.contains(where: isTerminalUnsafe) else { return text }
    var result = ""
    for scalar in text.unicodeScalars {
        if isTerminalUnsafe(scalar) {
            result += "\\u{" + String(scalar.value, radix: 16) + "}"
        } else {
            result.unicodeScalars.append(scalar)
        }
    }
    return result
}

/// A JSON line with each unsafe character that JSON leaves raw (DEL, C1, separators, bidi controls) written
/// as a `\uXXXX` escape instead: the same JSON value, safe on a terminal. C0 controls are escaped in stored
/// lines already.
public func terminalSafeJSON(_ line: UnsafeRawBufferPointer) -> [UInt8]? {
    // Only bytes 0x7F, 0xC2 (U+0080–U+00BF) and 0xE2 (U+2000–U+2FFF) can start an unsafe character.
    guard line.contains(where: { $0 == 0x7F || $0 == 0xC2 || $0 == 0xE2 }) else { return nil }
    let text = String(decoding: line, as: UTF8.self)
    guard text.unicodeScalars.contains(where: isTerminalUnsafe) else { return nil }
    var result: [UInt8] = []
    result.reserveCapacity(line.count + 16)
    for scalar in text.unicodeScalars {
        if isTerminalUnsafe(scalar) {
            let hex = String(scalar.value, radix: 16)
            result += Array("\\u".utf8) + Array(repeating: UInt8(ascii: "0"), count: 4 - hex.count) + Array(hex.utf8)
        } else {
            result += Array(String(scalar).utf8)
        }
    }
    return result
}
