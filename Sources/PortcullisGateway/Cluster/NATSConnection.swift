import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import PortcullisNATS

/// The gateway's one connection to NATS, for the shared broker: it signs in, keeps the subscriptions it is
/// given (and makes them again after every reconnection), and sends publishes in batches.
///
/// It runs on one of the gateway's event loops. Sessions on any loop publish through a locked outbox that the
/// connection's loop writes out once per tick: one write for many publishes. While NATS is unreachable, a
/// publish is refused at once (``PublishResult/unavailable``) rather than held: delivery is at most once, and a
/// device told `unavailable` knows its message went nowhere.
final class NATSConnection: Sendable {
    struct Settings: Sendable {
        var host: String
        var port: Int
        var name: String
        /// Read from files; a reload may renew them (``NATSConnection/renew(_:)``).
        var credentials: Credentials
        /// The most waiting to be written; past it publishes are refused `unavailable` rather than held.
        var maximumPendingBytes = 8 << 20
        /// How long a connection may take from TCP connect to the server's first `PONG`.
        var handshakeTimeout: TimeAmount = .seconds(10)
        var pingInterval: TimeAmount = .seconds(20)
    }

    /// How the gateway proves itself to NATS, as read from its files at one time.
    struct Credentials: Sendable {
        /// TLS to NATS (a `tls://` URL), mutual when the context holds a certificate.
        var tls: NIOSSLContext?
        /// What `CONNECT` carries: a password, an NKey or a user JWT (these two sign the server's nonce), or nothing.
        var signIn: NATSSignIn = .anonymous
        /// SHA-256 over the files' paths and bytes: equal digests, the same credentials.
        var digest: [UInt8] = []
    }

    enum State: Sendable, Equatable {
        case connected
        /// Not connected, and why (the last error).
        case unavailable(reason: String)
    }

    enum PublishResult: Sendable, Equatable {
        case sent
        /// Not connected, or too much is waiting already.
        case unavailable
        /// Over the server's `max_payload` (its value): NATS would close the connection over it.
        case tooLarge(limit: Int)
    }

    private struct Shared {
        var outbox: [UInt8] = []
        var flushScheduled = false
        var connected = false
        /// The server's `max_payload` (headers and payload); 1 MiB, NATS's default, until `INFO` says.
        var maximumPayload = 1 << 20
        var subscriptions: [UInt64: (subject: String, queueGroup: String?)] = [:]
        var nextSID: UInt64 = 1
        var channel: (any Channel)?
        /// The connection being made or in use; a report from any other (a losing Happy Eyeballs attempt) is
        /// not about this one.
        var current: ObjectIdentifier?
        var stopped = false
        var failures = 0
    }

    let eventLoop: any EventLoop
    private let settings: Settings
    /// What the next connection signs in with; the one in use keeps what it signed in with.
    private let renewableCredentials: NIOLockedValueBox<Credentials>
    private let shared = NIOLockedValueBox(Shared())
    /// Messages of one read together, on `eventLoop`.
    private let onMessages: @Sendable ([NATSMessage]) -> Void
    /// Each change of state, on `eventLoop`.
    private let onStateChange: @Sendable (State) -> Void
    /// Each `-ERR` the server sends (some, a permissions violation, leave the connection open), on `eventLoop`.
    private let onServerError: @Sendable (String) -> Void

    init(
        settings: Settings, eventLoop: any EventLoop, onMessages: @escaping @Sendable ([NATSMessage]) -> Void,
        onStateChange: @escaping @Sendable (State) -> Void, onServerError: @escaping @Sendable (String) -> Void
    ) {
        self.settings = settings
        self.renewableCredentials = NIOLockedValueBox(settings.credentials)
        self.eventLoop = eventLoop
        self.onMessages = onMessages
        self.onStateChange = onStateChange
        self.onServerError = onServerError
    }

    /// Connects, and keeps connecting until ``stop()``.
    func start() {
        eventLoop.execute { self.connect() }
    }

    func stop() {
        let channel = shared.withLockedValue { shared -> (any Channel)? in
            shared.stopped = true
            shared.connected = false
            return shared.channel
        }
        channel?.close(promise: nil)
    }

    var isConnected: Bool { shared.withLockedValue { $0.connected } }

    /// The credentials the next connection signs in with.
    var credentials: Credentials { renewableCredentials.withLockedValue { $0 } }

    /// Credentials read again (a renewed `.creds` file, a rotated certificate): used from the next connection on.
    /// The connection in use stays: NATS signed it in, and ends it itself when what it was signed in with expires.
    func renew(_ renewed: Credentials) {
        renewableCredentials.withLockedValue { $0 = renewed }
    }

    /// Queues a publish of `payload` on `subject` for the next write.
    func publish(subject: String, headers: [NATSHeader], payload: some Collection<UInt8>) -> PublishResult {
        let (result, scheduleFlush) = shared.withLockedValue { shared -> (PublishResult, Bool) in
            guard shared.connected else { return (.unavailable, false) }
            // Headers are a few dozen bytes: a bound on them, not their exact length, is checked first.
            let headerBytes = headers.reduce(12) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
            let size = payload.count + headerBytes
            // Past what may wait to be written, a message could never be sent: too large, not unavailable.
            let limit = min(shared.maximumPayload, settings.maximumPendingBytes / 2)
            guard size <= limit else { return (.tooLarge(limit: limit), false) }
            guard shared.outbox.count + size + subject.utf8.count + 32 <= settings.maximumPendingBytes else {
                return (.unavailable, false)
            }
            do {
                try NATSClientCommand.appendPublish(to: &shared.outbox, subject: subject, headers: headers, payload: payload)
            } catch {
                // Subjects and headers are the gateway's own (a mapped topic, a verified identity): never refused.
                return (.unavailable, false)
            }
            defer { shared.flushScheduled = true }
            return (.sent, !shared.flushScheduled)
        }
        if scheduleFlush { eventLoop.execute { self.flush() } }
        return result
    }

    /// Subscribes to `subject` (in `queueGroup`) now if connected, and on every connection from now on; returns
    /// the subscription's number for ``unsubscribe(_:)``.
    func subscribe(_ subject: String, queueGroup: String?) -> UInt64 {
        let (sid, scheduleFlush) = shared.withLockedValue { shared -> (UInt64, Bool) in
            let sid = shared.nextSID
            shared.nextSID += 1
            shared.subscriptions[sid] = (subject, queueGroup)
            guard shared.connected, let command = try? NATSClientCommand.subscribe(subject: subject, queueGroup: queueGroup, sid: sid)
            else { return (sid, false) }
            shared.outbox += command
            defer { shared.flushScheduled = true }
            return (sid, !shared.flushScheduled)
        }
        if scheduleFlush { eventLoop.execute { self.flush() } }
        return sid
    }

    func unsubscribe(_ sid: UInt64) {
        let scheduleFlush = shared.withLockedValue { shared -> Bool in
            guard shared.subscriptions.removeValue(forKey: sid) != nil, shared.connected else { return false }
            shared.outbox += NATSClientCommand.unsubscribe(sid: sid)
            defer { shared.flushScheduled = true }
            return !shared.flushScheduled
        }
        if scheduleFlush { eventLoop.execute { self.flush() } }
    }

    /// Writes the outbox, unless the socket is full: then it waits for the channel to become writable again, and
    /// the outbox's bound refuses what comes meanwhile.
    fileprivate func flush() {
        let (bytes, channel) = shared.withLockedValue { shared -> ([UInt8], (any Channel)?) in
            shared.flushScheduled = false
            guard let channel = shared.channel, shared.connected, channel.isWritable, !shared.outbox.isEmpty else {
                return ([], nil)
            }
            let bytes = shared.outbox
            shared.outbox.removeAll(keepingCapacity: true)
            return (bytes, channel)
        }
        guard let channel, !bytes.isEmpty else { return }
        channel.writeAndFlush(channel.allocator.buffer(bytes: bytes), promise: nil)
    }

    private func connect() {
        if shared.withLockedValue({ $0.stopped }) { return }
        ClientBootstrap(group: eventLoop)
            .connectTimeout(settings.handshakeTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NATSClientHandler(connection: self, credentials: self.credentials))
                }
            }
            .connect(host: settings.host, port: settings.port)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    self.shared.withLockedValue { $0.current = ObjectIdentifier(channel) }
                case .failure(let error):
                    self.lost(
                        reason: NATSFailureReason.connecting(host: self.settings.host, port: self.settings.port, error),
                        channel: nil)
                }
            }
    }

    /// The server answered our first `PING`: signed in. Every subscription is made again.
    fileprivate func established(channel: any Channel, maximumPayload: Int?) {
        let stopped = shared.withLockedValue { shared -> Bool in
            guard !shared.stopped, shared.current == ObjectIdentifier(channel) else { return true }
            shared.channel = channel
            shared.connected = true
            shared.failures = 0
            if let maximumPayload { shared.maximumPayload = maximumPayload }
            shared.outbox.removeAll(keepingCapacity: true)
            for (sid, subscription) in shared.subscriptions.sorted(by: { $0.key < $1.key }) {
                if let command = try? NATSClientCommand.subscribe(
                    subject: subscription.subject, queueGroup: subscription.queueGroup, sid: sid)
                {
                    shared.outbox += command
                }
            }
            return false
        }
        if stopped {
            channel.close(promise: nil)
            return
        }
        onStateChange(.connected)
        flush()
    }

    /// The connection failed or ended: refuse publishes from now on, and connect again (at once the first time,
    /// then after a jittered backoff up to 2 s).
    fileprivate func lost(reason: String, channel: (any Channel)?) {
        let (stopped, failures) = shared.withLockedValue { shared -> (Bool, Int) in
            if let channel, shared.current != ObjectIdentifier(channel) { return (true, 0) }
            shared.current = nil
            shared.connected = false
            shared.channel = nil
            shared.outbox.removeAll()
            shared.flushScheduled = false
            shared.failures = min(shared.failures + 1, 16)
            return (shared.stopped, shared.failures)
        }
        guard !stopped else { return }
        onStateChange(.unavailable(reason: reason))
        let backoff = failures <= 1 ? 0 : min(2_000, 100 << min(failures - 2, 5))
        let delay = Int64(Double(backoff) * Double.random(in: 0.5...1.0))
        eventLoop.scheduleTask(in: .milliseconds(delay)) { self.connect() }
    }

    fileprivate var handshakeTimeout: TimeAmount { settings.handshakeTimeout }
    fileprivate var pingInterval: TimeAmount { settings.pingInterval }
    fileprivate var host: String { settings.host }
    fileprivate var name: String { settings.name }
    fileprivate var serverName: String? {
        (try? SocketAddress(ipAddress: settings.host, port: 0)) == nil ? settings.host : nil
    }

    fileprivate func deliver(_ messages: [NATSMessage]) {
        onMessages(messages)
    }

    fileprivate func serverError(_ text: String) {
        onServerError(text)
    }
}

/// Speaks NATS's client protocol on one connection: `INFO`, TLS when asked for, `CONNECT`, then messages and
/// pings. What it reads goes through the pure ``NATSServerParser``.
private final class NATSClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let connection: NATSConnection
    /// What this connection signs in with, taken when it was made.
    private let credentials: NATSConnection.Credentials
    private var parser = NATSServerParser()
    private enum Phase { case awaitingInfo, securing, signingIn, connected }
    private var phase = Phase.awaitingInfo
    private var maximumPayload: Int?
    /// The first `INFO`, whose nonce `CONNECT` signs.
    private var info: NATSServerInfo?
    private var lastError: String?
    private var deadline: Scheduled<Void>?
    private var pings: RepeatedTask?
    private var pingsOutstanding = 0
    private var batch: [NATSMessage] = []

    init(connection: NATSConnection, credentials: NATSConnection.Credentials) {
        self.connection = connection
        self.credentials = credentials
    }

    func channelActive(context: ChannelHandlerContext) {
        let channel = context.channel
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: connection.handshakeTimeout) { [weak self] in
            self?.lastError = "no answer from NATS within the handshake deadline"
            channel.close(promise: nil)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        parser.feed(bytes.readableBytesView)
        do {
            while let message = try parser.next() {
                handle(message, context: context)
                // TLS now starts on the bytes that follow INFO, which the parser must not read as NATS.
                if phase == .securing { break }
            }
        } catch {
            fail("NATS sent what is not its protocol: \(error)", context: context)
        }
        if !batch.isEmpty {
            connection.deliver(batch)
            batch.removeAll(keepingCapacity: true)
        }
    }

    private func handle(_ message: NATSServerMessage, context: ChannelHandlerContext) {
        switch message {
        case .info(let info):
            maximumPayload = info.maximumPayload
            guard phase == .awaitingInfo else { return }
            self.info = info
            guard info.supportsHeaders else {
                fail("the NATS server does not support headers (nats-server 2.2 and later do): the sender's identity travels in them", context: context)
                return
            }
            if let tls = credentials.tls {
                phase = .securing
                do {
                    let handler = try NIOSSLClientHandler(context: tls, serverHostname: connection.serverName)
                    try context.pipeline.syncOperations.addHandler(handler, position: .first)
                } catch {
                    fail("cannot start TLS to NATS: \(error)", context: context)
                }
            } else if info.tlsRequired {
                fail("the NATS server requires TLS: use a tls:// url with nats.tls", context: context)
            } else {
                signIn(context: context)
            }
        case .message(let message):
            if phase == .connected { batch.append(message) }
        case .ping:
            write(NATSClientCommand.pong, context: context)
        case .pong:
            if phase == .signingIn {
                phase = .connected
                deadline?.cancel()
                startPings(context: context)
                connection.established(channel: context.channel, maximumPayload: maximumPayload)
            } else {
                pingsOutstanding = 0
            }
        case .ok:
            break
        case .error(let text):
            // Some errors (a permissions violation) leave the connection open; the server closes it for the rest.
            let printable = String(String.UnicodeScalarView(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F }.prefix(512)))
            // nats-server answers CONNECT with credentials it does not take by 'Authorization Violation' and closes:
            // the reason names how the gateway signed in (an NKey's or a JWT user's public key), never its secret.
            lastError = NATSFailureReason.server(printable, signIn: credentials.signIn)
            connection.serverError(printable)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event, phase == .securing {
            signIn(context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func signIn(context: ChannelHandlerContext) {
        let command: [UInt8]
        do {
            // An NKey or a JWT signs the server's nonce; without one (no NKey or JWT users) this fails with the reason.
            command = try credentials.signIn.connect(
                name: connection.name, tlsRequired: credentials.tls != nil, info: info ?? NATSServerInfo())
        } catch {
            fail("\(error)", context: context)
            return
        }
        phase = .signingIn
        write(command + NATSClientCommand.ping, context: context)
    }

    private func startPings(context: ChannelHandlerContext) {
        let channel = context.channel
        let interval = connection.pingInterval
        // Bound to the channel's loop, where the task runs; cancelled when the channel goes inactive.
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        pings = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            handler.value.ping(channel)
        }
    }

    /// A ping on the interval; the connection is given up when two went unanswered.
    private func ping(_ channel: Channel) {
        if pingsOutstanding >= 2 {
            lastError = "NATS did not answer two pings"
            channel.close(promise: nil)
            return
        }
        pingsOutstanding += 1
        channel.writeAndFlush(channel.allocator.buffer(bytes: NATSClientCommand.ping), promise: nil)
    }

    private func write(_ bytes: [UInt8], context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
    }

    private func fail(_ reason: String, context: ChannelHandlerContext) {
        lastError = reason
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, phase == .connected { connection.flush() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if lastError == nil { lastError = NATSFailureReason.connection(error, host: connection.host) }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        pings?.cancel()
        connection.lost(reason: lastError ?? "NATS closed the connection", channel: context.channel)
        context.fireChannelInactive()
    }
}
