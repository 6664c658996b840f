import Foundation
import NIOCore
import NIOWebSocket
import PortcullisAudit
import PortcullisClient
import PortcullisConfig
import PortcullisPKI
import PortcullisPolicy
import PortcullisProtocol
import Prometheus

/// An admitted WebSocket session: RFC 6455 control frames (ping/pong, the close handshake), UTF-8 validation
/// of text messages, heartbeats, a bounded outbound queue, and the route's behaviour (`echo`, or the broker
/// under the identity's topic ACLs and limits). On close it audits the session's figures.
final class WebSocketSessionHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let connection: Connection
    let route: GatewayConfiguration.Route
    let configuration: GatewayConfiguration
    private let openedAt = NIODeadline.now()
    private var messagesIn = 0
    private var messagesOut = 0
    private var bytesIn = 0
    private var bytesOut = 0
    /// The close code sent or received first; 1006 (abnormal) when the connection simply dropped.
    private var closeCode: Int?
    private var closeReason: String?
    private var sentClose = false

    /// Bytes written towards the client and not yet handed to the socket.
    private var queuedBytes = 0
    /// Frames of this event loop tick, encoded and waiting to be handed to TLS together (see ``enqueue``).
    private var output: ByteBuffer?
    private var outputPayloadBytes = 0
    private var flushScheduled = false
    /// The frame encoder's context: bytes written there skip the encoder and go straight to TLS.
    private var encodedFrameWriter: ChannelHandlerContext?
    private var heartbeat: RepeatedTask?
    private var pingOutstandingSince: NIODeadline?
    /// The next step towards the certificate's not-after: the warning, then the close (one task at a time,
    /// so a session holds one timer for it, not two).
    private var expiryTask: Scheduled<Void>?
    private var sessionsOpenGauge: Gauge?
    /// What of the session's figures the metrics have already been given.
    private var reported = (messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0)

    // Broker state.
    var subscriber: Subscriber?
    var subscriptions: Set<String> = []
    var violations = 0
    var lastRateLimitAudit: NIODeadline?
    /// The topic this session last published to with the checks passed (policy is fixed for a session's life).
    var lastAllowedPublishTopic: String?
    /// The binary delivery prefix for the last topic published to.
    var deliveryPrefix: (topic: String, bytes: [UInt8])?
    /// This session as a publisher: who received its last topic, and who still needs waking for its frames.
    var publisher = Broker.Publisher()

    init(connection: Connection, route: GatewayConfiguration.Route, configuration: GatewayConfiguration) {
        self.connection = connection
        self.route = route
        self.configuration = configuration
        if case .admit(let identity, _, _) = connection.outcome { self.identity = identity.name } else { self.identity = "" }
        self.permissions = connection.permissions
        self.deniesSomeTopics = !connection.permissions.denySubscribe.isEmpty
    }

    /// The admitted identity's name (the session exists only once admitted).
    let identity: String
    /// The session's topic grants and limits, from admission and replaced when a reload changes them; kept
    /// here because the message path reads them for every message.
    var permissions: MessagePermissions {
        didSet { deniesSomeTopics = !permissions.denySubscribe.isEmpty }
    }
    /// Whether any delivery can be refused. Read for every delivery instead of `permissions`: a `var` struct
    /// of arrays read from a class is copied (four retains and releases), which cost a tenth of fan-out
    /// throughput per CPU-second.
    private var deniesSomeTopics: Bool

    func handlerAdded(context: ChannelHandlerContext) {
        // The upgrader always installs the frame encoder; without it no frame could be sent at all.
        encodedFrameWriter = try? context.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self)
        if encodedFrameWriter == nil { context.close(promise: nil) }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let interval = TimeAmount.milliseconds(Int64(configuration.pingInterval * 1000))
        heartbeat = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            let (handler, context) = loopBound.value
            handler.beat(context: context)
        }
        if route.kind == .upstream, let backend = connection.upstream {
            relay(from: backend, to: context.channel, loopBound: loopBound)
        }
        sessionsOpenGauge = connection.gateway.metrics.sessionsOpen(route: route.path)
        sessionsOpenGauge?.increment()
        if let notValidAfter = connection.notValidAfter { scheduleExpiry(at: notValidAfter, context: context) }
        if route.kind == .broker {
            subscriber = Subscriber(id: UInt64.random(in: 0...UInt64.max), eventLoop: context.eventLoop) { frame in
                let (handler, context) = loopBound.value
                handler.deliver(frame, context: context)
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = Self.unwrapInboundIn(data)
        // RFC 6455 §5.1: a server must close the connection on an unmasked client frame.
        guard frame.maskKey != nil else {
            close(context: context, code: .protocolError, reason: "unmasked_frame")
            return
        }
        switch frame.opcode {
        case .text, .binary:
            messagesIn += 1
            bytesIn += frame.length
            if route.kind == .broker, frame.opcode == .binary, !sentClose, publishBinaryFrame(context: context, frame: frame) {
                return
            }
            let payload = Self.unmaskedPayload(of: frame)
            if frame.opcode == .text, String(validating: payload.readableBytesView, as: UTF8.self) == nil {
                close(context: context, code: .dataInconsistentWithMessage, reason: "invalid_utf8")
                return
            }
            guard !sentClose else { return }
            switch route.kind {
            case .echo:
                send(OutboundFrame(binary: frame.opcode == .binary, buffer: payload), context: context)
            case .broker:
                handleBrokerMessage(context: context, binary: frame.opcode == .binary, payload: payload)
            case .upstream:
                connection.upstream?.enqueue(binary: frame.opcode == .binary, data: payload)
            }
        case .ping:
            guard !sentClose else { return }
            enqueue(opcode: .pong, payload: frame.unmaskedData, context: context)
        case .pong:
            pingOutstandingSince = nil
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
                enqueue(opcode: .connectionClose, payload: reply, context: context)
                flushOutput(context: context)?.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            }
        default:
            close(context: context, code: .protocolError, reason: "unknown_opcode")
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        publisher.wakeSubscribers()
        reportTraffic()
        context.fireChannelReadComplete()
    }

    /// Adds what this session moved since the last report to the gateway's counters, once at least
    /// `reportEvery` messages are unreported (or when `force`d: by the heartbeat and at the end). The counters
    /// are shared by every event loop; adding to them per read or per flush cost fan-out throughput (the
    /// cache line moving between cores), so a busy session reports every few dozen messages and a quiet
    /// one at its next ping.
    private func reportTraffic(force: Bool = false) {
        let unreportedIn = messagesIn - reported.messagesIn
        let unreportedOut = messagesOut - reported.messagesOut
        guard force || unreportedIn + unreportedOut >= Self.reportEvery else { return }
        let metrics = connection.gateway.metrics
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

    /// The frame's payload, unmasked eight bytes at a time: NIO's `unmaskedData` goes byte by byte, which
    /// showed in profiles of the message path.
    static func unmaskedPayload(of frame: WebSocketFrame) -> ByteBuffer {
        guard let key = frame.maskKey else { return frame.data }
        var data = frame.data
        data.withUnsafeMutableReadableBytes { unmask($0, key: key, offset: 0) }
        return data
    }

    /// Unmasks `bytes` in place, which start `offset` bytes into the frame's payload.
    static func unmask(_ bytes: UnsafeMutableRawBufferPointer, key: WebSocketMaskingKey, offset: Int) {
        let k = (key[offset & 3], key[(offset + 1) & 3], key[(offset + 2) & 3], key[(offset + 3) & 3])
        let word = withUnsafeBytes(of: (k.0, k.1, k.2, k.3, k.0, k.1, k.2, k.3)) { $0.loadUnaligned(as: UInt64.self) }
        var index = 0
        while index + 8 <= bytes.count {
            let masked = bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            bytes.storeBytes(of: masked ^ word, toByteOffset: index, as: UInt64.self)
            index += 8
        }
        while index < bytes.count {
            bytes[index] ^= key[(offset + index) & 3]
            index += 1
        }
    }

    /// Sends a data frame, counting it against the outbound bound: a client that does not read closes with
    /// 1013 instead of making the gateway buffer without limit.
    func send(_ frame: OutboundFrame, context: ChannelHandlerContext) {
        guard !sentClose else { return }
        let size = frame.buffer.readableBytes
        if queuedBytes + size > configuration.maxOutboundBytes {
            connection.gateway.metrics.slowConsumerCloses.increment()
            connection.gateway.audit(
                connection.auditRecord(
                    event: "session_slow_consumer", decision: "deny", reason: "slow_consumer",
                    detail: "\(queuedBytes) bytes already queued towards the client (limit \(configuration.maxOutboundBytes))"))
            close(context: context, code: .unknown(1013), reason: "slow_consumer")
            return
        }
        queuedBytes += size
        messagesOut += 1
        bytesOut += size
        outputPayloadBytes += size
        enqueue(opcode: frame.binary ? .binary : .text, payload: frame.buffer, context: context)
    }

    /// Appends a frame to this tick's output and makes sure the output is flushed at the end of the tick.
    ///
    /// Written by hand because of what the library does per frame: NIO's frame encoder writes a frame's header
    /// and payload as two buffers, and NIOSSL seals every buffer as a TLS record of its own, so a flush per
    /// delivery cost two records and a syscall. Frames encoded here (a server's frames are unmasked, so the
    /// header is just 2, 4 or 10 bytes, RFC 6455 §5.2) leave in one buffer per tick: one TLS record per 16 KiB.
    private func enqueue(opcode: WebSocketOpcode, payload: ByteBuffer, context: ChannelHandlerContext) {
        guard encodedFrameWriter != nil else { return }
        let length = payload.readableBytes
        var buffer = output.take() ?? context.channel.allocator.buffer(capacity: Swift.max(4096, length + 10))
        buffer.writeInteger(0x80 | UInt8(webSocketOpcode: opcode))
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
        output = buffer
        if buffer.readableBytes >= 64 * 1024 {
            flushOutput(context: context)
        } else if !flushScheduled {
            flushScheduled = true
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.flushScheduled = false
                handler.flushOutput(context: context)
            }
        }
    }

    /// Hands the output to TLS now; the future completes when it has been written to the socket.
    @discardableResult
    private func flushOutput(context: ChannelHandlerContext) -> EventLoopFuture<Void>? {
        guard let buffer = output.take(), let writer = encodedFrameWriter else { return nil }
        let size = outputPayloadBytes
        outputPayloadBytes = 0
        let promise = context.eventLoop.makePromise(of: Void.self)
        if size > 0 {
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            promise.futureResult.whenComplete { _ in loopBound.value.queuedBytes -= size }
        }
        writer.writeAndFlush(NIOAny(buffer), promise: promise)
        reportTraffic()
        return promise.futureResult
    }

    func deliver(_ frame: OutboundFrame, context: ChannelHandlerContext) {
        if deniesSomeTopics, let topic = frame.topic, !permissions.mayReceive(topic) { return }
        send(frame, context: context)
    }

    /// Forwards the backend's messages to the client until the backend closes, then closes the client with
    /// the backend's code.
    private func relay(
        from backend: WebSocketConnection, to client: any Channel,
        loopBound: NIOLoopBound<(WebSocketSessionHandler, ChannelHandlerContext)>
    ) {
        let eventLoop = loopBound.eventLoop
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
                eventLoop.execute {
                    let (handler, context) = loopBound.value
                    handler.send(frame, context: context)
                }
            }
            guard client.isActive else { return }
            let closeCode = WebSocketErrorCode(codeNumber: Int(code))
            eventLoop.execute {
                let (handler, context) = loopBound.value
                handler.close(context: context, code: closeCode, reason: "upstream_closed")
            }
        }
    }

    /// The heartbeat: ping, and close a peer that left the previous ping unanswered past the timeout.
    private func beat(context: ChannelHandlerContext) {
        reportTraffic(force: true)
        guard !sentClose else { return }
        if let since = pingOutstandingSince {
            if NIODeadline.now() - since >= .milliseconds(Int64(configuration.pingTimeout * 1000)) {
                close(context: context, code: .goingAway, reason: "heartbeat_timeout")
                context.close(promise: nil)
            }
            return
        }
        pingOutstandingSince = .now()
        enqueue(opcode: .ping, payload: context.channel.allocator.buffer(string: "portcullis"), context: context)
    }

    /// Starts the close handshake with `code`; the connection closes once the peer answers or a few
    /// seconds pass. With `tellingPeer`, the close frame carries `reason` for the client to read.
    func close(context: ChannelHandlerContext, code: WebSocketErrorCode, reason: String? = nil, tellingPeer: Bool = false) {
        guard !sentClose else { return }
        sentClose = true
        if closeCode == nil {
            closeCode = Int(UInt16(webSocketErrorCode: code))
            closeReason = reason
        }
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: code)
        if tellingPeer, let reason { data.writeString(String(reason.prefix(123))) }
        enqueue(opcode: .connectionClose, payload: data, context: context)
        flushOutput(context: context)
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(5)) {
            loopBound.value.close(promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is Gateway.GatewayShutdown {
            close(context: context, code: .goingAway, reason: "shutdown")
            return
        }
        if let verdict = event as? SessionVerdict {
            switch verdict {
            case .keep(let permissions):
                self.permissions = permissions
                connection.permissions = permissions
                lastAllowedPublishTopic = nil
                dropSubscriptionsNoLongerGranted(context: context)
            case .end(let reason, let detail):
                end(context: context, reason: reason, detail: "after a reload: " + detail)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Ends an admitted session the gateway no longer admits: audited with why, then closed with 1008 and the
    /// reason in the close frame.
    private func end(context: ChannelHandlerContext, reason: String, detail: String) {
        guard !sentClose else { return }
        connection.gateway.metrics.sessionsEnded.increment()
        connection.gateway.audit(
            connection.auditRecord(event: "session_terminated", decision: "deny", reason: reason, detail: detail))
        close(context: context, code: .policyViolation, reason: reason, tellingPeer: true)
    }

    /// A `notice` message `certificateExpiryWarning` seconds before `notValidAfter` (unless `warned`), then the
    /// end of the session at it.
    private func scheduleExpiry(at notValidAfter: Date, warned: Bool = false, context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let remaining = notValidAfter.timeIntervalSinceNow
        let warning = configuration.certificateExpiryWarning
        if !warned, warning > 0 {
            let delay = TimeAmount.nanoseconds(Int64(max(0, remaining - warning) * 1e9))
            expiryTask = context.eventLoop.scheduleTask(in: delay) {
                let (handler, context) = loopBound.value
                handler.warnOfExpiry(at: notValidAfter, context: context)
                handler.scheduleExpiry(at: notValidAfter, warned: true, context: context)
            }
            return
        }
        expiryTask = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(max(0, remaining) * 1e9))) {
            let (handler, context) = loopBound.value
            handler.end(
                context: context, reason: CertificateRefusal.expired.rawValue,
                detail: "the client certificate (or one of its chain) expired at \(AuditTime.format(notValidAfter))")
        }
    }

    private func warnOfExpiry(at notValidAfter: Date, context: ChannelHandlerContext) {
        guard !sentClose else { return }
        let seconds = Int(max(0, notValidAfter.timeIntervalSinceNow).rounded())
        let notice = MessagingProtocol.encodeNotice(
            code: "certificate_expiring",
            message: "the client certificate expires at \(AuditTime.format(notValidAfter)) (in \(seconds) s); "
                + "the session will be closed then: reconnect with a renewed certificate")
        send(OutboundFrame(binary: false, buffer: context.channel.allocator.buffer(bytes: notice)), context: context)
        connection.gateway.audit(
            connection.auditRecord(
                event: "session_expiry_warning", reason: "certificate_expiring",
                detail: "warned \(seconds) s before the certificate's not-after \(AuditTime.format(notValidAfter))"))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // One place maps protocol errors to close codes (RFC 6455 §7.4.1).
        switch error {
        case NIOWebSocketError.invalidFrameLength:
            close(context: context, code: .messageTooLarge, reason: "message_too_large")
        case is NIOWebSocketError:
            close(context: context, code: .protocolError, reason: "protocol_error")
        case NIOWebSocketFrameAggregator.Error.accumulatedFrameSizeIsTooLarge:
            close(context: context, code: .messageTooLarge, reason: "message_too_large")
        case is NIOWebSocketFrameAggregator.Error:
            close(context: context, code: .protocolError, reason: "protocol_error")
        default:
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Frames this session published in its last read still reach their subscribers.
        publisher.wakeSubscribers()
        reportTraffic(force: true)
        sessionsOpenGauge?.decrement()
        heartbeat?.cancel()
        heartbeat = nil
        expiryTask?.cancel()
        expiryTask = nil
        if let subscriber {
            for filter in subscriptions {
                connection.gateway.broker.unsubscribe(filter, subscriber)
                connection.gateway.usage.releaseSubscription(identity)
            }
        }
        // The subscriber's delivery closure holds this handler: drop it so neither outlives the connection.
        subscriber = nil
        // Both sides close together: the backend gets the client's close code.
        connection.upstream?.enqueueClose(code: UInt16(closeCode.map { $0 == 1005 || $0 == 1006 ? 1001 : $0 } ?? 1001))
        var record = connection.auditRecord(event: "session_closed", reason: closeReason)
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
