import PortcullisProtocol
import Testing

func decode(_ text: String) -> Result<MessagingProtocol.Request, MessagingProtocol.DecodingError> {
    Array(text.utf8).withUnsafeBytes { bytes in
        Result { () throws(MessagingProtocol.DecodingError) in try MessagingProtocol.decodeRequest(text: bytes) }
    }
}

@Suite("Broker wire protocol")
struct MessagingProtocolTests {
    @Test("Requests decode; payloads and ids are kept byte for byte")
    func requests() throws {
        #expect(try decode(#"{"type":"subscribe","topic":"a/+","id":"s1"}"#).get() == .subscribe(topic: "a/+", id: Array(#""s1""#.utf8)))
        #expect(try decode(#" { "type" : "unsubscribe" , "topic" : "a/b" } "#).get() == .unsubscribe(topic: "a/b", id: nil))
        let payload = #"{"n":1.50,"ok":true,"list":[1,"two",null],"s":"\u00e9\n"}"#
        #expect(try decode(#"{"type":"publish","topic":"a\/b","payload":"# + payload + #","id":7}"#).get()
            == .publish(topic: "a/b", payload: .json(Array(payload.utf8)), id: Array("7".utf8)))
    }

    @Test(
        "Malformed requests are refused with invalid_message and the id when there is one",
        arguments: [
            "not json", "[]", #"{"type":"publish","topic":"a"}"#, #"{"type":"dance","topic":"a"}"#,
            #"{"topic":"a"}"#, #"{"type":"subscribe"}"#, #"{"type":"subscribe","topic":"a","payload":1}"#,
            #"{"type":"publish","topic":"a","payload":01}"#, #"{"type":"publish","topic":"a","payload":[1,]}"#,
            #"{"type":"publish","topic":"a","payload":"\x"}"#, #"{"type":"subscribe","topic":"a","type":"publish"}"#,
            #"{"type":"subscribe","topic":"a","from":"admin"}"#, #"{"type":"subscribe","topic":"a","id":{"x":1}}"#,
            #"{"type":"subscribe","topic":"a"} trailing"#,
            "{\"type\":\"publish\",\"topic\":\"a\",\"payload\":" + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "}",
        ])
    func malformed(text: String) {
        guard case .failure(let error) = decode(text) else {
            Issue.record("accepted \(text)")
            return
        }
        #expect(error.code == "invalid_message")
    }

    @Test("The id survives a refusal so the client can correlate it")
    func refusalKeepsID() {
        guard case .failure(let error) = decode(#"{"type":"dance","topic":"a","id":"42"}"#) else {
            Issue.record("accepted")
            return
        }
        #expect(error.id == Array(#""42""#.utf8))
    }

    @Test("Encoded requests and events decode back to themselves")
    func roundTrips() throws {
        let requests: [MessagingProtocol.Request] = [
            .subscribe(topic: "a/#", id: Array(#""1""#.utf8)),
            .publish(topic: "t/\"quoted\"", payload: .json(Array(#"{"x":[1,2]}"#.utf8)), id: nil),
            .publish(topic: "t/é", payload: .binary([0, 255, 1]), id: nil),
        ]
        for request in requests {
            let (binary, bytes) = MessagingProtocol.encode(request)
            let decoded = try bytes.withUnsafeBytes { raw throws(MessagingProtocol.DecodingError) in
                binary ? try MessagingProtocol.decodeRequest(binary: raw) : try MessagingProtocol.decodeRequest(text: raw)
            }
            #expect(decoded == request)
        }
        let events: [(MessagingProtocol.Event, Bool, [UInt8])] = [
            { let (b, bytes) = MessagingProtocol.encodeMessage(topic: "a/b", from: "dev\"ice", payload: .json(Array("[1]".utf8)))
              return (.message(topic: "a/b", from: "dev\"ice", payload: .json(Array("[1]".utf8))), b, bytes) }(),
            { let (b, bytes) = MessagingProtocol.encodeMessage(topic: "a/b", from: "d", payload: .binary([9, 8]))
              return (.message(topic: "a/b", from: "d", payload: .binary([9, 8])), b, bytes) }(),
            (.ack(id: Array("5".utf8)), false, MessagingProtocol.encodeAck(id: Array("5".utf8))),
            (.error(id: nil, code: "forbidden", message: "no \"grant\""), false,
             MessagingProtocol.encodeError(id: nil, code: "forbidden", message: "no \"grant\"")),
        ]
        for (event, binary, bytes) in events {
            #expect(bytes.withUnsafeBytes { MessagingProtocol.decodeEvent(binary: binary, bytes: $0) } == event)
        }
    }

    @Test("Binary frames must carry the publish kind and a whole topic")
    func binaryEnvelope() {
        for bytes: [UInt8] in [[], [0x02, 0, 1, 65], [0x01, 0, 5, 65], [0x01, 0, 2, 0xFF, 0xFE]] {
            let result = bytes.withUnsafeBytes { raw in
                Result { () throws(MessagingProtocol.DecodingError) in try MessagingProtocol.decodeRequest(binary: raw) }
            }
            guard case .failure = result else {
                Issue.record("accepted \(bytes)")
                continue
            }
        }
    }
}

@Suite("JSON object scanner")
struct JSONObjectScannerTests {
    /// `{"k0":0,"k1":0,…}` with `count` distinct keys, and `extra` members after them.
    private func object(keys count: Int, extra: String = "") -> [UInt8] {
        var text = "{"
        for index in 0..<count { text += "\"k\(index)\":0," }
        text += extra.isEmpty ? "\"last\":0}" : extra + "}"
        return Array(text.utf8)
    }

    @Test("Duplicate keys are found in linear time: 300,000 distinct keys (3.5 MB) scan well inside the limit", .timeLimit(.minutes(1)))
    func manyDistinctKeys() throws {
        // Comparing each key with every earlier one is 4.5e10 comparisons here (minutes); a set makes it 300,000.
        let bytes = object(keys: 300_000)
        let members = try bytes.withUnsafeBytes { try JSONObjectScanner.members(of: $0) }
        #expect(members.count == 300_001)
        #expect(members.last?.key == "last")
    }

    @Test("A duplicate is refused wherever it is, at the offset of the second occurrence")
    func duplicateAtTheEnd() throws {
        let bytes = object(keys: 10_000, extra: "\"k0\":1")
        do {
            _ = try bytes.withUnsafeBytes { try JSONObjectScanner.members(of: $0) }
            Issue.record("the duplicate key was accepted")
        } catch let error as JSONObjectScanner.SyntaxError {
            #expect(error.reason == "duplicate key 'k0'")
            #expect(error.offset == bytes.count - 3)
        }
        for text in [#"{"a":1,"a":2}"#, #"{"type":"publish","type":"subscribe"}"#] {
            #expect(throws: JSONObjectScanner.SyntaxError.self) {
                try Array(text.utf8).withUnsafeBytes { try JSONObjectScanner.members(of: $0) }
            }
        }
    }
}
