/// What the gateway sends a NATS server, as bytes ready for the socket.
///
/// Every argument that lands on the wire is checked first, and a command that would not be exactly what it says
/// (a subject with a blank would split into two fields, a header value with CR LF would start a new header) is
/// refused with an error instead of written: nothing here traps on what it is given.
public enum NATSClientCommand {
    /// `PING`: asks the server to prove it is alive.
    public static let ping: [UInt8] = Array("PING\r\n".utf8)
    /// `PONG`: the answer to the server's `PING`.
    public static let pong: [UInt8] = Array("PONG\r\n".utf8)

    /// `CONNECT {…}`: the client's options and credentials, sent once after `INFO`. `signature` is the server's
    /// nonce signed by the key of `nkey` or of the user `jwt` (``NATSSignIn`` makes it).
    public static func connect(
        name: String, user: String? = nil, password: String? = nil, nkey: String? = nil, jwt: String? = nil,
        signature: String? = nil, headers: Bool = true, echo: Bool = false, verbose: Bool = false,
        pedantic: Bool = false, tlsRequired: Bool, version: String = "1.0.0"
    ) -> [UInt8] {
        var json: [UInt8] = Array(#"CONNECT {"verbose":"#.utf8)
        json += Array((verbose ? "true" : "false").utf8)
        json += Array(#","pedantic":"#.utf8) + Array((pedantic ? "true" : "false").utf8)
        json += Array(#","tls_required":"#.utf8) + Array((tlsRequired ? "true" : "false").utf8)
        json += Array(#","name":"#.utf8)
        appendJSONString(name, to: &json)
        // Only the fields of the configured kind of sign-in are sent, in this order.
        for (key, value) in [("user", user), ("pass", password), ("nkey", nkey), ("jwt", jwt), ("sig", signature)] {
            guard let value else { continue }
            json += Array(",\"\(key)\":".utf8)
            appendJSONString(value, to: &json)
        }
        json += Array(#","lang":"swift","version":"#.utf8)
        appendJSONString(version, to: &json)
        json += Array(#","protocol":1,"echo":"#.utf8) + Array((echo ? "true" : "false").utf8)
        json += Array(#","headers":"#.utf8) + Array((headers ? "true" : "false").utf8)
        json += Array("}\r\n".utf8)
        return json
    }

    /// `SUB <subject> [queue group] <sid>`: a subscription the server numbers `sid` in its `MSG`s.
    public static func subscribe(subject: String, queueGroup: String? = nil, sid: UInt64) throws(NATSProtocolError) -> [UInt8] {
        try checkSubject(subject, "a subscription's subject", wildcards: true)
        var command = Array("SUB ".utf8) + Array(subject.utf8)
        if let queueGroup {
            guard !queueGroup.isEmpty, !queueGroup.utf8.contains(where: isBlankOrControl) else {
                throw NATSProtocolError("a queue group must be non-empty without blanks or control characters")
            }
            command += [UInt8(ascii: " ")] + Array(queueGroup.utf8)
        }
        command += Array(" \(sid)\r\n".utf8)
        return command
    }

    /// `UNSUB <sid>`: ends subscription `sid`.
    public static func unsubscribe(sid: UInt64) -> [UInt8] {
        Array("UNSUB \(sid)\r\n".utf8)
    }

    /// `PUB`, or `HPUB` when there are headers: publishes `payload` on `subject`.
    public static func publish(
        subject: String, headers: [NATSHeader] = [], payload: some Collection<UInt8>
    ) throws(NATSProtocolError) -> [UInt8] {
        var command: [UInt8] = []
        try appendPublish(to: &command, subject: subject, headers: headers, payload: payload)
        return command
    }

    /// Appends a `PUB` or `HPUB` to `buffer`, so that many publishes go out in one write. On an error nothing is
    /// appended.
    public static func appendPublish(
        to buffer: inout [UInt8], subject: String, headers: [NATSHeader] = [], payload: some Collection<UInt8>
    ) throws(NATSProtocolError) {
        try checkSubject(subject, "a published subject", wildcards: false)
        let payloadLength = payload.count
        guard !headers.isEmpty else {
            buffer += Array("PUB ".utf8) + Array(subject.utf8) + Array(" \(payloadLength)\r\n".utf8)
            buffer.append(contentsOf: payload)
            buffer += [UInt8(ascii: "\r"), UInt8(ascii: "\n")]
            return
        }
        var block = Array("NATS/1.0\r\n".utf8)
        for header in headers {
            guard !header.name.isEmpty,
                header.name.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ":") })
            else { throw NATSProtocolError("a header name must be printable ASCII without blanks or ':'") }
            // A tab is allowed in a value; CR and LF, which would end the header line, and the other controls not.
            guard !header.value.utf8.contains(where: { ($0 < 0x20 && $0 != UInt8(ascii: "\t")) || $0 == 0x7F }) else {
                throw NATSProtocolError("a header value must not hold CR, LF or other control characters")
            }
            block += Array(header.name.utf8) + Array(": ".utf8) + Array(header.value.utf8) + [UInt8(ascii: "\r"), UInt8(ascii: "\n")]
        }
        block += [UInt8(ascii: "\r"), UInt8(ascii: "\n")]
        let (totalLength, overflow) = block.count.addingReportingOverflow(payloadLength)
        guard !overflow else { throw NATSProtocolError("a message's length must fit in an Int") }
        buffer += Array("HPUB ".utf8) + Array(subject.utf8) + Array(" \(block.count) \(totalLength)\r\n".utf8)
        buffer += block
        buffer.append(contentsOf: payload)
        buffer += [UInt8(ascii: "\r"), UInt8(ascii: "\n")]
    }

    // MARK: Checks and escaping

    private static func isBlankOrControl(_ byte: UInt8) -> Bool { byte <= 0x20 || byte == 0x7F }

    /// A subject must be one field of non-empty `.`-separated tokens; `*` and `>` tokens only in a subscription.
    private static func checkSubject(_ subject: String, _ what: String, wildcards: Bool) throws(NATSProtocolError) {
        let tokens = subject.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard !subject.isEmpty, !subject.utf8.contains(where: isBlankOrControl), !tokens.contains(where: \.isEmpty) else {
            throw NATSProtocolError("\(what) must be non-empty '.'-separated tokens without blanks or control characters")
        }
        if !wildcards && tokens.contains(where: { $0.elementsEqual("*".utf8) || $0.elementsEqual(">".utf8) }) {
            throw NATSProtocolError("\(what) must not hold the wildcards '*' or '>'")
        }
        if tokens.dropLast().contains(where: { $0.elementsEqual(">".utf8) }) {
            throw NATSProtocolError("\(what) may have '>' only as its last token")
        }
    }

    /// Appends `text` as a JSON string: quotes, backslashes and controls escaped, everything else as UTF-8.
    static func appendJSONString(_ text: String, to json: inout [UInt8]) {
        let hexDigits = Array("0123456789abcdef".utf8)
        json.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                json += [UInt8(ascii: "\\"), byte]
            case 0..<0x20:
                json += Array("\\u00".utf8) + [hexDigits[Int(byte >> 4)], hexDigits[Int(byte & 0x0F)]]
            default:
                json.append(byte)
            }
        }
        json.append(UInt8(ascii: "\""))
    }
}
