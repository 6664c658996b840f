/// The `echo` route (diagnostics): every message comes back as it was sent.
final class EchoRoute: SessionRoute {
    /// Dropped when the session ends, which breaks the cycle with the handler that holds this route.
    private var session: WebSocketProtocolHandler?

    func start(session: WebSocketProtocolHandler) {
        self.session = session
    }

    func received(_ message: InboundMessage) {
        session?.send(OutboundFrame(binary: message.binary, buffer: message.payload))
    }

    func ended(closeCode: UInt16) {
        session = nil
    }
}
