import NIOCore
import NIOSSL
import NIOTLS
import PortcullisAdmission

/// Sits right after the TLS handler and tells admission how the handshake ended: completed (with its
/// version), or failed (admission records the precise `tls_refused` reason; BoringSSL sends the alert).
final class TLSOutcomeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let connection: Connection

    init(connection: Connection) {
        self.connection = connection
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A connection still in admission when the gateway drains is simply closed; a session handles it itself.
        if event is Gateway.GatewayShutdown, connection.session == nil {
            connection.handle(.shutdown, channel: context.channel)
            return
        }
        if case TLSUserEvent.handshakeCompleted = event {
            let ssl = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)
            connection.handle(.handshakeCompleted(tlsVersion: ssl?.tlsVersion.map(Self.name)), channel: context.channel)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !connection.tlsCompleted {
            connection.handle(.handshakeFailed(error: String(describing: error)), channel: context.channel)
            return
        }
        context.fireErrorCaught(error)
    }

    private static func name(_ version: TLSVersion) -> String {
        switch version {
        case .tlsv13: "TLSv1.3"
        case .tlsv12: "TLSv1.2"
        case .tlsv11: "TLSv1.1"
        case .tlsv1: "TLSv1"
        }
    }
}

@available(*, unavailable)
extension TLSOutcomeHandler: Sendable {}
