import NIOCore
import NIOWebSocket
import Testing

@testable import PortcullisGateway

/// RFC 6455 for the server's side, as a pure state machine: frames in, actions out, no sockets.
@Suite("WebSocket protocol state machine")
struct WebSocketProtocolStateMachineTests {
    typealias Machine = WebSocketProtocolStateMachine

    /// The machine behind a reference, so that `#expect` can call its mutating methods.
    final class Driver {
        var machine: Machine
        init(_ machine: Machine) { self.machine = machine }
        func received(_ frame: WebSocketFrame) -> Machine.Action { machine.received(frame) }
        func decodingFailed(_ error: any Error) -> Machine.Action { machine.decodingFailed(error) }
        func startClose(code: WebSocketErrorCode, reason: String?) -> Bool { machine.startClose(code: code, reason: reason) }
        func heartbeat(now: NIODeadline, timeout: TimeAmount) -> Machine.Heartbeat { machine.heartbeat(now: now, timeout: timeout) }
        var isClosing: Bool { machine.isClosing }
        var closeCode: UInt16? { machine.closeCode }
        var closeReason: String? { machine.closeReason }
    }

    static func machine(maxMessageBytes: Int = 1024) -> Driver {
        Driver(Machine(limits: .init(maxMessageBytes: maxMessageBytes)))
    }

    /// A masked client frame.
    static func frame(
        _ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true, rsv1: Bool = false, masked: Bool = true
    ) -> WebSocketFrame {
        var data = ByteBuffer(bytes: bytes)
        let key: WebSocketMaskingKey? = masked ? .random() : nil
        if let key { data.webSocketMask(key) }
        return WebSocketFrame(fin: fin, rsv1: rsv1, opcode: opcode, maskKey: key, data: data)
    }

    static func text(_ string: String, fin: Bool = true) -> WebSocketFrame { frame(.text, Array(string.utf8), fin: fin) }

    static func close(code: UInt16?, reason: [UInt8] = []) -> WebSocketFrame {
        var bytes: [UInt8] = []
        if let code { bytes = [UInt8(code >> 8), UInt8(code & 0xFF)] }
        return frame(.connectionClose, bytes + reason)
    }

    /// The close code of a `.fail` or `.failAndDrop` action, nil for any other action.
    static func failedWith(_ action: Machine.Action) -> UInt16? {
        switch action {
        case .fail(let failure), .failAndDrop(let failure): UInt16(webSocketErrorCode: failure.code)
        default: nil
        }
    }

    static func delivered(_ action: Machine.Action) -> (binary: Bool, bytes: [UInt8])? {
        if case .deliver(let message) = action { return (message.binary, Array(message.payload.readableBytesView)) }
        return nil
    }

    @Test("Single-frame text and binary messages are delivered unmasked")
    func singleFrames() throws {
        let machine = Self.machine()
        let text = try #require(Self.delivered(machine.received(Self.text("héllo"))))
        #expect(!text.binary && text.bytes == Array("héllo".utf8))
        let binary = try #require(Self.delivered(machine.received(Self.frame(.binary, [0, 1, 2, 255]))))
        #expect(binary.binary && binary.bytes == [0, 1, 2, 255])
    }

    @Test("A single-frame message is handed on still masked; its bytes unmask exactly, at any offset")
    func maskedDelivery() throws {
        let bytes = (0..<1500).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let action = Self.machine(maxMessageBytes: 4096).received(Self.frame(.binary, bytes))
        guard case .deliver(let message) = action else {
            Issue.record("not delivered: \(action)")
            return
        }
        #expect(message.maskKey != nil && message.count == bytes.count)
        #expect(Array(message.payload.readableBytesView) == bytes)
        for offset in [0, 1, 2, 3, 5, 1499] {
            var buffer = ByteBuffer(bytes: [9, 9])
            buffer.moveReaderIndex(forwardBy: 1)
            message.writeUnmasked(from: offset, into: &buffer)
            #expect(Array(buffer.readableBytesView) == [9] + bytes[offset...], "offset \(offset)")
            #expect(message.withUnmaskedBytes(offset..<min(offset + 9, bytes.count)) { Array($0) } == Array(bytes[offset..<min(offset + 9, bytes.count)]))
        }
    }

    @Test("A masked text frame is validated across the 512-byte chunks it is unmasked in")
    func maskedTextValidation() {
        // A 3-byte character straddling the first chunk boundary, then one cut short at the end.
        let valid = Array(repeating: UInt8(ascii: "a"), count: 511) + Array("€".utf8) + Array(repeating: UInt8(ascii: "b"), count: 600)
        #expect(Self.delivered(Self.machine(maxMessageBytes: 4096).received(Self.frame(.text, valid)))?.bytes == valid)
        let truncated = Array(valid.dropLast(601))
        #expect(Self.failedWith(Self.machine(maxMessageBytes: 4096).received(Self.frame(.text, truncated))) == 1007)
        var broken = valid
        broken[1000] = 0xFF
        #expect(Self.failedWith(Self.machine(maxMessageBytes: 4096).received(Self.frame(.text, broken))) == 1007)
    }

    @Test("Fragments are reassembled, with pings between them answered at once")
    func fragments() throws {
        let machine = Self.machine()
        #expect(machine.received(Self.text("Hel", fin: false)) == .none)
        #expect(machine.received(Self.frame(.ping, Array("beat".utf8))) == .answerPing(ByteBuffer(string: "beat")))
        #expect(machine.received(Self.frame(.continuation, Array("lo, ".utf8), fin: false)) == .none)
        let whole = try #require(Self.delivered(machine.received(Self.frame(.continuation, Array("world".utf8)))))
        #expect(!whole.binary && whole.bytes == Array("Hello, world".utf8))
        // Empty fragments are fragments too.
        #expect(machine.received(Self.frame(.binary, [], fin: false)) == .none)
        #expect(machine.received(Self.frame(.continuation, [], fin: false)) == .none)
        let empty = try #require(Self.delivered(machine.received(Self.frame(.continuation, []))))
        #expect(empty.binary && empty.bytes.isEmpty)
    }

    @Test("A message of max_message_bytes arrives whole in 1-byte fragments; one byte more closes with 1009")
    func oneByteFragments() throws {
        let size = 4096
        let machine = Self.machine(maxMessageBytes: size)
        #expect(machine.received(Self.frame(.binary, [0], fin: false)) == .none)
        for index in 1..<(size - 1) {
            #expect(machine.received(Self.frame(.continuation, [UInt8(index & 0xFF)], fin: false)) == .none)
        }
        let whole = try #require(Self.delivered(machine.received(Self.frame(.continuation, [7]))))
        #expect(whole.bytes.count == size && whole.bytes[1] == 1 && whole.bytes.last == 7)

        let over = Self.machine(maxMessageBytes: 2)
        #expect(over.received(Self.frame(.binary, [1, 2], fin: false)) == .none)
        #expect(Self.failedWith(over.received(Self.frame(.continuation, [3]))) == 1009)
        #expect(over.closeCode == 1009 && over.closeReason == "message_too_large")
    }

    @Test("Invalid UTF-8 fails with 1007 at the fragment that makes it invalid, not at the message's end")
    func utf8FailsFast() {
        let machine = Self.machine()
        #expect(machine.received(Self.text("valid ", fin: false)) == .none)
        // 0xED 0xA0 0x80 is a UTF-16 surrogate: invalid in UTF-8, even though more fragments were to follow.
        #expect(Self.failedWith(machine.received(Self.frame(.continuation, [0xCE, 0xBA, 0xED, 0xA0, 0x80], fin: false))) == 1007)
        // Nothing after the failure is delivered.
        #expect(machine.received(Self.frame(.continuation, Array("more".utf8))) == .none)
    }

    @Test("A character split across fragments is valid; a message ending inside one is not")
    func utf8AcrossFragments() throws {
        let euro: [UInt8] = [0xE2, 0x82, 0xAC]
        let machine = Self.machine()
        #expect(machine.received(Self.frame(.text, [euro[0]], fin: false)) == .none)
        #expect(machine.received(Self.frame(.continuation, [euro[1]], fin: false)) == .none)
        #expect(Self.delivered(machine.received(Self.frame(.continuation, [euro[2]])))?.bytes == euro)

        let truncated = Self.machine()
        #expect(truncated.received(Self.frame(.text, [0x41, euro[0]], fin: false)) == .none)
        #expect(Self.failedWith(truncated.received(Self.frame(.continuation, [euro[1]]))) == 1007)

        let single = Self.machine()
        #expect(Self.failedWith(single.received(Self.frame(.text, [0xC3, 0x28]))) == 1007)
    }

    @Test("Protocol errors close with 1002", arguments: [
        ("unmasked", [frame(.text, Array("x".utf8), masked: false)]),
        ("RSV1 without an extension", [frame(.text, Array("x".utf8), rsv1: true)]),
        ("reserved opcode 3", [frame(WebSocketOpcode(encodedWebSocketOpcode: 3)!, [])]),
        ("reserved control opcode 11", [frame(WebSocketOpcode(encodedWebSocketOpcode: 11)!, [])]),
        ("continuation without a start", [frame(.continuation, Array("x".utf8))]),
        ("a new message inside a fragmented one", [text("a", fin: false), text("b")]),
        ("a close payload of one byte", [frame(.connectionClose, [0x03])]),
    ] as [(String, [WebSocketFrame])])
    func protocolErrors(name: String, frames: [WebSocketFrame]) {
        let machine = Self.machine()
        var actions = frames.map { machine.received($0) }
        let last = actions.removeLast()
        #expect(actions.allSatisfy { $0 == .none }, "\(name)")
        #expect(Self.failedWith(last) == 1002, "\(name)")
        #expect(machine.isClosing)
    }

    @Test("The decoder's refusals map to close codes in one place")
    func decoderErrors() {
        let tooLarge = Self.machine()
        #expect(Self.failedWith(tooLarge.decodingFailed(NIOWebSocketError.invalidFrameLength)) == 1009)
        let fragmentedControl = Self.machine()
        #expect(Self.failedWith(fragmentedControl.decodingFailed(NIOWebSocketError.fragmentedControlFrame)) == 1002)
        let longControl = Self.machine()
        #expect(Self.failedWith(longControl.decodingFailed(NIOWebSocketError.multiByteControlFrameLength)) == 1002)
    }

    @Test("A valid close is answered with the peer's code", arguments: [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999] as [UInt16])
    func validClose(code: UInt16) {
        let machine = Self.machine()
        #expect(machine.received(Self.close(code: code, reason: Array("bye ✓".utf8))) == .answerClose(code: WebSocketErrorCode(codeNumber: Int(code))))
        #expect(machine.closeCode == code)
        // Nothing more is read after the peer's close.
        #expect(machine.received(Self.text("late")) == .none)
    }

    @Test("A close without a code is answered without one, and audited as 1005")
    func closeWithoutCode() {
        let machine = Self.machine()
        #expect(machine.received(Self.close(code: nil)) == .answerClose(code: nil))
        #expect(machine.closeCode == 1005)
    }

    @Test("A close code a peer may not send is a protocol error", arguments: [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] as [UInt16])
    func invalidCloseCode(code: UInt16) {
        let machine = Self.machine()
        #expect(Self.failedWith(machine.received(Self.close(code: code))) == 1002)
    }

    @Test("A close reason that is not UTF-8 closes with 1007, and the connection is dropped once that is written")
    func invalidCloseReason() {
        let machine = Self.machine()
        #expect(machine.received(Self.close(code: 1000, reason: [0xCE, 0xBA, 0xED, 0xA0, 0x80])) == .failAndDrop(.invalidUTF8))
        #expect(machine.closeCode == 1007)
    }

    @Test("After our close, data is ignored and the peer's close completes the handshake")
    func ourCloseFirst() {
        let machine = Self.machine()
        #expect(machine.startClose(code: .policyViolation, reason: "rate_limited"))
        #expect(!machine.startClose(code: .goingAway, reason: "shutdown"))
        #expect(machine.received(Self.text("in flight")) == .none)
        #expect(machine.received(Self.frame(.ping, [])) == .none)
        #expect(machine.received(Self.close(code: 1000)) == .closeHandshakeCompleted)
        #expect(machine.closeCode == 1008 && machine.closeReason == "rate_limited")
    }

    @Test("Only a pong carrying the outstanding ping's payload answers it")
    func heartbeat() throws {
        let machine = Self.machine()
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        let timeout = TimeAmount.seconds(20)
        guard case .ping = machine.heartbeat(now: start, timeout: timeout) else {
            Issue.record("expected a ping")
            return
        }
        // Unsolicited pongs (any payload but the ping's) do not count as an answer.
        #expect(machine.received(Self.frame(.pong, [])) == .none)
        #expect(machine.received(Self.frame(.pong, Array("portcullis".utf8))) == .none)
        #expect(machine.heartbeat(now: start + .seconds(5), timeout: timeout) == .none)
        #expect(machine.heartbeat(now: start + .seconds(20), timeout: timeout) == .timedOut)

        let answered = Self.machine()
        guard case .ping(let first) = answered.heartbeat(now: start, timeout: timeout) else { return }
        var bytes = ByteBuffer()
        bytes.writeInteger(first)
        #expect(answered.received(Self.frame(.pong, Array(bytes.readableBytesView))) == .none)
        guard case .ping(let second) = answered.heartbeat(now: start + .seconds(20), timeout: timeout) else {
            Issue.record("an answered ping is followed by the next one")
            return
        }
        #expect(second != first)
    }
}

@Suite("Incremental UTF-8 validation")
struct UTF8ValidatorTests {
    static func validate(_ bytes: [UInt8], splitAt split: Int) -> Bool {
        var validator = UTF8Validator()
        let first = bytes.withUnsafeBytes { validator.consume(UnsafeRawBufferPointer(rebasing: $0[..<split])) }
        let second = bytes.withUnsafeBytes { validator.consume(UnsafeRawBufferPointer(rebasing: $0[split...])) }
        return first && second && validator.isAtCharacterBoundary
    }

    @Test("Agrees with the standard library on random and edge-case byte strings, however they are split")
    func agreesWithStandardLibrary() {
        var generator = SystemRandomNumberGenerator()
        var samples: [[UInt8]] = [
            [], Array("plain ASCII, longer than eight bytes".utf8), Array("κόσμε €𝄞".utf8),
            [0xC0, 0x80], [0xE0, 0x80, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80],
            [0xF0, 0x9F, 0x98], [0x80], [0xEF, 0xBF, 0xBF], [0xF4, 0x8F, 0xBF, 0xBF],
        ]
        for _ in 0..<2000 {
            let length = Int.random(in: 0...24, using: &generator)
            // Bias towards bytes that make multi-byte sequences.
            samples.append((0..<length).map { _ in
                Bool.random(using: &generator) ? UInt8.random(in: 0x80...0xF5, using: &generator) : UInt8.random(in: 0...0x7F, using: &generator)
            })
        }
        for bytes in samples {
            let expected = String(validating: bytes, as: UTF8.self) != nil
            for split in 0...bytes.count {
                #expect(Self.validate(bytes, splitAt: split) == expected, "\(bytes) split at \(split)")
            }
        }
    }
}
