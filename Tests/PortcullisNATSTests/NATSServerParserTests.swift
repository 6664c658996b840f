import PortcullisNATS
import PortcullisTestSupport
import Testing

@Suite("Reading what a NATS server sends")
struct NATSServerParserTests {
    typealias SplitMix64 = PortcullisTestSupport.SplitMix64

    /// Everything read from `bytes` fed in chunks of the given sizes (cycled), draining after every chunk, and
    /// the error that stopped the reading, if one did.
    static func read(
        _ bytes: [UInt8], chunkSizes: [Int] = [Int.max], maximumPayload: Int = NATSServerParser.defaultMaximumPayload
    ) -> (messages: [NATSServerMessage], error: NATSProtocolError?) {
        var parser = NATSServerParser(maximumPayload: maximumPayload)
        var messages: [NATSServerMessage] = []
        var rest = bytes[...]
        var chunk = 0
        repeat {
            let size = chunkSizes[chunk % chunkSizes.count]
            chunk += 1
            parser.feed(rest.prefix(size))
            rest = rest.dropFirst(size)
            do {
                while let message = try parser.next() { messages.append(message) }
            } catch {
                return (messages, error)
            }
        } while !rest.isEmpty
        return (messages, nil)
    }

    static func read(_ text: String, maximumPayload: Int = NATSServerParser.defaultMaximumPayload) -> (messages: [NATSServerMessage], error: NATSProtocolError?) {
        read(Array(text.utf8), maximumPayload: maximumPayload)
    }

    static let stream = Array(
        (#"INFO {"server_id":"NDX","version":"2.10.0","max_payload":1048576,"headers":true,"connect_urls":["a:4222",{"x":[1,-2.5e3,null]}],"tls_required":true,"auth_required":false}"# + "\r\n"
            + "MSG portcullis.a.b 1 5\r\nhello\r\n"
            + "msg portcullis.a 12\t_INBOX.x  3\r\n\r\n\r\r\n"
            + "MSG portcullis.empty 2 0\r\n\r\n"
            + "HMSG portcullis.h 3 40 43\r\nNATS/1.0\r\nPortcullis-Identity: dev-1\r\n\r\nabc\r\n"
            + "HMSG _INBOX.y 4 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
            + "HMSG portcullis.r 5 reply.to 43 43\r\nNATS/1.0 408 Request Timeout\r\nA:\r\nA: 2 \r\n\r\n\r\n"
            + "PING\r\nPONG\r\n+OK\r\nping\r\n-ERR 'Authorization Violation'\r\n").utf8)

    static let expected: [NATSServerMessage] = [
        .info(NATSServerInfo(serverID: "NDX", maximumPayload: 1_048_576, supportsHeaders: true, tlsRequired: true, authRequired: false)),
        .message(NATSMessage(subject: "portcullis.a.b", sid: 1, payload: Array("hello".utf8))),
        .message(NATSMessage(subject: "portcullis.a", sid: 12, replyTo: "_INBOX.x", payload: Array("\r\n\r".utf8))),
        .message(NATSMessage(subject: "portcullis.empty", sid: 2, payload: [])),
        .message(NATSMessage(
            subject: "portcullis.h", sid: 3, headers: [NATSHeader(name: "Portcullis-Identity", value: "dev-1")],
            payload: Array("abc".utf8))),
        .message(NATSMessage(subject: "_INBOX.y", sid: 4, status: 503, payload: [])),
        .message(NATSMessage(
            subject: "portcullis.r", sid: 5, replyTo: "reply.to", headers: [NATSHeader(name: "A", value: ""), NATSHeader(name: "A", value: "2")],
            status: 408, payload: [])),
        .ping, .pong, .ok, .ping, .error("Authorization Violation"),
    ]

    @Test("Every operation is read, whole")
    func everyOperation() {
        let result = Self.read(Self.stream)
        #expect(result.error == nil)
        #expect(result.messages == Self.expected)
    }

    @Test("Fed byte by byte, the stream reads the same")
    func byteByByte() {
        let result = Self.read(Self.stream, chunkSizes: [1])
        #expect(result.error == nil)
        #expect(result.messages == Self.expected)
    }

    @Test("Split anywhere, the stream reads the same", arguments: [1, 2, 3, 4] as [UInt64])
    func randomChunks(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        for _ in 0..<50 {
            let sizes = (0..<20).map { _ in Int.random(in: 1...40, using: &rng) }
            let result = Self.read(Self.stream, chunkSizes: sizes)
            #expect(result.error == nil)
            #expect(result.messages == Self.expected, "\(sizes)")
        }
    }

    @Test("Split in two at every byte, the stream reads the same")
    func everySplitPoint() {
        for point in 1..<Self.stream.count {
            var parser = NATSServerParser()
            var messages: [NATSServerMessage] = []
            parser.feed(Self.stream[..<point])
            while let message = try? parser.next() { messages.append(message) }
            parser.feed(Self.stream[point...])
            while let message = try? parser.next() { messages.append(message) }
            #expect(messages == Self.expected, "split at \(point)")
        }
    }

    @Test(
        "A malformed header block costs its message only",
        arguments: [
            "NATS/1.1\r\n\r\n", "XATS/1.0\r\n\r\n", "NATS/1.0\r\nA: b\r\n", "NATS/1.0\r\nNo colon\r\n\r\n",
            "NATS/1.0\r\n: empty name\r\n\r\n", "NATS/1.0\r\nA b: c\r\n\r\n", "NATS/1.0 5x3\r\n\r\n", "NATS/1.0 50\r\n\r\n",
            "NATS/1.0 5030\r\n\r\n", "NATS/1.0503\r\n\r\n", "NATS/1.0\r\nA: b\nC: d\r\n\r\n", "NATS/1.0\r\nA: b\rc\r\n\r\n",
            "NATS/1.0\r\n\r\nA: b\r\n\r\n", "NATS/1.0\r\nA: \u{1}\r\n\r\n", "", "\r\n\r\n",
        ])
    func malformedHeaderBlock(block: String) throws {
        let headerLength = block.utf8.count
        let text = "HMSG s 7 \(headerLength) \(headerLength + 2)\r\n\(block)hi\r\nPING\r\n"
        let result = Self.read(text)
        #expect(result.error == nil)
        try #require(result.messages.count == 2)
        guard case .message(let message) = result.messages[0] else {
            Issue.record("not a message: \(result.messages[0])")
            return
        }
        #expect(message.headerProblem != nil)
        #expect(message.headers.isEmpty && message.status == nil)
        #expect(message.payload == Array("hi".utf8))
        #expect(result.messages[1] == .ping)
    }

    @Test("A header value that is not UTF-8 is a problem of its message")
    func headerNotUTF8() {
        let block: [UInt8] = Array("NATS/1.0\r\nA: ".utf8) + [0xFF] + Array("\r\n\r\n".utf8)
        let bytes = Array("HMSG s 7 \(block.count) \(block.count)\r\n".utf8) + block + Array("\r\n".utf8)
        let result = Self.read(bytes)
        guard case .message(let message) = result.messages.first else {
            Issue.record("no message: \(result)")
            return
        }
        #expect(message.headerProblem != nil)
    }

    @Test("A message larger than the bound is refused from its control line, before its bytes")
    func oversizePayload() {
        var parser = NATSServerParser(maximumPayload: 100)
        parser.feed(Array("MSG a 1 100\r\n".utf8))
        #expect(throws: Never.self) { try parser.next() }
        var refusing = NATSServerParser(maximumPayload: 100)
        refusing.feed(Array("MSG a 1 101\r\n".utf8))
        #expect(throws: NATSProtocolError.self) { try refusing.next() }
        #expect(Self.read("HMSG a 1 10 101\r\n", maximumPayload: 100).error != nil)
        #expect(Self.read("MSG a 1 \(8 << 20 + 1)\r\n").error != nil)
    }

    @Test(
        "Broken framing stops the reading",
        arguments: [
            "MSG a 1 99999999999999999999999\r\n", "MSG a 99999999999999999999999 1\r\n", "MSG a 0 1\r\nx\r\n",
            "MSG a 1 +5\r\n", "MSG a 1 -5\r\n", "MSG a 1 5x\r\n", "MSG a x 1\r\n", "MSG a 1\r\n", "MSG a 1 b c 2\r\n",
            "HMSG a 1 5 4\r\n", "HMSG a 1 4\r\n", "HMSG a 1 b 1 2 3\r\n", "MSG a 1 2\r\nhiXY", "MSG a 1 2\r\nhi\nX",
            "HMSG a 1 0 2\r\nhi\r\r", "FOO bar\r\n", "\r\n", "PING\n", "PING extra\r\n", "PINGX\r\n", "MSG a\u{1}b 1 0\r\n\r\n",
            "MSG a 1 r\u{7F} 0\r\n\r\n", "INFO {\"max_payload\":-1}\r\n", "INFO {\"max_payload\":1.5}\r\n",
            "INFO {\"max_payload\":3000000000}\r\n", "INFO {\"headers\":1}\r\n", "INFO {\"headers\":true,\"headers\":false}\r\n",
            "INFO {\"a\":}\r\n", "INFO {\"a\":1}x\r\n", "INFO {\"a\":\"\\q\"}\r\n", "INFO {\"a\":\"\\ud800\"}\r\n",
            "INFO {\"a\":01}\r\n", "INFO\r\n", "INFO [1]\r\n",
            "INFO {\"a\":" + String(repeating: "[", count: 70) + String(repeating: "]", count: 70) + "}\r\n",
        ])
    func brokenFraming(text: String) {
        #expect(Self.read(text).error != nil)
        #expect(Self.read(Array(text.utf8), chunkSizes: [1]).error != nil)
    }

    @Test("After an error every call throws it again")
    func errorsAreFinal() throws {
        var parser = NATSServerParser()
        parser.feed(Array("PING\r\nBOGUS\r\nPING\r\n".utf8))
        #expect(try parser.next() == .ping)
        var first: NATSProtocolError?
        do { _ = try parser.next() } catch { first = error }
        #expect(first?.description.contains("BOGUS") == true)
        parser.feed(Array("PING\r\n".utf8))
        do {
            _ = try parser.next()
            Issue.record("read on after an error")
        } catch {
            #expect(error == first)
        }
    }

    @Test("Control lines are bounded before their end arrives; INFO has a larger bound")
    func longLines() {
        let longest = "-ERR '" + String(repeating: "x", count: NATSServerParser.maximumControlLineLength - 7) + "'"
        #expect(longest.utf8.count == NATSServerParser.maximumControlLineLength)
        #expect(Self.read(longest + "\r\n").messages.count == 1)
        #expect(Self.read("-" + longest + "\r\n").error != nil)
        // No line feed ever comes: refused as soon as the bound is passed.
        var parser = NATSServerParser()
        parser.feed(Array(repeating: UInt8(ascii: "x"), count: NATSServerParser.maximumControlLineLength + 2))
        #expect(throws: NATSProtocolError.self) { try parser.next() }

        let filler = String(repeating: "a", count: 20_000)
        let info = "INFO {\"server_id\":\"big\",\"x\":\"\(filler)\"}\r\n"
        let read = Self.read(Array(info.utf8), chunkSizes: [1000])
        #expect(read.error == nil)
        #expect(read.messages == [.info(NATSServerInfo(serverID: "big"))])
        let hugeFiller = String(repeating: "a", count: NATSServerParser.maximumInfoLineLength)
        #expect(Self.read(Array("INFO {\"x\":\"\(hugeFiller)\"}\r\n".utf8), chunkSizes: [4096]).error != nil)
    }

    @Test("INFO reads JSON escapes and ignores what it does not need")
    func infoJSON() {
        let result = Self.read(#"info  {"server_id" : "a\"b\\c\u00e9\ud83d\ude00" , "unknown":{"deep":[[],{}]} , "max_payload":0}"# + "\r\n")
        #expect(result.error == nil)
        #expect(result.messages == [.info(NATSServerInfo(serverID: "a\"b\\cé😀", maximumPayload: 0))])
        #expect(Self.read("INFO {}\r\n").messages == [.info(NATSServerInfo())])
    }

    @Test("What the parser holds is bounded by the message it waits for")
    func buffering() throws {
        var parser = NATSServerParser(maximumPayload: 1 << 16)
        let payload = [UInt8](repeating: 7, count: 1 << 16)
        let message = Array("MSG a 1 \(payload.count)\r\n".utf8) + payload + Array("\r\n".utf8)
        for _ in 0..<50 {
            for chunk in stride(from: 0, to: message.count, by: 1000) {
                parser.feed(message[chunk..<min(chunk + 1000, message.count)])
                while let read = try parser.next() {
                    guard case .message(let delivered) = read else { throw NATSProtocolError("not a message") }
                    #expect(delivered.payload == payload)
                }
                #expect(parser.bufferedByteCount <= message.count)
            }
        }
        #expect(parser.bufferedByteCount == 0)
    }
}
