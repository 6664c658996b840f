import NIOCore
import NIOSSL
import NIOTLS
import PortcullisAudit

/// Sits right after the TLS handler: notes a completed handshake, and turns a failed one into a precise
/// `tls_refused` audit record (the TLS alert itself is sent by BoringSSL).
final class TLSOutcomeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let connection: Connection

    init(connection: Connection) {
        self.connection = connection
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A connection still in admission when the gateway drains is simply closed; a session handles it itself.
        if event is Gateway.GatewayShutdown, !connection.upgraded {
            connection.conclude(
                connection.auditRecord(event: connection.tlsCompleted ? "http_refused" : "tls_refused", decision: "deny",
                                       reason: "shutdown", detail: "the gateway is shutting down"))
            context.close(promise: nil)
            return
        }
        if case TLSUserEvent.handshakeCompleted = event {
            connection.tlsCompleted = true
            if let ssl = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self) {
                connection.tlsVersion = ssl.tlsVersion.map(Self.name)
            }
            connection.resumed = connection.verification == nil
            let metrics = connection.gateway.metrics
            (connection.resumed ? metrics.handshakesResumed : metrics.handshakesFull).increment()
            metrics.handshakeDuration.recordNanoseconds(Int64((NIODeadline.now() - connection.acceptedAt).nanoseconds))
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !connection.tlsCompleted {
            let (reason, detail) = classify(error)
            connection.conclude(connection.auditRecord(event: "tls_refused", decision: "deny", reason: reason, detail: detail))
            context.close(promise: nil)
            return
        }
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !connection.tlsCompleted {
            connection.conclude(
                connection.auditRecord(
                    event: "tls_refused", decision: "deny", reason: "handshake_incomplete",
                    detail: "the client closed the connection before completing the TLS handshake"))
        } else if !connection.upgraded {
            connection.conclude(
                connection.auditRecord(
                    event: "http_refused", decision: "deny", reason: "closed_before_upgrade",
                    detail: "the client closed the connection without completing a WebSocket upgrade"))
        }
        context.fireChannelInactive()
    }

    /// Maps a handshake failure to a stable reason code and a detail for the audit log.
    private func classify(_ error: any Error) -> (String, String) {
        if case .refused(let refusal, let detail) = connection.verification {
            return (refusal.rawValue, detail)
        }
        let text = String(describing: error)
        let known: [(String, String, String)] = [
            ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_client_certificate", "the client presented no certificate"),
            ("UNSUPPORTED_PROTOCOL", "tls_version_not_allowed", "the client's TLS versions are below the minimum"),
            ("NO_SHARED_CIPHER", "no_shared_cipher", "no cipher suite in common (ECDHE with AEAD only)"),
            ("NO_SHARED_GROUP", "no_shared_cipher", "no key-exchange group in common"),
            ("HTTP_REQUEST", "not_tls", "plain HTTP sent to the TLS port"),
            ("WRONG_VERSION_NUMBER", "not_tls", "the client did not speak TLS"),
            ("EOF during handshake", "handshake_incomplete", "the client closed the connection during the handshake"),
        ]
        for (marker, reason, detail) in known where text.contains(marker) {
            return (reason, detail)
        }
        return ("tls_handshake_failed", text)
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
