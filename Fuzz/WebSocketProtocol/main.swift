import FuzzDriver
import FuzzSupport
import Glibc
import NIOCore
import NIOEmbedded
import NIOWebSocket

// The session's WebSocket protocol layer as the gateway runs it, compiled from the gateway's own files (the
// symbolic links next to this one; the layer lives in the NIO target, where a fuzz build cannot instrument
// it alone): the client's bytes through NIO's frame decoder into the hand-written state machine (fragments,
// control frames, the close handshake, UTF-8 validation as fragments arrive, permessage-deflate inflation
// bounded by the message limit), and the permessage-deflate offer parser.
//
// Input: a first line (up to `\n`, at most 256 bytes) is a `Sec-WebSocket-Extensions` offer; the rest is what
// the client sends after the upgrade. Any input may fail the connection; none may crash, trap or hang, and
// whatever is delivered must be a message the layer promises: whole, within the limit, text only as valid
// UTF-8, nothing after the close handshake started.

/// Small, so that the limit and fragmented messages over it are within the fuzzer's reach.
let maxMessageBytes = 4096

func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: count))
    let newline = bytes.prefix(256).firstIndex(of: UInt8(ascii: "\n"))
    let offer = newline.map { String(decoding: bytes[..<$0], as: UTF8.self) }
    let wire = newline.map { Array(bytes[($0 + 1)...]) } ?? bytes

    checkValidator(wire)

    let agreement = offer.flatMap { PerMessageDeflate.negotiate(offers: [$0], contextTakeover: wire.first.map { $0 & 1 == 1 } ?? false) }
    if let agreement {
        require(agreement.serverMaxWindowBits >= 8 && agreement.serverMaxWindowBits <= 15, "window bits \(agreement.serverMaxWindowBits)")
        require(agreement.responseHeader.hasPrefix("permessage-deflate"), "answer \(agreement.responseHeader)")
    }
    var machine = WebSocketProtocolStateMachine(
        limits: .init(maxMessageBytes: maxMessageBytes), deflater: agreement.map(MessageDeflater.init(agreement:)))

    let channel = EmbeddedChannel()
    defer { _ = try? channel.finish() }
    try! channel.pipeline.syncOperations.addHandler(
        ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: maxMessageBytes)))
    var ended = false
    func apply(_ action: WebSocketProtocolStateMachine.Action) {
        switch action {
        case .none, .answerPing:
            break
        case .deliver(let message):
            require(!ended, "a message delivered after the connection was failed or closed")
            require(!machine.isClosing, "a message delivered while closing")
            let payload = message.payload
            require(payload.readableBytes <= maxMessageBytes, "a message of \(payload.readableBytes) bytes")
            if !message.binary {
                require(String(validating: payload.readableBytesView, as: UTF8.self) != nil, "invalid UTF-8 delivered as text")
            }
        case .fail, .failAndDrop, .answerClose, .closeHandshakeCompleted:
            ended = true
        }
    }
    do {
        try channel.writeInbound(ByteBuffer(bytes: wire))
    } catch {
        apply(machine.decodingFailed(error))
    }
    while let frame = try? channel.readInbound(as: WebSocketFrame.self) {
        apply(machine.received(frame))
    }
    return 0
}

/// The incremental validator agrees with the standard library on the whole input, split where its first byte
/// says.
func checkValidator(_ bytes: [UInt8]) {
    let split = bytes.isEmpty ? 0 : Int(bytes[0]) % (bytes.count + 1)
    var validator = UTF8Validator()
    let valid = bytes.withUnsafeBytes { all in
        validator.consume(UnsafeRawBufferPointer(rebasing: all[..<split]))
            && validator.consume(UnsafeRawBufferPointer(rebasing: all[split...]))
            && validator.isAtCharacterBoundary
    }
    require(valid == (String(validating: bytes, as: UTF8.self) != nil), "the validator disagrees with the standard library")
}

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
