import NIOCore
import NIOWebSocket
import PortcullisClient
import Testing

/// RFC 6455 behaviour of an admitted session: control frames, limits and protocol errors end in the right
/// close code, and the session's end is audited with it.
@Suite("WebSocket session protocol")
struct SessionProtocolTests {
    static func openSession(_ gw: TestGateway) async throws -> WebSocketConnection {
        try #require(try await gw.connect(gw.device).connection)
    }

    /// The close code the gateway sent after `frames`, and the one it audited.
    static func closeCode(after frames: [WebSocketFrame]) async throws -> (sent: Int?, audited: Int?) {
        var result: (Int?, Int?) = (nil, nil)
        try await withGateway { gw in
            let connection = try await openSession(gw)
            for frame in frames { try await connection.send(frame: frame) }
            for await message in connection.messages {
                if case .close(let code, _) = message {
                    result.0 = code
                    break
                }
            }
            let closed = try #require(await gw.auditRecord { $0.event == "session_closed" })
            result.1 = closed.closeCode
        }
        return result
    }

    @Test("Pings are answered with the same payload")
    func pingPong() async throws {
        try await withGateway { gw in
            let connection = try await Self.openSession(gw)
            try await connection.send(frame: WebSocketFrame(fin: true, opcode: .ping, maskKey: .random(), data: ByteBuffer(string: "p")))
            #expect(await connection.receive() == .pong([0x70]))
            try await connection.send(text: "after ping")
            #expect(await connection.receive() == .text("after ping"))
            await connection.close()
        }
    }

    @Test("A message over max_message_bytes closes with 1009")
    func tooLarge() async throws {
        let big = ByteBuffer(repeating: 0x41, count: 64 * 1024 + 1)
        let codes = try await Self.closeCode(after: [WebSocketFrame(fin: true, opcode: .binary, maskKey: .random(), data: big)])
        #expect(codes.sent == 1009)
        #expect(codes.audited == 1009)
    }

    @Test("Fragments adding up to more than max_message_bytes close with 1009")
    func fragmentsTooLarge() async throws {
        let half = ByteBuffer(repeating: 0x41, count: 40 * 1024)
        let codes = try await Self.closeCode(after: [
            WebSocketFrame(fin: false, opcode: .binary, maskKey: .random(), data: half),
            WebSocketFrame(fin: true, opcode: .continuation, maskKey: .random(), data: half),
        ])
        #expect(codes.sent == 1009)
    }

    @Test("Invalid UTF-8 in a text message closes with 1007")
    func invalidUTF8() async throws {
        let codes = try await Self.closeCode(after: [
            WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(bytes: [0xC3, 0x28]))
        ])
        #expect(codes.sent == 1007)
        #expect(codes.audited == 1007)
    }

    @Test("An unmasked client frame closes with 1002")
    func unmasked() async throws {
        let codes = try await Self.closeCode(after: [
            WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: "unmasked"))
        ])
        #expect(codes.sent == 1002)
    }

    @Test("A client close is answered with the same code and audited")
    func clientClose() async throws {
        try await withGateway { gw in
            let connection = try await Self.openSession(gw)
            await connection.close(code: 4000)
            #expect(!connection.isActive)
            let closed = try #require(await gw.auditRecord { $0.event == "session_closed" })
            #expect(closed.closeCode == 4000)
        }
    }
}
