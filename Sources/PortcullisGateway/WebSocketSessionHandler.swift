import NIOCore
import NIOWebSocket
import PortcullisAudit
import PortcullisConfig

/// An admitted WebSocket session: RFC 6455 control frames (ping/pong, the close handshake), UTF-8 validation
/// of text messages, and the route's behaviour (here `echo`). On close it audits the session's figures.
final class WebSocketSessionHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let connection: Connection
    private let route: GatewayConfiguration.Route
    private let openedAt = NIODeadline.now()
    private var messagesIn = 0
    private var messagesOut = 0
    private var bytesIn = 0
    private var bytesOut = 0
    /// The close code sent or received first; 1006 (abnormal) when the connection simply dropped.
    private var closeCode: Int?
    private var sentClose = false

    init(connection: Connection, route: GatewayConfiguration.Route) {
        self.connection = connection
        self.route = route
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = Self.unwrapInboundIn(data)
        // RFC 6455 §5.1: a server must close the connection on an unmasked client frame.
        guard frame.maskKey != nil else {
            close(context: context, code: .protocolError)
            return
        }
        switch frame.opcode {
        case .text, .binary:
            let payload = frame.unmaskedData
            messagesIn += 1
            bytesIn += payload.readableBytes
            if frame.opcode == .text, String(validating: payload.readableBytesView, as: UTF8.self) == nil {
                close(context: context, code: .dataInconsistentWithMessage)
                return
            }
            handleMessage(context: context, opcode: frame.opcode, payload: payload)
        case .ping:
            guard !sentClose else { return }
            context.writeAndFlush(
                Self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .pong:
            break
        case .connectionClose:
            var payload = frame.unmaskedData
            let received = payload.readWebSocketErrorCode()
            if closeCode == nil { closeCode = received.map { Int(UInt16(webSocketErrorCode: $0)) } ?? 1005 }
            if sentClose {
                context.close(promise: nil)
            } else {
                // Echo the peer's code back (RFC 6455 §5.5.1), then close the TCP connection.
                sentClose = true
                var reply = context.channel.allocator.buffer(capacity: 2)
                if let received { reply.write(webSocketErrorCode: received) }
                context.writeAndFlush(Self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: reply)))
                    .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            }
        default:
            close(context: context, code: .protocolError)
        }
    }

    private func handleMessage(context: ChannelHandlerContext, opcode: WebSocketOpcode, payload: ByteBuffer) {
        switch route.kind {
        case .echo:
            guard !sentClose else { return }
            messagesOut += 1
            bytesOut += payload.readableBytes
            context.writeAndFlush(Self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: opcode, data: payload)), promise: nil)
        }
    }

    /// Starts the close handshake with `code`; the connection closes once the peer answers or a few
    /// seconds pass.
    func close(context: ChannelHandlerContext, code: WebSocketErrorCode) {
        guard !sentClose else { return }
        sentClose = true
        if closeCode == nil { closeCode = Int(UInt16(webSocketErrorCode: code)) }
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: code)
        context.writeAndFlush(Self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)),
                              promise: nil)
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(5)) {
            loopBound.value.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // One place maps protocol errors to close codes (RFC 6455 §7.4.1).
        switch error {
        case NIOWebSocketError.invalidFrameLength:
            close(context: context, code: .messageTooLarge)
        case is NIOWebSocketError:
            close(context: context, code: .protocolError)
        case NIOWebSocketFrameAggregator.Error.accumulatedFrameSizeIsTooLarge:
            close(context: context, code: .messageTooLarge)
        case is NIOWebSocketFrameAggregator.Error:
            close(context: context, code: .protocolError)
        default:
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        var record = connection.auditRecord(event: "session_closed")
        record.closeCode = closeCode ?? 1006
        record.durationMs = Int((NIODeadline.now() - openedAt).nanoseconds / 1_000_000)
        record.messagesIn = messagesIn
        record.messagesOut = messagesOut
        record.bytesIn = bytesIn
        record.bytesOut = bytesOut
        connection.gateway.audit(record)
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension WebSocketSessionHandler: Sendable {}
