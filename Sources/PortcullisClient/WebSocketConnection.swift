import Crypto
import Foundation
import NIOCore
import NIOWebSocket

/// A message received on a WebSocket connection.
public enum WebSocketMessage: Sendable, Equatable {
    case text(String)
    case binary([UInt8])
    /// The answer to a ping this client sent, with its payload (for round-trip measurements).
    case pong([UInt8])
    /// The peer's close frame: its status code (nil when it sent none) and reason.
    case close(code: Int?, reason: String)
}

/// An upgraded WebSocket connection to the gateway. Frames the client sends are masked (RFC 6455 §5.3);
/// pings are answered automatically.
public final class WebSocketConnection: Sendable {
    let channel: any Channel
    /// Messages in arrival order; ends when the connection closes. Consume it from one task.
    public let messages: AsyncStream<WebSocketMessage>
    /// The subprotocol the server chose (`Sec-WebSocket-Protocol` of its 101 answer), if any.
    public let subprotocol: String?

    init(channel: any Channel, messages: AsyncStream<WebSocketMessage>, subprotocol: String? = nil) {
        self.channel = channel
        self.messages = messages
        self.subprotocol = subprotocol
    }

    public func send(text: String) async throws {
        try await send(frame: WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: text)))
    }

    public func send(binary: [UInt8]) async throws {
        try await send(frame: WebSocketFrame(fin: true, opcode: .binary, maskKey: .random(), data: ByteBuffer(bytes: binary)))
    }

    /// Queues a masked data frame without waiting: frames queued this way leave in call order (a burst that a
    /// loaded machine cannot spread out).
    /// - Returns: a future that succeeds once the frame has been written to the socket (then so have all frames
    ///   queued before it), and fails if the connection closes first.
    @discardableResult
    public func enqueue(binary: Bool, data: ByteBuffer) -> EventLoopFuture<Void> {
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: binary ? .binary : .text, maskKey: .random(), data: data))
    }

    /// False while more is waiting to be written than the channel's high-water mark (64 KiB by default): the
    /// peer or the network is not taking what is sent.
    public var isWritable: Bool { channel.isWritable }

    /// Sends a frame exactly as given (tests use it for unmasked or malformed frames).
    public func send(frame: WebSocketFrame) async throws {
        try await channel.writeAndFlush(frame).get()
    }

    /// The next message, or nil once the connection has closed.
    public func receive() async -> WebSocketMessage? {
        var iterator = messages.makeAsyncIterator()
        return await iterator.next()
    }

    /// Starts the close handshake and waits (up to `timeout`) for the connection to close.
    public func close(code: UInt16 = 1000, timeout: TimeAmount = .seconds(5)) async {
        var data = channel.allocator.buffer(capacity: 2)
        data.writeInteger(code)
        try? await channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: data)).get()
        let channel = self.channel
        let deadline = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        try? await channel.closeFuture.get()
        deadline.cancel()
    }

    /// Stops (or resumes) reading from the socket: a client that falls behind, as far as the gateway can tell.
    public func setReading(_ reading: Bool) async throws {
        try await channel.setOption(ChannelOptions.autoRead, value: reading).get()
    }

    /// Whether the TCP connection is still open.
    public var isActive: Bool { channel.isActive }

    /// Resolves when the connection has closed.
    public func waitUntilClosed() async {
        try? await channel.closeFuture.get()
    }
}

/// Reassembles fragmented messages, answers pings, and completes the close handshake the peer starts.
final class InboundMessageHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let continuation: AsyncStream<WebSocketMessage>.Continuation
    private var fragments: ByteBuffer?
    private var fragmentOpcode: WebSocketOpcode = .text
    private var closing = false

    /// False only to play a peer that ignores heartbeats (tests of the gateway's ping timeout).
    private let answerPings: Bool

    init(continuation: AsyncStream<WebSocketMessage>.Continuation, answerPings: Bool = true) {
        self.continuation = continuation
        self.answerPings = answerPings
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = Self.unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .binary:
            if frame.fin {
                deliver(opcode: frame.opcode, payload: frame.unmaskedData)
            } else {
                fragmentOpcode = frame.opcode
                fragments = frame.unmaskedData
            }
        case .continuation:
            var part = frame.unmaskedData
            fragments?.writeBuffer(&part)
            if frame.fin, let whole = fragments {
                fragments = nil
                deliver(opcode: fragmentOpcode, payload: whole)
            }
        case .ping:
            guard answerPings else { return }
            context.writeAndFlush(
                Self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData)),
                promise: nil)
        case .pong:
            continuation.yield(.pong(Array(frame.unmaskedData.readableBytesView)))
        case .connectionClose:
            var payload = frame.unmaskedData
            let code = payload.readInteger(as: UInt16.self).map(Int.init)
            let reason = payload.readString(length: payload.readableBytes) ?? ""
            continuation.yield(.close(code: code, reason: reason))
            if !closing {
                closing = true
                var reply = context.channel.allocator.buffer(capacity: 2)
                if let code { reply.writeInteger(UInt16(code)) }
                context.writeAndFlush(
                    Self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: reply)),
                    promise: nil)
            }
            context.close(promise: nil)
        default:
            break
        }
    }


    private func deliver(opcode: WebSocketOpcode, payload: ByteBuffer) {
        if opcode == .text {
            continuation.yield(.text(String(buffer: payload)))
        } else {
            continuation.yield(.binary(Array(payload.readableBytesView)))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        continuation.finish()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension InboundMessageHandler: Sendable {}

/// RFC 6455 §4.2.2: the `Sec-WebSocket-Accept` answer to a key.
enum WebSocketAccept {
    static func value(forKey key: String) -> String {
        let digest = Insecure.SHA1.hash(data: Data((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))
        return Data(digest).base64EncodedString()
    }
}
