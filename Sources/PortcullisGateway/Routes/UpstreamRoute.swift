import NIOCore
import NIOWebSocket
import PortcullisClient

/// The `upstream` route: messages relayed both ways between the client and its backend connection, which
/// admission opened (with the verified identity in headers) before answering the upgrade. Either side's
/// close ends both.
final class UpstreamRoute: SessionRoute {
    private let backend: WebSocketConnection
    /// Dropped when the session ends, which breaks the cycle with the handler that holds this route.
    private var session: WebSocketProtocolHandler?

    init(backend: WebSocketConnection) {
        self.backend = backend
    }

    func start(session: WebSocketProtocolHandler) {
        self.session = session
        guard let client = session.channel else { return }
        let eventLoop = client.eventLoop
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        let backend = self.backend
        Task {
            // Once the client is gone its event loop may be shut down too: nothing more is scheduled there.
            var code: UInt16 = 1001
            for await message in backend.messages {
                let frame: OutboundFrame
                switch message {
                case .text(let text): frame = OutboundFrame(binary: false, buffer: ByteBuffer(string: text))
                case .binary(let bytes): frame = OutboundFrame(binary: true, buffer: ByteBuffer(bytes: bytes))
                case .close(let received, _):
                    code = received.map(UInt16.init) ?? 1000
                    continue
                case .pong: continue
                }
                guard client.isActive else { continue }
                eventLoop.execute { loopBound.value.session?.send(frame) }
            }
            // The backend closed: the client gets its code (a code a peer may not send becomes 1001).
            let closeCode = WebSocketProtocolStateMachine.mayBeSentByPeer(code) ? Int(code) : 1001
            guard client.isActive else { return }
            eventLoop.execute {
                loopBound.value.session?.close(code: WebSocketErrorCode(codeNumber: closeCode), reason: "upstream_closed")
            }
        }
    }

    func received(_ message: InboundMessage) {
        backend.enqueue(binary: message.binary, data: message.payload)
    }

    func ended(closeCode: UInt16) {
        session = nil
        // Both sides close together: the backend gets the client's code, or 1001 when the client sent none.
        backend.enqueueClose(code: WebSocketProtocolStateMachine.mayBeSentByPeer(closeCode) ? closeCode : 1001)
    }
}
