import NIOCore
import NIOWebSocket
import PortcullisAudit
import PortcullisPolicy
import PortcullisProtocol

/// The `broker` route: requests decoded from messages, checked against the session's permissions and its
/// identity's limits, answered with `ack` or `error` messages; deliveries stamped with the sender's identity.
final class BrokerRoute: SessionRoute {
    private let context: SessionContext
    /// Dropped when the session ends, which breaks the cycle with the handler that holds this route.
    private var session: WebSocketProtocolHandler?
    private var subscriber: Subscriber?
    private var subscriptions: Set<String> = []
    private var violations = 0
    private var lastRateLimitAudit: NIODeadline?
    /// The topic this session last published to with the checks passed (forgotten when the grants change).
    private var lastAllowedPublishTopic: String?
    /// The binary delivery prefix for the last topic published to.
    private var deliveryPrefix: (topic: String, bytes: [UInt8])?
    /// This session as a publisher: who received its last topic, and who still needs waking for its frames.
    private var publisher = Broker.Publisher()
    /// The session's topic grants and limits, from admission and replaced when a reload changes them.
    private var permissions: MessagePermissions {
        didSet { deniesSomeTopics = !permissions.denySubscribe.isEmpty }
    }
    /// Whether any delivery can be refused. Read for every delivery instead of `permissions`: a `var` struct
    /// of arrays read from a class is copied (four retains and releases), which cost a tenth of fan-out
    /// throughput per CPU-second.
    private var deniesSomeTopics: Bool

    init(context: SessionContext) {
        self.context = context
        self.permissions = context.permissions
        self.deniesSomeTopics = !context.permissions.denySubscribe.isEmpty
    }

    private var identity: String { context.identity }

    func start(session: WebSocketProtocolHandler) {
        self.session = session
        guard let eventLoop = session.eventLoop else { return }
        // The subscriber only ever calls this on the session's event loop (it holds it in an NIOLoopBound):
        // a second NIOLoopBound here cost another in-event-loop check per delivery, which showed in fan-out
        // profiles. The cycle it makes with this route is broken in ``ended(closeCode:)``.
        subscriber = Subscriber(id: UInt64.random(in: 0...UInt64.max), eventLoop: eventLoop) { frame in
            self.deliver(frame)
        }
    }

    func received(_ message: InboundMessage) {
        guard let session, !session.isClosing else { return }
        if let maximum = permissions.limits.maxMessageBytes, message.count > maximum {
            session.close(code: .messageTooLarge, reason: "message_too_large")
            return
        }
        if message.binary, publishBinary(message) { return }
        let payload = message.payload
        let decoded: Result<MessagingProtocol.Request, MessagingProtocol.DecodingError> = payload.withUnsafeReadableBytes { bytes in
            Result { () throws(MessagingProtocol.DecodingError) in
                message.binary
                    ? try MessagingProtocol.decodeRequest(binary: bytes, previousTopic: lastAllowedPublishTopic)
                    : try MessagingProtocol.decodeRequest(text: bytes)
            }
        }
        let request: MessagingProtocol.Request
        switch decoded {
        case .success(let value):
            request = value
        case .failure(let error):
            refuse(id: error.id, code: error.code, message: error.message, topic: nil, violation: true)
            return
        }
        switch request {
        case .subscribe(let filter, let id):
            subscribe(filter: filter, id: id)
        case .unsubscribe(let filter, let id):
            if subscriptions.remove(filter) != nil, let subscriber {
                context.broker.unsubscribe(filter, subscriber)
                context.usage.releaseSubscription(identity)
            }
            if let id { sendAck(id: id) }
        case .publish(let topic, let body, let id):
            publish(topic: topic, body: body, id: id, size: payload.readableBytes)
        }
    }

    func readComplete() {
        publisher.wakeSubscribers()
    }

    func ended(closeCode: UInt16) {
        // Frames this session published in its last read still reach their subscribers.
        publisher.wakeSubscribers()
        if let subscriber, !subscriptions.isEmpty {
            context.broker.unsubscribe(subscriptions, subscriber)
            context.usage.releaseSubscription(identity, count: subscriptions.count)
        }
        // The subscriber's delivery closure holds this route: drop it so neither outlives the connection.
        subscriber = nil
        subscriptions = []
        session = nil
    }

    private func deliver(_ frame: OutboundFrame) {
        if deniesSomeTopics, let topic = frame.topic, !permissions.mayReceive(topic) { return }
        session?.send(frame)
    }

    /// After a reload: takes the new grants and ends the subscriptions they no longer allow, telling the
    /// client with a `subscription_revoked` notice and auditing each.
    func permissionsChanged(_ permissions: MessagePermissions) {
        self.permissions = permissions
        lastAllowedPublishTopic = nil
        for filter in subscriptions.sorted() {
            guard case .forbidden(let why) = permissions.maySubscribe(to: filter) else { continue }
            subscriptions.remove(filter)
            if let subscriber {
                context.broker.unsubscribe(filter, subscriber)
                context.usage.releaseSubscription(identity)
            }
            context.metrics.aclDenials.increment()
            var record = context.record(
                event: "message_denied", decision: "deny", reason: "forbidden",
                detail: "after a reload: the subscription was removed: \(why)")
            record.topic = filter
            context.audit(record)
            sendText(MessagingProtocol.encodeNotice(
                code: "subscription_revoked", message: "subscription to '\(filter)' removed: \(why)"))
        }
    }

    private func subscribe(filter: String, id: [UInt8]?) {
        if let problem = Topic.problem(withFilter: filter) {
            refuse(id: id, code: "invalid_topic", message: problem, topic: filter, violation: true)
            return
        }
        if case .forbidden(let why) = permissions.maySubscribe(to: filter) {
            refuse(id: id, code: "forbidden", message: why, topic: filter, violation: true)
            return
        }
        if !subscriptions.contains(filter) {
            guard context.usage.reserveSubscription(identity, limit: permissions.limits.subscriptions) else {
                refuse(
                    id: id, code: "subscription_limit",
                    message: "at most \(permissions.limits.subscriptions ?? 0) subscriptions for this identity",
                    topic: filter, violation: false)
                return
            }
            subscriptions.insert(filter)
            if let subscriber { context.broker.subscribe(filter, subscriber) }
        }
        if let id { sendAck(id: id) }
    }

    private func publish(topic: String, body: MessagingProtocol.Payload, id: [UInt8]?, size: Int) {
        guard admitPublish(topic: topic, id: id, size: size) else { return }
        if let cluster = context.cluster {
            let result: ClusterLink.ForwardResult
            switch body {
            case .binary(let payload): result = cluster.forward(topic: topic, sender: identity, binary: true, payload: payload)
            case .json(let raw): result = cluster.forward(topic: topic, sender: identity, binary: false, payload: raw)
            }
            guard forwarded(result, id: id, topic: topic) else { return }
        }
        let frame: OutboundFrame
        switch body {
        case .binary(let payload):
            var buffer = deliveryBuffer(topic: topic, payloadBytes: payload.count)
            buffer.writeBytes(payload)
            frame = OutboundFrame(binary: true, buffer: buffer, topic: topic)
        case .json:
            let (binary, bytes) = MessagingProtocol.encodeMessage(topic: topic, from: identity, payload: body)
            frame = OutboundFrame(binary: binary, buffer: ByteBuffer(bytes: bytes), topic: topic)
        }
        context.broker.publish(frame, to: topic, from: &publisher)
        if let id { sendAck(id: id) }
    }

    /// A binary publish (`docs/protocol.md`) taken straight from the message as it arrived (masked): the payload
    /// is unmasked once, into the delivery buffer, which is the only allocation a message needs. Returns false,
    /// having done nothing, for anything but a well-formed publish; ``received(_:)`` then answers it as usual.
    private func publishBinary(_ message: InboundMessage) -> Bool {
        let size = message.count
        guard size >= 3 else { return false }
        let header = message.withUnmaskedBytes(0..<3) { ($0[0], Int($0[1]) << 8 | Int($0[2])) }
        guard header.0 == MessagingProtocol.binaryPublish else { return false }
        let topicLength = header.1
        guard size >= 3 + topicLength else { return false }
        let previous = lastAllowedPublishTopic
        let parsed = message.withUnmaskedBytes(3..<(3 + topicLength)) { topicBytes -> String? in
            if var previous, previous.utf8.count == topicLength, previous.withUTF8({ $0.elementsEqual(topicBytes) }) {
                return previous
            }
            return String(validating: topicBytes, as: UTF8.self)
        }
        guard let topic = parsed else { return false }
        guard admitPublish(topic: topic, id: nil, size: size) else { return true }
        let payloadOffset = 3 + topicLength
        var buffer = deliveryBuffer(topic: topic, payloadBytes: size - payloadOffset)
        message.writeUnmasked(from: payloadOffset, into: &buffer)
        if let cluster = context.cluster {
            let payload = buffer.readableBytesView.dropFirst(buffer.readableBytes - (size - payloadOffset))
            guard forwarded(cluster.forward(topic: topic, sender: identity, binary: true, payload: payload), id: nil, topic: topic)
            else { return true }
        }
        context.broker.publish(OutboundFrame(binary: true, buffer: buffer, topic: topic), to: topic, from: &publisher)
        return true
    }

    /// A buffer holding a binary delivery's prefix (topic and sender, the same for every publish to a topic),
    /// with room for the payload.
    private func deliveryBuffer(topic: String, payloadBytes: Int) -> ByteBuffer {
        if deliveryPrefix?.topic != topic {
            deliveryPrefix = (topic, MessagingProtocol.binaryMessagePrefix(topic: topic, from: identity))
        }
        let prefix = deliveryPrefix!.bytes
        var buffer = (session?.allocator ?? ByteBufferAllocator()).buffer(capacity: prefix.count + payloadBytes)
        buffer.writeBytes(prefix)
        return buffer
    }

    /// Checks a publish against the topic rules, the session's grants and the identity's rate limits; a
    /// refusal is answered and audited here.
    private func admitPublish(topic: String, id: [UInt8]?, size: Int) -> Bool {
        // A session mostly publishes to the same topic again: its verdict is remembered for the last one.
        if topic != lastAllowedPublishTopic {
            if let problem = Topic.problem(withName: topic) {
                refuse(id: id, code: "invalid_topic", message: problem, topic: topic, violation: true)
                return false
            }
            if case .forbidden(let why) = permissions.mayPublish(to: topic) {
                refuse(id: id, code: "forbidden", message: why, topic: topic, violation: true)
                return false
            }
            lastAllowedPublishTopic = topic
        }
        let limits = permissions.limits
        if limits.messagesPerSecond != nil || limits.bytesPerSecond != nil {
            guard context.usage.admitMessage(identity, bytes: size, limits: limits, now: context.usage.now) else {
                rateLimited(id: id, topic: topic)
                return false
            }
        }
        return true
    }

    /// Whether the shared broker took the publish for the other gateways; when it did not, the client is told
    /// and the publish is delivered to nobody, here either: at most once, and never silently dropped.
    private func forwarded(_ result: ClusterLink.ForwardResult, id: [UInt8]?, topic: String) -> Bool {
        switch result {
        case .sent:
            return true
        case .unavailable:
            sendError(
                id: id, code: "unavailable",
                message: "the shared broker (NATS) is unreachable: the message was not delivered; try again later")
            return false
        case .tooLarge(let limit):
            refuse(
                id: id, code: "message_too_large",
                message: "over the shared broker's limit of \(limit) bytes a message (NATS max_payload): not delivered",
                topic: topic, violation: false)
            return false
        }
    }

    private func rateLimited(id: [UInt8]?, topic: String) {
        context.metrics.rateLimitHits.increment()
        let limits = permissions.limits
        // One audit record a second at most: a flood must not flood the audit log too.
        let now = NIODeadline.now()
        if lastRateLimitAudit.map({ now - $0 >= .seconds(1) }) ?? true {
            lastRateLimitAudit = now
            var record = context.record(
                event: "message_denied", decision: "deny", reason: "rate_limited",
                detail: "over \(limits.messagesPerSecond.map { "\(Int($0)) messages/s" } ?? "")"
                    + "\(limits.bytesPerSecond.map { " \(Int($0)) bytes/s" } ?? "") (\(limits.onRateLimit.rawValue))")
            record.topic = topic
            context.audit(record)
        }
        if limits.onRateLimit == .close {
            session?.close(code: .policyViolation, reason: "rate_limited")
        } else {
            sendError(id: id, code: "rate_limited", message: "rate limit exceeded; message dropped")
        }
    }

    /// Answers an error message and audits it; a violation counts towards closing the session with 1008.
    private func refuse(id: [UInt8]?, code: String, message: String, topic: String?, violation: Bool) {
        if code == "forbidden" { context.metrics.aclDenials.increment() }
        var record = context.record(event: "message_denied", decision: "deny", reason: code, detail: message)
        record.topic = topic
        context.audit(record)
        sendError(id: id, code: code, message: message)
        guard violation else { return }
        violations += 1
        if violations >= permissions.limits.maxViolations {
            session?.close(code: .policyViolation, reason: "too_many_violations")
        }
    }

    private func sendAck(id: [UInt8]) {
        sendText(MessagingProtocol.encodeAck(id: id))
    }

    private func sendError(id: [UInt8]?, code: String, message: String) {
        sendText(MessagingProtocol.encodeError(id: id, code: code, message: message))
    }

    private func sendText(_ bytes: [UInt8]) {
        guard let session else { return }
        session.send(OutboundFrame(binary: false, buffer: session.allocator.buffer(bytes: bytes)))
    }
}
