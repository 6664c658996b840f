import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PortcullisAudit
import PortcullisNATS
import PortcullisPolicy
import PortcullisProtocol

/// The shared broker: what joins this gateway's in-process broker to the others' through NATS.
///
/// - Every admitted publish goes to NATS on its topic's subject (``SubjectMapping``), with the sender's verified
///   identity and the payload's format in headers; the local sessions get it from the local broker as before.
/// - The gateway subscribes on NATS once for each filter its sessions hold, and delivers what arrives to its
///   local sessions, stamped with the sender NATS carried.
/// - Exactly once per subscriber: the connection's `CONNECT` turns echo off (the gateway does not get its own
///   publishes back), and all of the gateway's subscriptions join one queue group of its own, so overlapping
///   filters (`devices/+/telemetry`, `devices/7/telemetry`) bring a message once; the local broker then gives it
///   to every session whose filter matches.
/// - Only what the gateway would itself have sent is delivered: a canonical subject of a valid topic under the
///   prefix, a valid identity, a known format and, for JSON, exactly one value. NATS is trusted to carry, not
///   to vouch: its account must let only the gateways publish under the prefix (docs/cluster.md).
final class ClusterLink: Sendable {
    static let senderHeader = "Portcullis-Sender"
    static let formatHeader = "Portcullis-Format"

    let mapping: SubjectMapping
    let connection: NATSConnection
    /// This gateway's queue group: unique to the process.
    let queueGroup = "portcullis-gateway-" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
    private let broker: Broker
    private let metrics: ClusterMetrics
    private let audit: @Sendable (AuditRecord) -> Void
    private let logger: Logger

    private struct Outage {
        /// Why NATS is unreachable, while it is; nil while connected.
        var reason: String? = "not connected yet"
        var since = Date()
        /// Publishes refused `unavailable` during this outage.
        var refused = 0
        var audited = false
        var refusalWarnings = LogThrottle()
        var serverErrorLogs = LogThrottle()
    }

    /// At most one log line every 10 s for a failure that can repeat on every message.
    struct LogThrottle {
        private var last: Date?

        /// True, and the 10 s start again, when the last line allowed was 10 s ago or more.
        mutating func allows(now: Date = Date()) -> Bool {
            if let last, now.timeIntervalSince(last) < 10 { return false }
            last = now
            return true
        }
    }
    private let outage = NIOLockedValueBox(Outage())
    /// The NATS subscriptions of each filter the gateway's sessions hold.
    private let filters = NIOLockedValueBox([String: [UInt64]]())

    /// What the gateway does with CRLs the others announce, and when to announce its own.
    struct CRLSharing: Sendable {
        var subscription: UInt64
        var received: @Sendable ([UInt8]) -> Void
        var connected: @Sendable () -> Void
    }
    private let crlSharing = NIOLockedValueBox<CRLSharing?>(nil)

    init(
        mapping: SubjectMapping, settings: NATSConnection.Settings, eventLoop: any EventLoop, broker: Broker,
        metrics: ClusterMetrics, logger: Logger, audit: @escaping @Sendable (AuditRecord) -> Void
    ) {
        self.mapping = mapping
        self.broker = broker
        self.metrics = metrics
        self.logger = logger
        self.audit = audit
        // The callbacks need `self`, which exists only once every property is set: they reach it through a box,
        // weakly, so that the connection does not keep its link alive.
        let link = WeakLink()
        connection = NATSConnection(
            settings: settings, eventLoop: eventLoop,
            onMessages: { messages in link.value?.receive(messages) },
            onStateChange: { state in link.value?.stateChanged(state) },
            onServerError: { text in link.value?.serverError(text) })
        link.value = self
    }

    func start() {
        connection.start()
    }

    func stop() {
        connection.stop()
    }

    /// The credentials the next connection to NATS signs in with; ``NATSConnection/renew(_:)``.
    var credentials: NATSConnection.Credentials {
        get { connection.credentials }
        set { connection.renew(newValue) }
    }

    /// Why NATS is unreachable, or nil while it is connected.
    var unavailableReason: String? { outage.withLockedValue { $0.reason } }

    // MARK: Revocation lists

    /// Passes CRLs between the gateways: each announces its CRL file on a subject no topic maps to (when it changes,
    /// and on every connection, so that a gateway that was away catches up); `received` gets the others' (every
    /// gateway's, not one of a queue group), `connected` is called on every connection.
    func shareCertificateRevocationLists(
        received: @escaping @Sendable ([UInt8]) -> Void, connected: @escaping @Sendable () -> Void
    ) {
        let subscription = connection.subscribe(mapping.certificateRevocationListSubject, queueGroup: nil)
        crlSharing.withLockedValue { $0 = CRLSharing(subscription: subscription, received: received, connected: connected) }
    }

    /// Sends this gateway's CRL file (PEM) to the others; false when NATS did not take it.
    @discardableResult
    func announceCRL(_ pem: [UInt8]) -> Bool {
        connection.publish(subject: mapping.certificateRevocationListSubject, headers: [], payload: pem) == .sent
    }

    // MARK: Subscriptions

    /// The first local session subscribed to `filter`: subscribe on NATS. Called under the broker's lock, so
    /// that additions and removals reach NATS in the order they happened.
    func filterAdded(_ filter: String) {
        let sids = mapping.subjects(forFilter: filter).map { connection.subscribe($0, queueGroup: queueGroup) }
        filters.withLockedValue { $0[filter] = sids }
    }

    /// The last local session left `filter`: unsubscribe on NATS.
    func filterRemoved(_ filter: String) {
        for sid in filters.withLockedValue({ $0.removeValue(forKey: filter) }) ?? [] { connection.unsubscribe(sid) }
    }

    // MARK: Publishing

    enum ForwardResult: Equatable {
        case sent
        case unavailable
        case tooLarge(limit: Int)
    }

    /// Sends an admitted publish to the other gateways. `binary`: the payload is bytes, else one JSON value.
    func forward(topic: String, sender: String, binary: Bool, payload: some Collection<UInt8>) -> ForwardResult {
        let headers = [
            NATSHeader(name: Self.senderHeader, value: Self.senderHeaderValue(sender)),
            NATSHeader(name: Self.formatHeader, value: binary ? "binary" : "json"),
        ]
        switch connection.publish(subject: mapping.subject(forTopic: topic), headers: headers, payload: payload) {
        case .sent:
            return .sent
        case .tooLarge(let limit):
            return .tooLarge(limit: limit)
        case .unavailable:
            metrics.publishesUnavailable.increment()
            let warn = outage.withLockedValue { outage -> Bool in
                // What the outage record counts; a backlog while connected is not an outage.
                if outage.reason != nil { outage.refused += 1 }
                return outage.refusalWarnings.allows()
            }
            if warn {
                logger.warning(
                    "publishes refused: NATS is unreachable (or too much is waiting for it)",
                    metadata: ["nats.reason": "\(unavailableReason ?? "backlog")"])
            }
            return .unavailable
        }
    }

    // MARK: Receiving

    /// Delivers messages from the other gateways to the local sessions; on the NATS connection's event loop,
    /// all the messages of one read before the subscribers on other loops are woken.
    private func receive(_ messages: [NATSMessage]) {
        var publisher = Broker.Publisher()
        let sharing = crlSharing.withLockedValue { $0 }
        for message in messages {
            if message.subject == mapping.certificateRevocationListSubject {
                // A `#` subscription's `PREFIX.>` brings it too: only the CRL subscription's copy is taken.
                if message.sid == sharing?.subscription { sharing?.received(message.payload) }
                continue
            }
            guard let frame = frame(of: message) else {
                metrics.messagesRefused.increment()
                continue
            }
            metrics.messagesIn.increment()
            broker.publish(frame.frame, to: frame.topic, from: &publisher)
        }
        publisher.wakeSubscribers()
    }

    /// The frame local subscribers get for `message`, or nil when it is not one the gateways send.
    func frame(of message: NATSMessage) -> (frame: OutboundFrame, topic: String)? {
        guard message.headerProblem == nil, let topic = mapping.topic(forSubject: message.subject) else { return nil }
        var sender: String?
        var format: String?
        for header in message.headers {
            switch header.name {
            case Self.senderHeader:
                guard sender == nil, let identity = Self.identity(fromSenderHeader: header.value) else { return nil }
                sender = identity
            case Self.formatHeader:
                guard format == nil else { return nil }
                format = header.value
            default:
                continue
            }
        }
        guard let sender else { return nil }
        switch format {
        case "binary":
            var bytes = MessagingProtocol.binaryMessagePrefix(topic: topic, from: sender)
            bytes += message.payload
            return (OutboundFrame(binary: true, buffer: ByteBuffer(bytes: bytes), topic: topic), topic)
        case "json":
            guard Self.isOneJSONValue(message.payload) else { return nil }
            let (binary, bytes) = MessagingProtocol.encodeMessage(topic: topic, from: sender, payload: .json(message.payload))
            return (OutboundFrame(binary: binary, buffer: ByteBuffer(bytes: bytes), topic: topic), topic)
        default:
            return nil
        }
    }

    /// The `Portcullis-Sender` value for `identity`: `%`, space and tab written as `%25`, `%20` and `%09`. A header
    /// value loses the blanks around it on the way (`alice ` would arrive as `alice`, another identity); escaped,
    /// every identity arrives as itself.
    static func senderHeaderValue(_ identity: String) -> String {
        guard identity.utf8.contains(where: { $0 == UInt8(ascii: "%") || $0 == 0x20 || $0 == 0x09 }) else { return identity }
        var value: [UInt8] = []
        for byte in identity.utf8 {
            switch byte {
            case UInt8(ascii: "%"): value += Array("%25".utf8)
            case 0x20: value += Array("%20".utf8)
            case 0x09: value += Array("%09".utf8)
            default: value.append(byte)
            }
        }
        return String(decoding: value, as: UTF8.self)
    }

    /// The identity a `Portcullis-Sender` value names, or nil when it is not what ``senderHeaderValue(_:)`` writes.
    static func identity(fromSenderHeader value: String) -> String? {
        var bytes: [UInt8] = []
        var rest = value.utf8[...]
        while let byte = rest.popFirst() {
            guard byte == UInt8(ascii: "%") else {
                // A blank here was not written by a gateway.
                guard byte != 0x20, byte != 0x09 else { return nil }
                bytes.append(byte)
                continue
            }
            switch (rest.popFirst(), rest.popFirst()) {
            case (UInt8(ascii: "2"), UInt8(ascii: "5")): bytes.append(UInt8(ascii: "%"))
            case (UInt8(ascii: "2"), UInt8(ascii: "0")): bytes.append(0x20)
            case (UInt8(ascii: "0"), UInt8(ascii: "9")): bytes.append(0x09)
            default: return nil
            }
        }
        guard let identity = String(validating: bytes, as: UTF8.self), Identity.problem(withName: identity) == nil else {
            return nil
        }
        return identity
    }

    /// Whether `payload` is exactly one JSON value: it goes into the delivery as the publisher's payload, and
    /// `1,"from":"admin"` would put a second sender beside it.
    static func isOneJSONValue(_ payload: [UInt8]) -> Bool {
        let wrapped = Array(#"{"p":"#.utf8) + payload + [UInt8(ascii: "}")]
        return wrapped.withUnsafeBytes { bytes in
            (try? JSONObjectScanner.members(of: bytes))?.count == 1
        }
    }

    // MARK: Outages

    /// A `-ERR` from NATS: counted, and logged (at most every 10 s). A permissions violation leaves the connection
    /// open but drops what it refused: the account does not grant the gateways the prefix (docs/cluster.md).
    private func serverError(_ text: String) {
        metrics.serverErrors.increment()
        let log = outage.withLockedValue { $0.serverErrorLogs.allows() }
        if log { logger.error("NATS refused something the gateway sent", metadata: ["nats.error": "\(text)"]) }
    }

    private func stateChanged(_ state: NATSConnection.State) {
        switch state {
        case .connected:
            metrics.connected.set(to: 1)
            let ended = outage.withLockedValue { outage -> Outage? in
                defer { outage = Outage(reason: nil) }
                return outage.audited ? outage : nil
            }
            logger.notice("connected to NATS", metadata: ["nats.queue_group": "\(queueGroup)"])
            crlSharing.withLockedValue { $0 }?.connected()
            guard let ended else { return }
            var record = AuditRecord(event: "nats_recovered")
            record.count = ended.refused
            record.detail = "NATS is reachable again after \(Int(Date().timeIntervalSince(ended.since))) s; "
                + "\(ended.refused) publish(es) were refused unavailable meanwhile"
            audit(record)
        case .unavailable(let reason):
            metrics.connected.set(to: 0)
            metrics.connectionFailures.increment()
            let first = outage.withLockedValue { outage -> Bool in
                outage.reason = reason
                guard !outage.audited else { return false }
                outage.audited = true
                outage.since = Date()
                return true
            }
            guard first else { return }
            logger.error("NATS is unreachable: publishes are refused until it is back", metadata: ["nats.reason": "\(reason)"])
            var record = AuditRecord(event: "nats_unavailable", decision: "deny", reason: "nats_unavailable", detail: reason)
            record.detail = "\(reason); publishes are refused (unavailable) until NATS is back"
            audit(record)
        }
    }
}

/// The link a NATS connection reports to, held weakly. Set once, before the connection starts.
private final class WeakLink: @unchecked Sendable {
    weak var value: ClusterLink?
}
