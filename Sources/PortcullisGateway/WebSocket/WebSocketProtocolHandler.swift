import NIOCore
import NIOWebSocket
import PortcullisAudit
import PortcullisPolicy
import Prometheus

/// The route side of a session: what it does with whole messages. One implementation per route kind
/// (``EchoRoute``, ``BrokerRoute``, ``UpstreamRoute``); all calls arrive on the session's event loop.
protocol SessionRoute: AnyObject {
    /// The session is open; `session` is where the route sends its messages.
    func start(session: WebSocketProtocolHandler)
    func received(_ message: InboundMessage)
    /// The end of one read from the socket, which may have held several messages.
    func readComplete()
    /// A reload replaced the session's grants.
    func permissionsChanged(_ permissions: MessagePermissions)
    /// The client caught up: what was queued towards it fell back below a quarter of `max_outbound_bytes`
    /// after having been above half of it (see ``WebSocketProtocolHandler/isBackedUp``).
    func outboundDrained()
    /// The connection is gone; `closeCode` is the code sent or received first (1006 when there was none).
    func ended(closeCode: UInt16)
}

extension SessionRoute {
    func readComplete() {}
    func permissionsChanged(_ permissions: MessagePermissions) {}
    func outboundDrained() {}
}

/// The WebSocket protocol layer of a session: frames in and out, fragmentation, control frames, the close
/// handshake and its deadline, heartbeats, the outbound bound and write batching. It knows nothing of routes:
/// whole messages go to its ``SessionRoute``, which sends through ``send(_:)`` and ends the session with
/// ``close(code:reason:tellingPeer:)``. The rules are ``WebSocketProtocolStateMachine``'s; this handler
/// translates channel events into its events and its actions into writes, timers and closes.
final class WebSocketProtocolHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let session: SessionContext
    private let route: any SessionRoute
    private var machine: WebSocketProtocolStateMachine
    /// permessage-deflate, when the upgrade negotiated it.
    private let deflater: MessageDeflater?
    private var context: ChannelHandlerContext?
    /// The frame encoder's context: bytes written there skip the encoder and go straight to TLS.
    private var encodedFrameWriter: ChannelHandlerContext?

    /// Bytes (frames, headers included) handed towards the client and not yet written to the socket.
    private(set) var queuedBytes = 0
    /// `max_outbound_bytes`, read once: every delivery checks it.
    private let maxOutboundBytes: Int
    /// Frames of this event loop tick, encoded and waiting to be handed to TLS together (see ``enqueue``).
    private var output: ByteBuffer?
    /// The answer to the latest ping, while earlier writes wait on the socket: of several, only the last is sent.
    private var pendingPong: ByteBuffer?
    private var flushScheduled = false

    private var heartbeat: LoopTimers.Timer?
    private var closeDeadline: LoopTimers.Timer?
    /// Whether the connection was dropped because the peer did not finish the close handshake in time.
    private var closeTimedOut = false
    private let openedAt = NIODeadline.now()
    private var sessionsOpenGauge: Gauge?

    private var messagesIn = 0
    private var messagesOut = 0
    private var bytesIn = 0
    private var bytesOut = 0
    /// What of the session's figures the metrics have already been given.
    private var reported = (messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0)

    init(session: SessionContext, route: any SessionRoute) {
        self.session = session
        self.route = route
        self.maxOutboundBytes = session.configuration.maxOutboundBytes
        let deflater = session.compression.map(MessageDeflater.init(agreement:))
        self.deflater = deflater
        self.machine = WebSocketProtocolStateMachine(
            limits: .init(maxMessageBytes: session.configuration.maxMessageBytes), deflater: deflater)
    }

    /// Whether a close frame has been sent or received: data is no longer sent.
    var isClosing: Bool { machine.isClosing }

    var allocator: ByteBufferAllocator { context?.channel.allocator ?? ByteBufferAllocator() }

    /// Whether more than half of `max_outbound_bytes` waits towards the client: a route relaying from a
    /// source it can pause should pause it until ``SessionRoute/outboundDrained()``.
    private(set) var isBackedUp = false

    /// Stops (or resumes) reading from the client: a route whose destination is not keeping up holds the
    /// client back instead of buffering what it sends.
    func setReading(_ reading: Bool) {
        guard let channel = context?.channel else { return }
        try? channel.syncOptions?.setOption(.autoRead, value: reading)
        if reading { channel.read() }
    }

    /// The client's channel while the session is open.
    var channel: (any Channel)? { context?.channel }

    var eventLoop: (any EventLoop)? { context?.eventLoop }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // The upgrader always installs the frame encoder; without it no frame could be sent at all.
        encodedFrameWriter = try? context.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self)
        if encodedFrameWriter == nil { context.close(promise: nil) }
        scheduleHeartbeat(eventLoop: context.eventLoop)
        sessionsOpenGauge = session.metrics.sessionsOpen(route: session.route.path)
        sessionsOpenGauge?.increment()
        route.start(session: self)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        perform(machine.received(Self.unwrapInboundIn(data)))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        route.readComplete()
        reportTraffic()
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch error {
        case is NIOWebSocketError:
            // The frame decoder's refusals (frame too large, fragmented or oversized control frame).
            perform(machine.decodingFailed(error))
        case is IOError:
            // The socket failed (reset, broken pipe): SwiftNIO closes the channel itself right after this. Closing
            // from here would go through TLS, which would try to send close_notify to a dead socket first, and
            // arm and cancel a shutdown timer: a tenth of what a close costs, paid by every device that vanishes.
            break
        default:
            context.close(promise: nil)
        }
    }

    private func perform(_ action: WebSocketProtocolStateMachine.Action) {
        guard let context else { return }
        switch action {
        case .none:
            break
        case .deliver(let message):
            messagesIn += 1
            bytesIn += message.count
            route.received(message)
        case .answerPing(let payload):
            guard admitOutbound(bytes: payload.readableBytes + 2) else { return }
            // While earlier writes still wait on the socket (the client is not reading), only the latest ping
            // is answered (RFC 6455 §5.5.3): a ping flood then costs one pong per read, not one per ping.
            if queuedBytes > (output?.readableBytes ?? 0) {
                pendingPong = payload
                scheduleFlush()
            } else {
                enqueue(opcode: .pong, payload: payload)
            }
        case .fail(let failure):
            sendClose(code: failure.code, reason: nil)
        case .failAndDrop(let failure):
            sendClose(code: failure.code, reason: nil)?.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        case .answerClose(let code):
            // RFC 6455 §5.5.1: echo the peer's code; the server then closes the TCP connection (§7.1.1).
            var payload = allocator.buffer(capacity: 2)
            if let code { payload.write(webSocketErrorCode: code) }
            enqueue(opcode: .connectionClose, payload: payload)
            armCloseDeadline()
            flushOutput()?.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        case .closeHandshakeCompleted:
            context.close(promise: nil)
        }
    }

    // MARK: Sending

    /// Sends a data message. Once a close frame has been sent or received it is dropped (RFC 6455 §5.5.1);
    /// a client that does not read is closed with 1013 when it would exceed `max_outbound_bytes`.
    func send(_ frame: OutboundFrame) {
        guard !machine.isClosing else { return }
        let size = frame.buffer.readableBytes
        let compressed = deflater?.compress(frame.buffer, allocator: allocator)
        let payload = compressed ?? frame.buffer
        guard admitOutbound(bytes: payload.readableBytes + Self.headerSize(payload: payload.readableBytes)) else { return }
        messagesOut += 1
        bytesOut += size
        enqueue(opcode: frame.binary ? .binary : .text, payload: payload, compressed: compressed != nil)
    }

    /// Whether `bytes` more may be queued towards the client; if not, the session is closed as a slow consumer.
    private func admitOutbound(bytes: Int) -> Bool {
        let limit = maxOutboundBytes
        guard queuedBytes + bytes > limit else { return true }
        session.metrics.slowConsumerCloses.increment()
        session.audit(
            session.record(
                event: "session_slow_consumer", decision: "deny", reason: "slow_consumer",
                detail: "\(queuedBytes) bytes already queued towards the client (limit \(limit))"))
        close(code: .unknown(1013), reason: "slow_consumer")
        return false
    }

    /// Starts the close handshake with `code`; the connection is dropped once the peer answers or
    /// `close_timeout` passes. With `tellingPeer`, the close frame carries `reason` for the client to read.
    func close(code: WebSocketErrorCode, reason: String?, tellingPeer: Bool = false) {
        guard machine.startClose(code: code, reason: reason) else { return }
        sendClose(code: code, reason: tellingPeer ? reason : nil)
    }

    /// Writes a close frame now and arms the close deadline; the future completes once the frame is written.
    @discardableResult
    private func sendClose(code: WebSocketErrorCode, reason: String?) -> EventLoopFuture<Void>? {
        var payload = allocator.buffer(capacity: 2)
        payload.write(webSocketErrorCode: code)
        // A control frame's payload is at most 125 bytes (RFC 6455 §5.5): the code and 123 bytes of reason.
        if let reason { payload.writeString(String(decoding: reason.utf8.prefix(123), as: UTF8.self)) }
        enqueue(opcode: .connectionClose, payload: payload)
        armCloseDeadline()
        return flushOutput()
    }

    /// Drops the connection if it is still open `close_timeout` after the close handshake started: a peer
    /// that neither answers nor reads must not hold the session.
    private func armCloseDeadline() {
        guard closeDeadline == nil, let context else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        closeDeadline = session.timers.schedule(in: .configured(seconds: session.configuration.closeTimeout)) {
            let handler = loopBound.value
            handler.closeTimedOut = true
            handler.context?.close(promise: nil)
        }
    }

    static func headerSize(payload length: Int) -> Int {
        length < 126 ? 2 : length <= Int(UInt16.max) ? 4 : 10
    }

    /// Appends a frame to this tick's output and makes sure the output is flushed at the end of the tick.
    ///
    /// Written by hand because of what the library does per frame: NIO's frame encoder writes a frame's header
    /// and payload as two buffers, and NIOSSL seals every buffer as a TLS record of its own, so a flush per
    /// delivery cost two records and a syscall. Frames encoded here (a server's frames are unmasked, so the
    /// header is just 2, 4 or 10 bytes, RFC 6455 §5.2) leave in one buffer per tick: one TLS record per 16 KiB.
    private func enqueue(opcode: WebSocketOpcode, payload: ByteBuffer, compressed: Bool = false) {
        guard encodedFrameWriter != nil else { return }
        let length = payload.readableBytes
        var buffer = output.take() ?? allocator.buffer(capacity: Swift.max(4096, length + 10))
        Self.writeFrame(opcode: opcode, payload: payload, compressed: compressed, into: &buffer)
        queuedBytes += length + Self.headerSize(payload: length)
        if queuedBytes > maxOutboundBytes / 2 { isBackedUp = true }
        output = buffer
        if buffer.readableBytes >= 64 * 1024 {
            flushOutput()
        } else {
            scheduleFlush()
        }
    }

    /// A whole (FIN) frame; `compressed` sets RSV1, which marks a permessage-deflate message.
    static func writeFrame(opcode: WebSocketOpcode, payload: ByteBuffer, compressed: Bool = false, into buffer: inout ByteBuffer) {
        let length = payload.readableBytes
        buffer.writeInteger(0x80 | (compressed ? 0x40 : 0) | UInt8(webSocketOpcode: opcode))
        if length < 126 {
            buffer.writeInteger(UInt8(length))
        } else if length <= Int(UInt16.max) {
            buffer.writeInteger(UInt8(126))
            buffer.writeInteger(UInt16(length))
        } else {
            buffer.writeInteger(UInt8(127))
            buffer.writeInteger(UInt64(length))
        }
        buffer.writeImmutableBuffer(payload)
    }

    private func scheduleFlush() {
        guard !flushScheduled, let context else { return }
        flushScheduled = true
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let handler = loopBound.value
            handler.flushScheduled = false
            handler.flushOutput()
        }
    }

    /// Hands the output to TLS now; the future completes when it has been written to the socket.
    @discardableResult
    private func flushOutput() -> EventLoopFuture<Void>? {
        if let pong = pendingPong.take() {
            var buffer = output.take() ?? allocator.buffer(capacity: pong.readableBytes + 2)
            Self.writeFrame(opcode: .pong, payload: pong, into: &buffer)
            queuedBytes += pong.readableBytes + 2
            output = buffer
        }
        guard let buffer = output.take(), let writer = encodedFrameWriter, let context else { return nil }
        let size = buffer.readableBytes
        let promise = context.eventLoop.makePromise(of: Void.self)
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        promise.futureResult.whenComplete { _ in loopBound.value.written(size) }
        writer.writeAndFlush(NIOAny(buffer), promise: promise)
        reportTraffic()
        return promise.futureResult
    }

    /// `size` bytes reached the socket.
    private func written(_ size: Int) {
        queuedBytes -= size
        if isBackedUp, queuedBytes <= maxOutboundBytes / 4 {
            isBackedUp = false
            route.outboundDrained()
        }
    }

    // MARK: Heartbeat

    /// The next heartbeat, `ping_interval` from now. It is scheduled before the beat runs, so a beat that ends the
    /// session leaves no timer behind (the end cancels it).
    private func scheduleHeartbeat(eventLoop: any EventLoop) {
        let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
        heartbeat = session.timers.schedule(in: .configured(seconds: session.configuration.pingInterval)) {
            let handler = loopBound.value
            handler.scheduleHeartbeat(eventLoop: eventLoop)
            handler.beat()
        }
    }

    /// The heartbeat: ping, and close a peer that left the previous ping unanswered past the timeout.
    private func beat() {
        reportTraffic(force: true)
        switch machine.heartbeat(now: .now(), timeout: .configured(seconds: session.configuration.pingTimeout)) {
        case .none:
            break
        case .ping(let number):
            var payload = allocator.buffer(capacity: 8)
            payload.writeInteger(number)
            enqueue(opcode: .ping, payload: payload)
        case .timedOut:
            close(code: .goingAway, reason: "heartbeat_timeout")
            context?.close(promise: nil)
        }
    }

    // MARK: Metrics and the end

    /// Adds what this session moved since the last report to the gateway's counters, once at least
    /// `reportEvery` messages are unreported (or when `force`d: by the heartbeat and at the end). The counters
    /// are shared by every event loop; adding to them per read or per flush cost fan-out throughput (the
    /// cache line moving between cores), so a busy session reports every few dozen messages and a quiet
    /// one at its next ping.
    private func reportTraffic(force: Bool = false) {
        let unreportedIn = messagesIn - reported.messagesIn
        let unreportedOut = messagesOut - reported.messagesOut
        guard force || unreportedIn + unreportedOut >= Self.reportEvery else { return }
        let metrics = session.metrics
        if unreportedIn > 0 {
            metrics.messagesIn.increment(by: Int64(unreportedIn))
            metrics.bytesIn.increment(by: Int64(bytesIn - reported.bytesIn))
        }
        if unreportedOut > 0 {
            metrics.messagesOut.increment(by: Int64(unreportedOut))
            metrics.bytesOut.increment(by: Int64(bytesOut - reported.bytesOut))
        }
        reported = (messagesIn, messagesOut, bytesIn, bytesOut)
    }

    static let reportEvery = 64

    func channelInactive(context: ChannelHandlerContext) {
        session.timers.cancel(heartbeat)
        heartbeat = nil
        session.timers.cancel(closeDeadline)
        closeDeadline = nil
        let closeCode = machine.closeCode ?? 1006
        route.ended(closeCode: closeCode)
        reportTraffic(force: true)
        sessionsOpenGauge?.decrement()
        var record = session.record(event: "session_closed", reason: machine.closeReason)
        if closeTimedOut {
            record.detail = "the peer did not complete the close handshake within \(session.configuration.closeTimeout) s; "
                + "the connection was dropped"
        }
        record.closeCode = Int(closeCode)
        record.durationMs = Int((NIODeadline.now() - openedAt).nanoseconds / 1_000_000)
        record.messagesIn = messagesIn
        record.messagesOut = messagesOut
        record.bytesIn = bytesIn
        record.bytesOut = bytesOut
        session.audit(record)
        self.context = nil
        context.fireChannelInactive()
    }
}

extension TimeAmount {
    /// A duration of configured seconds, clamped to 0...10⁹ s so that the conversion cannot overflow.
    static func configured(seconds: Double) -> TimeAmount {
        .nanoseconds(Int64(Swift.min(Swift.max(seconds, 0), 1e9) * 1e9))
    }
}

@available(*, unavailable)
extension WebSocketProtocolHandler: Sendable {}
