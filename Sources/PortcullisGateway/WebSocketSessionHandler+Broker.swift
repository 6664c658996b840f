import NIOCore
import NIOWebSocket
import PortcullisAudit
import PortcullisPolicy
import PortcullisProtocol

/// The broker route: requests decoded from frames, checked against the session's permissions and its
/// identity's limits, answered with `ack` or `error` frames.
extension WebSocketSessionHandler {
    func handleBrokerMessage(context: ChannelHandlerContext, binary: Bool, payload: ByteBuffer) {
        let limits = permissions.limits
        if let maximum = limits.maxMessageBytes, payload.readableBytes > maximum {
            close(context: context, code: .messageTooLarge, reason: "message_too_large")
            return
        }
        let decoded: Result<MessagingProtocol.Request, MessagingProtocol.DecodingError> = payload.withUnsafeReadableBytes { bytes in
            Result { () throws(MessagingProtocol.DecodingError) in
                binary
                    ? try MessagingProtocol.decodeRequest(binary: bytes, previousTopic: lastAllowedPublishTopic)
                    : try MessagingProtocol.decodeRequest(text: bytes)
            }
        }
        let request: MessagingProtocol.Request
        switch decoded {
        case .success(let value):
            request = value
        case .failure(let error):
            refuse(context: context, id: error.id, code: error.code, message: error.message, topic: nil, violation: true)
            return
        }
        switch request {
        case .subscribe(let filter, let id):
            subscribe(context: context, filter: filter, id: id)
        case .unsubscribe(let filter, let id):
            if subscriptions.remove(filter) != nil, let subscriber {
                connection.gateway.broker.unsubscribe(filter, subscriber)
                connection.gateway.usage.releaseSubscription(identity)
            }
            if let id { sendAck(context: context, id: id) }
        case .publish(let topic, let body, let id):
            publish(context: context, topic: topic, body: body, id: id, size: payload.readableBytes)
        }
    }

    /// After a reload: ends the subscriptions the new grants no longer allow, telling the client with a
    /// `subscription_revoked` notice and auditing each.
    func dropSubscriptionsNoLongerGranted(context: ChannelHandlerContext) {
        for filter in subscriptions.sorted() {
            guard case .forbidden(let why) = permissions.maySubscribe(to: filter) else { continue }
            subscriptions.remove(filter)
            if let subscriber {
                connection.gateway.broker.unsubscribe(filter, subscriber)
                connection.gateway.usage.releaseSubscription(identity)
            }
            connection.gateway.metrics.aclDenials.increment()
            var record = connection.auditRecord(
                event: "message_denied", decision: "deny", reason: "forbidden",
                detail: "after a reload: the subscription was removed: \(why)")
            record.topic = filter
            connection.gateway.audit(record)
            let notice = MessagingProtocol.encodeNotice(
                code: "subscription_revoked", message: "subscription to '\(filter)' removed: \(why)")
            send(OutboundFrame(binary: false, buffer: context.channel.allocator.buffer(bytes: notice)), context: context)
        }
    }

    private func subscribe(context: ChannelHandlerContext, filter: String, id: [UInt8]?) {
        if let problem = Topic.problem(withFilter: filter) {
            refuse(context: context, id: id, code: "invalid_topic", message: problem, topic: filter, violation: true)
            return
        }
        if case .forbidden(let why) = permissions.maySubscribe(to: filter) {
            refuse(context: context, id: id, code: "forbidden", message: why, topic: filter, violation: true)
            return
        }
        if !subscriptions.contains(filter) {
            guard connection.gateway.usage.reserveSubscription(identity, limit: permissions.limits.subscriptions)
            else {
                refuse(
                    context: context, id: id, code: "subscription_limit",
                    message: "at most \(permissions.limits.subscriptions ?? 0) subscriptions for this identity",
                    topic: filter, violation: false)
                return
            }
            subscriptions.insert(filter)
            if let subscriber { connection.gateway.broker.subscribe(filter, subscriber) }
        }
        if let id { sendAck(context: context, id: id) }
    }

    private func publish(
        context: ChannelHandlerContext, topic: String, body: MessagingProtocol.Payload, id: [UInt8]?, size: Int
    ) {
        guard admitPublish(context: context, topic: topic, id: id, size: size) else { return }
        let frame: OutboundFrame
        switch body {
        case .binary(let payload):
            var buffer = deliveryBuffer(topic: topic, payloadBytes: payload.count, context: context)
            buffer.writeBytes(payload)
            frame = OutboundFrame(binary: true, buffer: buffer, topic: topic)
        case .json:
            let (binary, bytes) = MessagingProtocol.encodeMessage(topic: topic, from: identity, payload: body)
            frame = OutboundFrame(binary: binary, buffer: context.channel.allocator.buffer(bytes: bytes), topic: topic)
        }
        connection.gateway.broker.publish(frame, to: topic, from: &publisher)
        if let id { sendAck(context: context, id: id) }
    }

    /// A binary publish (`docs/protocol.md`) taken straight from the masked frame: the payload is unmasked
    /// once, into the delivery buffer, which is the only allocation a message needs. Returns false, having
    /// done nothing, for anything but a well-formed publish within the size limit; ``handleBrokerMessage``
    /// then answers it as usual.
    func publishBinaryFrame(context: ChannelHandlerContext, frame: WebSocketFrame) -> Bool {
        guard let key = frame.maskKey else { return false }
        let data = frame.data
        let size = data.readableBytes
        if let maximum = permissions.limits.maxMessageBytes, size > maximum { return false }
        guard size >= 3 else { return false }
        // The header is read straight from the masked bytes: going through ByteBufferView and the masking key's
        // subscript per byte cost a retain and release each, which showed in profiles of the message path.
        let mask = (key[0], key[1], key[2], key[3])
        let previous = lastAllowedPublishTopic
        let parsed = data.withUnsafeReadableBytes { raw -> (topic: String, length: Int)? in
            func unmasked(_ offset: Int) -> UInt8 {
                let byte: UInt8
                switch offset & 3 {
                case 0: byte = mask.0
                case 1: byte = mask.1
                case 2: byte = mask.2
                default: byte = mask.3
                }
                return raw[offset] ^ byte
            }
            guard unmasked(0) == MessagingProtocol.binaryPublish else { return nil }
            let topicLength = Int(unmasked(1)) << 8 | Int(unmasked(2))
            guard size >= 3 + topicLength else { return nil }
            if var previous, previous.utf8.count == topicLength,
                previous.withUTF8({ bytes in (0..<topicLength).allSatisfy { bytes[$0] == unmasked(3 + $0) } })
            {
                return (previous, topicLength)
            }
            let decoded = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: topicLength) { topic -> String? in
                for index in 0..<topicLength { topic[index] = unmasked(3 + index) }
                return String(validating: topic, as: UTF8.self)
            }
            return decoded.map { ($0, topicLength) }
        }
        guard let (topic, topicLength) = parsed else { return false }
        guard admitPublish(context: context, topic: topic, id: nil, size: size) else { return true }
        let payloadOffset = 3 + topicLength
        var buffer = deliveryBuffer(topic: topic, payloadBytes: size - payloadOffset, context: context)
        let payloadStart = buffer.writerIndex
        buffer.writeImmutableBuffer(data.getSlice(at: data.readerIndex + payloadOffset, length: size - payloadOffset)!)
        buffer.withUnsafeMutableReadableBytes { bytes in
            Self.unmask(UnsafeMutableRawBufferPointer(rebasing: bytes[payloadStart...]), key: key, offset: payloadOffset)
        }
        connection.gateway.broker.publish(OutboundFrame(binary: true, buffer: buffer, topic: topic), to: topic, from: &publisher)
        return true
    }

    /// A buffer holding a binary delivery's prefix (topic and sender, the same for every publish to a topic),
    /// with room for the payload.
    private func deliveryBuffer(topic: String, payloadBytes: Int, context: ChannelHandlerContext) -> ByteBuffer {
        if deliveryPrefix?.topic != topic {
            deliveryPrefix = (topic, MessagingProtocol.binaryMessagePrefix(topic: topic, from: identity))
        }
        let prefix = deliveryPrefix!.bytes
        var buffer = context.channel.allocator.buffer(capacity: prefix.count + payloadBytes)
        buffer.writeBytes(prefix)
        return buffer
    }

    /// Checks a publish against the topic rules, the session's grants and the identity's rate limits; a
    /// refusal is answered and audited here.
    private func admitPublish(context: ChannelHandlerContext, topic: String, id: [UInt8]?, size: Int) -> Bool {
        // A session mostly publishes to the same topic again: its verdict is remembered for the last one.
        if topic != lastAllowedPublishTopic {
            if let problem = Topic.problem(withName: topic) {
                refuse(context: context, id: id, code: "invalid_topic", message: problem, topic: topic, violation: true)
                return false
            }
            if case .forbidden(let why) = permissions.mayPublish(to: topic) {
                refuse(context: context, id: id, code: "forbidden", message: why, topic: topic, violation: true)
                return false
            }
            lastAllowedPublishTopic = topic
        }
        let limits = permissions.limits
        if limits.messagesPerSecond != nil || limits.bytesPerSecond != nil {
            let now = Double(NIODeadline.now().uptimeNanoseconds) / 1e9
            guard connection.gateway.usage.admitMessage(identity, bytes: size, limits: limits, now: now) else {
                rateLimited(context: context, id: id, topic: topic)
                return false
            }
        }
        return true
    }

    private func rateLimited(context: ChannelHandlerContext, id: [UInt8]?, topic: String) {
        connection.gateway.metrics.rateLimitHits.increment()
        let limits = permissions.limits
        // One audit record a second at most: a flood must not flood the audit log too.
        let now = NIODeadline.now()
        if lastRateLimitAudit.map({ now - $0 >= .seconds(1) }) ?? true {
            lastRateLimitAudit = now
            var record = connection.auditRecord(
                event: "message_denied", decision: "deny", reason: "rate_limited",
                detail: "over \(limits.messagesPerSecond.map { "\(Int($0)) messages/s" } ?? "")"
                    + "\(limits.bytesPerSecond.map { " \(Int($0)) bytes/s" } ?? "") (\(limits.onRateLimit.rawValue))")
            record.topic = topic
            connection.gateway.audit(record)
        }
        if limits.onRateLimit == .close {
            close(context: context, code: .policyViolation, reason: "rate_limited")
        } else {
            sendError(context: context, id: id, code: "rate_limited", message: "rate limit exceeded; message dropped")
        }
    }

    /// Answers an error frame and audits it; a violation counts towards closing the session with 1008.
    private func refuse(
        context: ChannelHandlerContext, id: [UInt8]?, code: String, message: String, topic: String?, violation: Bool
    ) {
        if code == "forbidden" { connection.gateway.metrics.aclDenials.increment() }
        var record = connection.auditRecord(event: "message_denied", decision: "deny", reason: code, detail: message)
        record.topic = topic
        connection.gateway.audit(record)
        sendError(context: context, id: id, code: code, message: message)
        guard violation else { return }
        violations += 1
        if violations >= permissions.limits.maxViolations {
            close(context: context, code: .policyViolation, reason: "too_many_violations")
        }
    }

    private func sendAck(context: ChannelHandlerContext, id: [UInt8]) {
        send(OutboundFrame(binary: false, buffer: context.channel.allocator.buffer(bytes: MessagingProtocol.encodeAck(id: id))), context: context)
    }

    private func sendError(context: ChannelHandlerContext, id: [UInt8]?, code: String, message: String) {
        let bytes = MessagingProtocol.encodeError(id: id, code: code, message: message)
        send(OutboundFrame(binary: false, buffer: context.channel.allocator.buffer(bytes: bytes)), context: context)
    }
}
