import NIOCore
import NIOWebSocket

/// The `upstream` route: messages relayed both ways between the client and its backend connection, which
/// admission opened (with the verified identity in headers) before answering the upgrade. Either side's
/// close ends both.
///
/// Backpressure holds both ways, so a relay's memory is bounded by the two outbound limits: while the backend
/// does not take what the client sends (its channel is not writable), the client is not read; while the
/// client falls behind (more than half of `max_outbound_bytes` queued towards it), the backend is not read.
final class UpstreamRoute: SessionRoute {
    private let backend: BackendRelay
    /// Dropped when the session ends, which breaks the cycle with the handler that holds this route.
    private var session: WebSocketProtocolHandler?

    init(backend: BackendRelay) {
        self.backend = backend
    }

    func start(session: WebSocketProtocolHandler) {
        self.session = session
        backend.attach(self)
    }

    func received(_ message: InboundMessage) {
        // The backend is behind: stop reading the client until it catches up.
        if !backend.send(message) { session?.setReading(false) }
    }

    /// A message from the backend.
    func deliver(_ message: InboundMessage) {
        guard let session else { return }
        session.send(OutboundFrame(binary: message.binary, buffer: message.payload))
        if session.isBackedUp { backend.setReading(false) }
    }

    func outboundDrained() {
        backend.setReading(true)
    }

    /// The backend takes writes again.
    func backendWritable() {
        session?.setReading(true)
    }

    /// The backend closed: the client gets its code (a code a peer may not send becomes 1001).
    func backendClosed(code: UInt16?) {
        let code = code.flatMap { WebSocketProtocolStateMachine.mayBeSentByPeer($0) ? Int($0) : nil } ?? 1001
        session?.close(code: WebSocketErrorCode(codeNumber: code), reason: "upstream_closed")
    }

    func ended(closeCode: UInt16) {
        session = nil
        // Both sides close together: the backend gets the client's code, or 1001 when the client sent none.
        backend.close(code: WebSocketProtocolStateMachine.mayBeSentByPeer(closeCode) ? closeCode : 1001)
    }
}

/// The backend leg of an `upstream` route, as the last handler of the gateway's client connection to the
/// backend. It runs on the client session's event loop (the backend is connected from it), so the two sides
/// call each other directly. Fragments from the backend are reassembled up to `max_message_bytes`; its pings
/// are answered; its close ends the session.
final class BackendRelay: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let maxMessageBytes: Int
    private var context: ChannelHandlerContext?
    private var route: UpstreamRoute?
    /// Messages that arrived before the session started (with the upgrade response, say).
    private var early: [InboundMessage] = []
    private var partial: InboundMessage?
    private var closeSent = false
    private var closeReceived: UInt16?

    init(maxMessageBytes: Int) {
        self.maxMessageBytes = maxMessageBytes
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Nothing more is read from the backend until the client's session starts.
        setReading(false)
    }

    /// The session started: messages go to `route` from now on.
    func attach(_ route: UpstreamRoute) {
        self.route = route
        for message in early { route.deliver(message) }
        early = []
        setReading(true)
    }

    func setReading(_ reading: Bool) {
        guard let channel = context?.channel else { return }
        try? channel.syncOptions?.setOption(.autoRead, value: reading)
        if reading { channel.read() }
    }

    /// Sends a client's message to the backend; false when the backend's channel is no longer writable (the
    /// caller should stop reading until ``UpstreamRoute/backendWritable()``).
    func send(_ message: InboundMessage) -> Bool {
        guard let context, !closeSent else { return true }
        let frame = WebSocketFrame(fin: true, opcode: message.binary ? .binary : .text, maskKey: .random(), data: message.payload)
        context.writeAndFlush(Self.wrapOutboundOut(frame), promise: nil)
        return context.channel.isWritable
    }

    /// Sends a close frame with `code` and closes the connection once it is written.
    func close(code: UInt16) {
        route = nil
        guard let context, !closeSent else { return }
        closeSent = true
        var payload = context.channel.allocator.buffer(capacity: 2)
        payload.writeInteger(code)
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: payload)
        context.writeAndFlush(Self.wrapOutboundOut(frame)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = Self.unwrapInboundIn(data)
        let payload = frame.maskKey.map { WebSocketProtocolStateMachine.unmasked(frame.data, key: $0) } ?? frame.data
        switch frame.opcode {
        case .text, .binary:
            partial = InboundMessage(binary: frame.opcode == .binary, data: payload)
        case .continuation:
            guard partial != nil else { return failed(context: context) }
            partial!.data.writeImmutableBuffer(payload)
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: payload)
            context.writeAndFlush(Self.wrapOutboundOut(pong), promise: nil)
            return
        case .connectionClose:
            var payload = payload
            closeReceived = payload.readInteger(as: UInt16.self) ?? 1000
            if !closeSent {
                // Answer the backend's close; the client is told when the connection ends.
                closeSent = true
                var answer = context.channel.allocator.buffer(capacity: 2)
                answer.writeInteger(closeReceived!)
                let frame = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: answer)
                context.writeAndFlush(Self.wrapOutboundOut(frame)).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
            }
            return
        default:
            return
        }
        guard let message = partial, message.count <= maxMessageBytes else {
            // A backend message the client could not be sent whole: the relay cannot go on.
            return failed(context: context)
        }
        guard frame.fin else { return }
        partial = nil
        if let route { route.deliver(message) } else { early.append(message) }
    }

    /// The backend broke the protocol or sent more than a client may receive: both sides end, the client
    /// with 1011.
    private func failed(context: ChannelHandlerContext) {
        partial = nil
        let route = self.route
        close(code: 1009)
        route?.backendClosed(code: 1011)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { route?.backendWritable() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let route = self.route
        self.route = nil
        route?.backendClosed(code: closeReceived)
        self.context = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension BackendRelay: Sendable {}
