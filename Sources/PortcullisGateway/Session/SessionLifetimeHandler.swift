import Foundation
import NIOCore
import NIOWebSocket
import PortcullisAudit
import PortcullisPKI
import PortcullisProtocol

/// The rules of a session's lifetime, in one place: it ends when its certificate (or one of its chain)
/// expires, after a `notice` ahead of time; when a reload no longer admits it; and with 1001 when the gateway
/// drains. A reload that keeps it hands the new grants to its route.
final class SessionLifetimeHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame

    private let session: SessionContext
    private let webSocket: WebSocketProtocolHandler
    private let route: any SessionRoute
    /// The next step towards the certificate's not-after: the warning, then the close (one task at a time,
    /// so a session holds one timer for it, not two).
    private var expiryTask: LoopTimers.Timer?

    init(session: SessionContext, webSocket: WebSocketProtocolHandler, route: any SessionRoute) {
        self.session = session
        self.webSocket = webSocket
        self.route = route
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if let notValidAfter = session.notValidAfter { scheduleExpiry(at: notValidAfter, context: context) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        switch event {
        case is Gateway.GatewayShutdown:
            webSocket.close(code: .goingAway, reason: "shutdown")
        case SessionVerdict.keep(let permissions):
            route.permissionsChanged(permissions)
        case SessionVerdict.end(let reason, let detail):
            end(reason: reason, detail: "after a reload: " + detail)
        default:
            context.fireUserInboundEventTriggered(event)
        }
    }

    /// Ends a session the gateway no longer admits: audited with why, then closed with 1008 and the reason in
    /// the close frame.
    private func end(reason: String, detail: String) {
        guard !webSocket.isClosing else { return }
        session.metrics.sessionsEnded.increment()
        session.audit(session.record(event: "session_terminated", decision: "deny", reason: reason, detail: detail))
        webSocket.close(code: .policyViolation, reason: reason, tellingPeer: true)
    }

    /// A `notice` message `certificateExpiryWarning` seconds before `notValidAfter` (unless `warned`), then the
    /// end of the session at it.
    private func scheduleExpiry(at notValidAfter: Date, warned: Bool = false, context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let remaining = notValidAfter.timeIntervalSinceNow
        let warning = session.configuration.certificateExpiryWarning
        // A not-after far ahead (RFC 5280's 99991231235959Z, "no expiration") is waited for a year at a time:
        // one timer for the whole span would not fit in Int64 nanoseconds.
        let rearmAfter = 365.0 * 86400
        if remaining - (warned ? 0 : warning) > rearmAfter {
            expiryTask = session.timers.schedule(in: .configured(seconds: rearmAfter)) {
                let (handler, context) = loopBound.value
                handler.scheduleExpiry(at: notValidAfter, warned: warned, context: context)
            }
            return
        }
        if !warned, warning > 0 {
            expiryTask = session.timers.schedule(in: .configured(seconds: remaining - warning)) {
                let (handler, context) = loopBound.value
                handler.warnOfExpiry(at: notValidAfter)
                handler.scheduleExpiry(at: notValidAfter, warned: true, context: context)
            }
            return
        }
        expiryTask = session.timers.schedule(in: .configured(seconds: remaining)) {
            loopBound.value.0.end(
                reason: CertificateRefusal.expired.rawValue,
                detail: "the client certificate (or one of its chain) expired at \(AuditTime.format(notValidAfter))")
        }
    }

    private func warnOfExpiry(at notValidAfter: Date) {
        guard !webSocket.isClosing else { return }
        let seconds = Int(max(0, min(notValidAfter.timeIntervalSinceNow, 1e9)).rounded())
        let notice = MessagingProtocol.encodeNotice(
            code: "certificate_expiring",
            message: "the client certificate expires at \(AuditTime.format(notValidAfter)) (in \(seconds) s); "
                + "the session will be closed then: reconnect with a renewed certificate")
        webSocket.send(OutboundFrame(binary: false, buffer: webSocket.allocator.buffer(bytes: notice)))
        session.audit(
            session.record(
                event: "session_expiry_warning", reason: "certificate_expiring",
                detail: "warned \(seconds) s before the certificate's not-after \(AuditTime.format(notValidAfter))"))
    }

    func channelInactive(context: ChannelHandlerContext) {
        session.timers.cancel(expiryTask)
        expiryTask = nil
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension SessionLifetimeHandler: Sendable {}
