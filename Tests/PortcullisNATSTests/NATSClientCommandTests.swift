import PortcullisNATS
import Testing

@Suite("Writing what the gateway sends a NATS server")
struct NATSClientCommandTests {
    static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    @Test("CONNECT carries the options and escapes its strings")
    func connect() {
        let command = NATSClientCommand.connect(
            name: "gw \"1\"\\\n", user: "u\u{1}", password: "pé", tlsRequired: true, version: "0.9.0")
        #expect(Self.text(command) == #"CONNECT {"verbose":false,"pedantic":false,"tls_required":true,"name":"gw \"1\"\\\u000a","user":"u\u0001","pass":"pé","lang":"swift","version":"0.9.0","protocol":1,"echo":false,"headers":true}"# + "\r\n")
        let anonymous = Self.text(NATSClientCommand.connect(name: "g", tlsRequired: false))
        #expect(!anonymous.contains("\"user\"") && !anonymous.contains("\"pass\""))
        #expect(anonymous.contains(#""tls_required":false"#))
    }

    @Test("SUB, UNSUB, PING and PONG")
    func subscriptions() throws {
        #expect(Self.text(try NATSClientCommand.subscribe(subject: "portcullis.a.*.>", sid: 7)) == "SUB portcullis.a.*.> 7\r\n")
        #expect(Self.text(try NATSClientCommand.subscribe(subject: "portcullis.%24crl", queueGroup: "gw", sid: UInt64.max))
            == "SUB portcullis.%24crl gw 18446744073709551615\r\n")
        #expect(Self.text(NATSClientCommand.unsubscribe(sid: 7)) == "UNSUB 7\r\n")
        #expect(Self.text(NATSClientCommand.ping) == "PING\r\n")
        #expect(Self.text(NATSClientCommand.pong) == "PONG\r\n")
    }

    @Test("Subjects and queue groups that would change the command are refused", arguments: ["", "a b", "a..b", ".a", "a.", "a\r\nPUB", "a.>.b"])
    func badSubscriptions(subject: String) {
        #expect(throws: NATSProtocolError.self) { try NATSClientCommand.subscribe(subject: subject, sid: 1) }
    }

    @Test("A queue group is one field")
    func badQueueGroup() {
        #expect(throws: NATSProtocolError.self) { try NATSClientCommand.subscribe(subject: "a", queueGroup: "q 2", sid: 1) }
        #expect(throws: NATSProtocolError.self) { try NATSClientCommand.subscribe(subject: "a", queueGroup: "", sid: 1) }
    }

    @Test("PUB without headers, HPUB with them, byte for byte")
    func publish() throws {
        #expect(Self.text(try NATSClientCommand.publish(subject: "portcullis.a", payload: Array("hi".utf8))) == "PUB portcullis.a 2\r\nhi\r\n")
        #expect(Self.text(try NATSClientCommand.publish(subject: "portcullis.a", payload: [UInt8]())) == "PUB portcullis.a 0\r\n\r\n")
        let hpub = try NATSClientCommand.publish(
            subject: "portcullis.a", headers: [NATSHeader(name: "Portcullis-Identity", value: "dev-1")], payload: Array("hi".utf8))
        #expect(Self.text(hpub) == "HPUB portcullis.a 40 42\r\nNATS/1.0\r\nPortcullis-Identity: dev-1\r\n\r\nhi\r\n")
    }

    @Test("What HPUB writes, the parser reads back as the server would deliver it")
    func publishRoundTrip() throws {
        let headers = [NATSHeader(name: "A", value: "1"), NATSHeader(name: "A", value: "two words\tand é"), NATSHeader(name: "B", value: "")]
        let payload: [UInt8] = Array(0...255)
        let hpub = try NATSClientCommand.publish(subject: "portcullis.x.y", headers: headers, payload: payload)
        // The server turns `HPUB <subject> <counts>` into `HMSG <subject> <sid> <counts>`, the bytes unchanged.
        let lineEnd = try #require(hpub.firstIndex(of: UInt8(ascii: "\n")))
        let fields = hpub[..<(lineEnd - 1)].split(separator: UInt8(ascii: " ")).map { Self.text(Array($0)) }
        try #require(fields.count == 4 && fields[0] == "HPUB")
        let delivered = Array("HMSG \(fields[1]) 9 \(fields[2]) \(fields[3])\r\n".utf8) + hpub[(lineEnd + 1)...]
        var parser = NATSServerParser()
        parser.feed(delivered)
        let message = try #require(try parser.next())
        #expect(message == .message(NATSMessage(subject: "portcullis.x.y", sid: 9, headers: headers, payload: payload)))
    }

    @Test("Publishes batch into one buffer, and a refused one leaves it as it was")
    func batching() throws {
        var buffer: [UInt8] = []
        try NATSClientCommand.appendPublish(to: &buffer, subject: "a", payload: Array("1".utf8))
        try NATSClientCommand.appendPublish(to: &buffer, subject: "b", headers: [NATSHeader(name: "K", value: "v")], payload: Array("2".utf8))
        let expected = "PUB a 1\r\n1\r\nHPUB b 18 19\r\nNATS/1.0\r\nK: v\r\n\r\n2\r\n"
        #expect(Self.text(buffer) == expected)
        let refusals: [(String, [NATSHeader])] = [
            ("a b", []), ("a.*", []), ("a.>", []), ("", []), ("a", [NATSHeader(name: "K:", value: "v")]),
            ("a", [NATSHeader(name: "", value: "v")]), ("a", [NATSHeader(name: "K K", value: "v")]),
            ("a", [NATSHeader(name: "K", value: "v\r\nX: injected")]), ("a", [NATSHeader(name: "K", value: "v\n")]),
            ("a", [NATSHeader(name: "Ké", value: "v")]),
        ]
        for (subject, headers) in refusals {
            #expect(throws: NATSProtocolError.self, "\(subject) \(headers)") {
                try NATSClientCommand.appendPublish(to: &buffer, subject: subject, headers: headers, payload: Array("x".utf8))
            }
        }
        #expect(Self.text(buffer) == expected)
    }
}
