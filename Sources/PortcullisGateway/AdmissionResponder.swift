import NIOCore
import NIOHTTP1
import NIOWebSocket
import PortcullisAdmission
import PortcullisAudit

/// The last HTTP handler: receives every request the WebSocket upgrader did not take, answers it with the
/// refusal admission decides (status and a short plain-text reason, `Connection: close`), audits the full
/// reason, and closes. A request the HTTP parser cannot read is answered here too: 431 for a head over
/// `max_header_bytes`, 400 for the rest (NIO's own error handler is not installed: it answers 400 to both).
/// Nothing internal reaches the client.
final class AdmissionResponder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let connection: Connection
    private var responded = false

    init(connection: Connection) {
        self.connection = connection
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let head) = Self.unwrapInboundIn(data), !responded else { return }
        responded = true
        let event = AdmissionEvent.requestNotUpgraded(UpgradeRequest(head), auditFailing: connection.gateway.auditLog.isFailing)
        for case .respond(let refusal) in connection.handle(event, channel: context.channel) {
            respond(refusal, context: context)
        }
    }

    private func respond(_ refusal: Refusal, context: ChannelHandlerContext) {
        let body = context.channel.allocator.buffer(string: refusal.message + "\n")
        var headers: HTTPHeaders = ["Date": HTTPDate.format()]
        headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        headers.add(name: "Connection", value: "close")
        for (name, value) in refusal.headers { headers.add(name: name, value: value) }
        let response = HTTPResponseHead(
            version: .http1_1, status: HTTPResponseStatus(statusCode: refusal.status), headers: headers)
        context.write(Self.wrapOutboundOut(.head(response)), promise: nil)
        context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // The upgrader reports a declined upgrade as an error before handing the request on; the refusal
        // is answered in channelRead. Anything else ends the connection.
        if error is NIOWebSocketUpgradeError { return }
        if let parseError = error as? HTTPParserError, !responded {
            // The parser stops once the request line and fields exceed `max_header_bytes` (Gateway.decoderLimits).
            responded = true
            let event = AdmissionEvent.unreadableRequest(
                tooLarge: parseError == .headerOverflow, detail: "HTTP parse error: \(parseError)")
            for case .respond(let refusal) in connection.handle(event, channel: context.channel) {
                respond(refusal, context: context)
                return
            }
        }
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension AdmissionResponder: Sendable {}
