import NIOCore
import NIOWebSocket
import Testing

@testable import PortcullisGateway

/// permessage-deflate (RFC 7692): the negotiation as a pure function, and messages through the state machine.
@Suite("permessage-deflate")
struct PerMessageDeflateTests {
    @Test(
        "Offers are accepted, narrowed or declined as RFC 7692 §7 says",
        arguments: [
            // Plain offers: the gateway asks for no context takeover both ways.
            (["permessage-deflate"], "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            // What browsers and Python's websockets send.
            (["permessage-deflate; client_max_window_bits"],
             "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            // A window the client asks of the gateway is honoured (8 included), and said back.
            (["permessage-deflate; server_max_window_bits=10"],
             "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"),
            (["permessage-deflate; server_no_context_takeover; server_max_window_bits=\"8\""],
             "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8"),
            // An offer the gateway cannot accept is skipped for the next one, in the same header or another.
            (["permessage-deflate; server_max_window_bits=7, permessage-deflate; client_max_window_bits=15"],
             "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            (["x-webkit-deflate-frame", "PerMessage-Deflate"],
             "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            // Declined: unknown or repeated parameters, invalid values, another extension only.
            (["permessage-deflate; foo"], nil),
            (["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], nil),
            (["permessage-deflate; server_max_window_bits=16"], nil),
            (["permessage-deflate; server_max_window_bits=010"], nil),
            (["permessage-deflate; server_max_window_bits"], nil),
            (["permessage-deflate; client_no_context_takeover=1"], nil),
            (["permessage-deflate; client_max_window_bits=abc"], nil),
            (["x-webkit-deflate-frame"], nil),
            ([], nil),
        ] as [([String], String?)])
    func negotiation(offers: [String], answer: String?) {
        #expect(PerMessageDeflate.negotiate(offers: offers, contextTakeover: false)?.responseHeader == answer)
    }

    @Test("With context takeover configured, the gateway keeps contexts unless the client asks it not to")
    func contextTakeover() throws {
        let kept = try #require(PerMessageDeflate.negotiate(offers: ["permessage-deflate"], contextTakeover: true))
        #expect(kept.serverContextTakeover && kept.clientContextTakeover)
        #expect(kept.responseHeader == "permessage-deflate")
        let asked = try #require(PerMessageDeflate.negotiate(
            offers: ["permessage-deflate; server_no_context_takeover"], contextTakeover: true))
        #expect(!asked.serverContextTakeover && asked.clientContextTakeover)
        #expect(asked.responseHeader == "permessage-deflate; server_no_context_takeover")
    }

    static let text = String(repeating: "portcullis gateway telemetry ", count: 200)

    @Test("Messages round-trip through deflate and inflate at every window the client may ask for", arguments: 8...15)
    func roundTrip(windowBits: Int) throws {
        let agreement = try #require(PerMessageDeflate.negotiate(
            offers: ["permessage-deflate; server_max_window_bits=\(windowBits)"], contextTakeover: false))
        let deflater = MessageDeflater(agreement: agreement)
        for message in [Self.text, Self.text + "second, after a reset", String(repeating: "x", count: 64)] {
            let compressed = try #require(deflater.compress(ByteBuffer(string: message), allocator: .init()))
            #expect(compressed.readableBytes < message.utf8.count)
            let inflated = try deflater.inflate(compressed, maxBytes: 1 << 20, allocator: .init())
            #expect(String(buffer: inflated) == message)
        }
        // Short messages are not worth compressing.
        #expect(deflater.compress(ByteBuffer(string: "ack"), allocator: .init()) == nil)
    }

    @Test("A message that inflates past max_message_bytes is refused without being inflated whole")
    func inflationBomb() throws {
        let agreement = try #require(PerMessageDeflate.negotiate(offers: ["permessage-deflate"], contextTakeover: false))
        let deflater = MessageDeflater(agreement: agreement)
        let zeros = ByteBuffer(repeating: 0, count: 16 << 20)
        let bomb = try #require(deflater.compress(zeros, allocator: .init()))
        #expect(bomb.readableBytes < 64 * 1024)
        #expect(throws: MessageDeflater.InflateError.tooLarge) {
            try deflater.inflate(bomb, maxBytes: 1 << 20, allocator: .init())
        }
        #expect(throws: MessageDeflater.InflateError.corrupt) {
            try deflater.inflate(ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF, 0x00]), maxBytes: 1 << 20, allocator: .init())
        }
        // The shared streams were reset: the next message inflates as if nothing happened.
        let fine = try #require(deflater.compress(ByteBuffer(string: Self.text), allocator: .init()))
        #expect(String(buffer: try deflater.inflate(fine, maxBytes: 1 << 20, allocator: .init())) == Self.text)
    }

    static func frame(_ opcode: WebSocketOpcode, _ data: ByteBuffer, fin: Bool = true, rsv1: Bool = false) -> WebSocketFrame {
        var masked = data
        let key = WebSocketMaskingKey.random()
        masked.webSocketMask(key)
        return WebSocketFrame(fin: fin, rsv1: rsv1, opcode: opcode, maskKey: key, data: masked)
    }

    @Test("The state machine inflates compressed messages, whole or in fragments, and refuses RSV1 where it does not belong")
    func compressedFrames() throws {
        let agreement = try #require(PerMessageDeflate.negotiate(offers: ["permessage-deflate"], contextTakeover: false))
        let client = MessageDeflater(agreement: agreement)
        let compressed = try #require(client.compress(ByteBuffer(string: Self.text), allocator: .init()))
        let limits = WebSocketProtocolStateMachine.Limits(maxMessageBytes: 1 << 20)
        let driver = WebSocketProtocolStateMachineTests.Driver(
            WebSocketProtocolStateMachine(limits: limits, deflater: MessageDeflater(agreement: agreement)))
        #expect(driver.received(Self.frame(.text, compressed, rsv1: true)) == .deliver(binary: false, payload: ByteBuffer(string: Self.text)))
        // Fragmented: RSV1 on the first frame only.
        let half = compressed.readableBytes / 2
        #expect(driver.received(Self.frame(.text, compressed.getSlice(at: 0, length: half)!, fin: false, rsv1: true)) == .none)
        #expect(driver.received(Self.frame(.continuation, compressed.getSlice(at: half, length: compressed.readableBytes - half)!))
            == .deliver(binary: false, payload: ByteBuffer(string: Self.text)))
        // Uncompressed messages still pass.
        #expect(driver.received(Self.frame(.binary, ByteBuffer(bytes: [1, 2]))) == .deliver(binary: true, payload: ByteBuffer(bytes: [1, 2])))
        // RSV1 on a continuation is a protocol error.
        #expect(driver.received(Self.frame(.text, compressed, fin: false, rsv1: true)) == .none)
        #expect(WebSocketProtocolStateMachineTests.failedWith(driver.received(Self.frame(.continuation, ByteBuffer(), rsv1: true))) == 1002)

        // On a control frame, too.
        let other = WebSocketProtocolStateMachineTests.Driver(
            WebSocketProtocolStateMachine(limits: limits, deflater: MessageDeflater(agreement: agreement)))
        #expect(WebSocketProtocolStateMachineTests.failedWith(other.received(Self.frame(.ping, ByteBuffer(), rsv1: true))) == 1002)

        // A bomb closes with 1009.
        let small = WebSocketProtocolStateMachineTests.Driver(WebSocketProtocolStateMachine(
            limits: .init(maxMessageBytes: 4096), deflater: MessageDeflater(agreement: agreement)))
        let bomb = try #require(client.compress(ByteBuffer(repeating: 0x41, count: 1 << 20), allocator: .init()))
        #expect(WebSocketProtocolStateMachineTests.failedWith(small.received(Self.frame(.binary, bomb, rsv1: true))) == 1009)
    }
}
