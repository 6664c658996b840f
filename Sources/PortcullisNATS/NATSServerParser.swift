/// Reads what a NATS server sends its client, from bytes that arrive in chunks of any size.
///
/// `feed(_:)` what arrives, then call `next()` until it returns nil (it needs more bytes). An error is final: the
/// stream cannot be resynchronised, so the connection is to be closed, and every later `next()` throws it again.
///
/// Everything the server announces is bounded before it is buffered: a control line may be
/// `maximumControlLineLength` bytes (`INFO`, which carries the server's JSON, `maximumInfoLineLength`), and a
/// message `maximumPayload` bytes (headers included), refused as soon as its control line says so. Each byte is
/// looked at a bounded number of times, however the stream is split.
public struct NATSServerParser: Sendable {
    /// Longest control line (`MSG …`, `PING`, `-ERR …`) accepted, without its CR LF.
    public static let maximumControlLineLength = 4096
    /// Longest `INFO` line accepted, without its CR LF: a cluster's `connect_urls` can make it long.
    public static let maximumInfoLineLength = 65536
    /// The default of `maximumPayload`: 8 MiB, NATS's own upper bound for `max_payload`.
    public static let defaultMaximumPayload = 8 << 20

    /// Largest message accepted, headers and payload together, in bytes.
    public let maximumPayload: Int

    private var buffer: [UInt8] = []
    /// Where the bytes not yet read start in `buffer`.
    private var start = 0
    /// How far the search for the current control line's end has got, so that no byte is searched twice.
    private var searchedUpTo = 0
    /// A message whose control line has been read, waiting for its body.
    private var awaitedBody: AwaitedBody?
    private var failure: NATSProtocolError?

    private struct AwaitedBody: Sendable {
        var subject: String
        var sid: UInt64
        var replyTo: String?
        /// Nil for `MSG`, which has no header block.
        var headerLength: Int?
        var totalLength: Int
    }

    /// A parser that refuses messages larger than `maximumPayload` bytes (clamped to 0...Int32.max, NATS's
    /// own range).
    public init(maximumPayload: Int = NATSServerParser.defaultMaximumPayload) {
        self.maximumPayload = min(max(maximumPayload, 0), Int(Int32.max))
    }

    /// How many bytes are buffered and not yet read.
    public var bufferedByteCount: Int { buffer.count - start }

    /// Adds bytes received from the server. Ignored after an error.
    public mutating func feed(_ bytes: some Collection<UInt8>) {
        guard failure == nil else { return }
        // Dropping what has been read only once it outweighs what has not keeps the copying linear overall.
        if start > 0 && start >= buffer.count - start {
            buffer.removeSubrange(0..<start)
            searchedUpTo -= start
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next whole operation, or nil when more bytes are needed. Throws when the stream breaks the protocol
    /// or a bound; the error is final.
    public mutating func next() throws(NATSProtocolError) -> NATSServerMessage? {
        if let failure { throw failure }
        do throws(NATSProtocolError) {
            return try readNext()
        } catch {
            failure = error
            buffer = []
            start = 0
            searchedUpTo = 0
            throw error
        }
    }

    // MARK: Framing

    private static let carriageReturn = UInt8(ascii: "\r")
    private static let lineFeed = UInt8(ascii: "\n")

    private mutating func readNext() throws(NATSProtocolError) -> NATSServerMessage? {
        while true {
            if let body = awaitedBody {
                // `totalLength` is at most Int32.max, so this cannot overflow.
                guard buffer.count - start >= body.totalLength + 2 else { return nil }
                let end = start + body.totalLength
                guard buffer[end] == Self.carriageReturn && buffer[end + 1] == Self.lineFeed else {
                    throw NATSProtocolError("a message's \(body.totalLength) bytes must be followed by CR LF")
                }
                let message = Self.message(body, bytes: buffer[start..<end])
                awaitedBody = nil
                start = end + 2
                searchedUpTo = start
                return .message(message)
            }
            guard let lineFeedIndex = try findLineEnd() else { return nil }
            guard lineFeedIndex > start && buffer[lineFeedIndex - 1] == Self.carriageReturn else {
                throw NATSProtocolError("a control line must end with CR LF")
            }
            let line = buffer[start..<(lineFeedIndex - 1)]
            start = lineFeedIndex + 1
            searchedUpTo = start
            if let operation = try readControlLine(line) { return operation }
        }
    }

    /// The index of the line feed ending the control line at `start`, or nil when it has not arrived yet.
    private mutating func findLineEnd() throws(NATSProtocolError) -> Int? {
        // Never search past the longest line allowed: a stream without line feeds is refused, not scanned.
        let searchLimit = min(buffer.count, start + Self.maximumInfoLineLength + 2)
        let from = max(searchedUpTo, start)
        if from < searchLimit, let found = buffer[from..<searchLimit].firstIndex(of: Self.lineFeed) {
            try checkLineLength(found - start - 1)
            return found
        }
        searchedUpTo = searchLimit
        // A CR LF still to come would make the line at least this long.
        try checkLineLength(buffer.count - start - 1)
        return nil
    }

    private func checkLineLength(_ length: Int) throws(NATSProtocolError) {
        guard length > Self.maximumControlLineLength else { return }
        // Only the first five bytes are looked at, so that a long line arriving in pieces is not rescanned.
        let head = buffer[start..<min(buffer.count, start + 5)]
        let isInfo = head.count == 5 && Self.equalsIgnoringCase(head.prefix(4), "INFO") && head.last.map(Self.isBlank) == true
        if !isInfo {
            throw NATSProtocolError("a control line must not be longer than \(Self.maximumControlLineLength) bytes")
        }
        if length > Self.maximumInfoLineLength {
            throw NATSProtocolError("an INFO line must not be longer than \(Self.maximumInfoLineLength) bytes")
        }
    }

    // MARK: Control lines

    private static func isBlank(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }

    /// Reads one control line (without CR LF): the operation it is, or nil for a `MSG` whose body is now awaited.
    private mutating func readControlLine(_ line: ArraySlice<UInt8>) throws(NATSProtocolError) -> NATSServerMessage? {
        let nameEnd = line.firstIndex(where: Self.isBlank) ?? line.endIndex
        let name = line[..<nameEnd]
        let arguments = line[nameEnd...].drop(while: Self.isBlank)
        let fields = arguments.split(whereSeparator: Self.isBlank)
        if Self.equalsIgnoringCase(name, "MSG") {
            guard fields.count == 3 || fields.count == 4 else {
                throw NATSProtocolError("MSG takes a subject, a sid, perhaps a reply subject, and a byte count")
            }
            awaitedBody = AwaitedBody(
                subject: try Self.subject(fields[0], "MSG's subject"), sid: try Self.sid(fields[1]),
                replyTo: fields.count == 4 ? try Self.subject(fields[2], "MSG's reply subject") : nil,
                headerLength: nil, totalLength: try byteCount(fields[fields.count - 1]))
            return nil
        }
        if Self.equalsIgnoringCase(name, "HMSG") {
            guard fields.count == 4 || fields.count == 5 else {
                throw NATSProtocolError("HMSG takes a subject, a sid, perhaps a reply subject, and two byte counts")
            }
            let headerLength = try byteCount(fields[fields.count - 2])
            let totalLength = try byteCount(fields[fields.count - 1])
            guard headerLength <= totalLength else {
                throw NATSProtocolError("HMSG's header bytes (\(headerLength)) must not exceed its total bytes (\(totalLength))")
            }
            awaitedBody = AwaitedBody(
                subject: try Self.subject(fields[0], "HMSG's subject"), sid: try Self.sid(fields[1]),
                replyTo: fields.count == 5 ? try Self.subject(fields[2], "HMSG's reply subject") : nil,
                headerLength: headerLength, totalLength: totalLength)
            return nil
        }
        if Self.equalsIgnoringCase(name, "PING") || Self.equalsIgnoringCase(name, "PONG") || Self.equalsIgnoringCase(name, "+OK") {
            guard arguments.isEmpty else {
                throw NATSProtocolError("\(String(decoding: name, as: UTF8.self).uppercased()) takes no arguments")
            }
            if Self.equalsIgnoringCase(name, "PING") { return .ping }
            return Self.equalsIgnoringCase(name, "PONG") ? .pong : .ok
        }
        if Self.equalsIgnoringCase(name, "-ERR") {
            var text = arguments
            while let last = text.last, Self.isBlank(last) { text.removeLast() }
            if text.count >= 2 && text.first == UInt8(ascii: "'") && text.last == UInt8(ascii: "'") {
                text = text.dropFirst().dropLast()
            }
            return .error(String(decoding: text, as: UTF8.self))
        }
        if Self.equalsIgnoringCase(name, "INFO") {
            return .info(try NATSInfoReader.read(arguments))
        }
        let shown = String(decoding: name.prefix(16), as: UTF8.self).unicodeScalars
            .map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F ? String($0) : "?" }.joined()
        throw NATSProtocolError("unknown NATS operation '\(shown)'")
    }

    /// Whether `bytes` spell `name` (upper case ASCII), ignoring the case of letters.
    static func equalsIgnoringCase(_ bytes: ArraySlice<UInt8>, _ name: StaticString) -> Bool {
        let expected = UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
        guard bytes.count == expected.count else { return false }
        return zip(bytes, expected).allSatisfy { byte, wanted in
            let folded = (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) ? byte - 0x20 : byte
            return folded == wanted
        }
    }

    private static func subject(_ field: ArraySlice<UInt8>, _ what: String) throws(NATSProtocolError) -> String {
        // Blanks cannot be in a field; the other controls can, and NATS allows none of them in a subject.
        guard !field.contains(where: { $0 < 0x20 || $0 == 0x7F }), let subject = String(validating: field, as: UTF8.self) else {
            throw NATSProtocolError("\(what) must be UTF-8 without control characters")
        }
        return subject
    }

    private static func sid(_ field: ArraySlice<UInt8>) throws(NATSProtocolError) -> UInt64 {
        var value: UInt64 = 0
        for byte in field {
            guard let digit = decimalDigit(byte) else { throw NATSProtocolError("a sid must be a decimal number") }
            let (shifted, overflowShift) = value.multipliedReportingOverflow(by: 10)
            let (sum, overflowAdd) = shifted.addingReportingOverflow(UInt64(digit))
            guard !overflowShift && !overflowAdd else { throw NATSProtocolError("a sid must fit in 64 bits") }
            value = sum
        }
        guard value > 0 else { throw NATSProtocolError("a sid must be a positive decimal number") }
        return value
    }

    /// A message's byte count, refused as soon as it exceeds `maximumPayload` (so it never overflows).
    private func byteCount(_ field: ArraySlice<UInt8>) throws(NATSProtocolError) -> Int {
        guard !field.isEmpty else { throw NATSProtocolError("a byte count must not be empty") }
        var value = 0
        for byte in field {
            guard let digit = Self.decimalDigit(byte) else { throw NATSProtocolError("a byte count must be decimal digits") }
            guard value <= (maximumPayload - digit) / 10 else {
                throw NATSProtocolError("a message must not be larger than \(maximumPayload) bytes")
            }
            value = value * 10 + digit
        }
        return value
    }

    static func decimalDigit(_ byte: UInt8) -> Int? {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) ? Int(byte - UInt8(ascii: "0")) : nil
    }

    // MARK: Messages

    private static func message(_ body: AwaitedBody, bytes: ArraySlice<UInt8>) -> NATSMessage {
        guard let headerLength = body.headerLength else {
            return NATSMessage(subject: body.subject, sid: body.sid, replyTo: body.replyTo, payload: Array(bytes))
        }
        let headerEnd = bytes.startIndex + headerLength
        let block = NATSHeaderBlock.read(bytes[..<headerEnd])
        return NATSMessage(
            subject: body.subject, sid: body.sid, replyTo: body.replyTo, headers: block.headers, status: block.status,
            headerProblem: block.problem, payload: Array(bytes[headerEnd...]))
    }
}

/// An `HMSG`'s header block: `NATS/1.0`, perhaps a status, CR LF, `Name: value` lines, and an empty line.
enum NATSHeaderBlock {
    static let version = Array("NATS/1.0".utf8)

    /// The headers and status of `block`, or why it cannot be read (then no headers and no status).
    static func read(_ block: ArraySlice<UInt8>) -> (headers: [NATSHeader], status: Int?, problem: String?) {
        func refused(_ problem: String) -> (headers: [NATSHeader], status: Int?, problem: String?) { ([], nil, problem) }
        guard block.count >= 4, block.suffix(4).elementsEqual("\r\n\r\n".utf8) else {
            return refused("a header block must end with an empty line")
        }
        var lines: [ArraySlice<UInt8>] = []
        var lineStart = block.startIndex
        let content = block.dropLast(4)
        var index = content.startIndex
        while index < content.endIndex {
            let byte = content[index]
            if byte == UInt8(ascii: "\r") && index + 1 < content.endIndex && content[index + 1] == UInt8(ascii: "\n") {
                lines.append(content[lineStart..<index])
                index += 2
                lineStart = index
            } else if byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\n") {
                return refused("a header block must not hold a bare CR or LF")
            } else {
                index += 1
            }
        }
        lines.append(content[lineStart...])

        let statusLine = lines[0]
        guard statusLine.starts(with: version) else { return refused("a header block must start with NATS/1.0") }
        var status: Int?
        let afterVersion = statusLine.dropFirst(version.count)
        if !afterVersion.isEmpty {
            let statusText = afterVersion.drop(while: isBlank)
            let code = statusText.prefix(3)
            guard afterVersion.first.map(isBlank) == true, code.count == 3,
                statusText.dropFirst(3).first.map(isBlank) ?? true,
                !statusText.contains(where: isControl)
            else { return refused("a header block's status must be three digits after NATS/1.0") }
            var value = 0
            for byte in code {
                guard let digit = NATSServerParser.decimalDigit(byte) else {
                    return refused("a header block's status must be three digits after NATS/1.0")
                }
                value = value * 10 + digit
            }
            status = value
        }

        var headers: [NATSHeader] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { return refused("a header line must be 'Name: value'") }
            let name = line[..<colon]
            guard !name.isEmpty, name.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                return refused("a header name must be printable ASCII without blanks")
            }
            var value = line[(colon + 1)...].drop(while: isBlank)
            while let last = value.last, isBlank(last) { value.removeLast() }
            guard !value.contains(where: isControl), let text = String(validating: value, as: UTF8.self) else {
                return refused("a header value must be UTF-8 without control characters")
            }
            headers.append(NATSHeader(name: String(decoding: name, as: UTF8.self), value: text))
        }
        return (headers, status, nil)
    }

    private static func isBlank(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }

    /// Controls other than the tab, which is a blank.
    private static func isControl(_ byte: UInt8) -> Bool { (byte < 0x20 && byte != UInt8(ascii: "\t")) || byte == 0x7F }
}
