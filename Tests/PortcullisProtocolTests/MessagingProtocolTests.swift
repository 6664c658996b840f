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
