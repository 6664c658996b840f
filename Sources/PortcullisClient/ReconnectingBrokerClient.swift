import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOWebSocket
import PortcullisProtocol

/// A device's publish/subscribe client for a Portcullis broker route that stays connected by itself.
///
/// - It reads the certificate, key and CA files before every attempt, so a renewed certificate is used by the
///   next session without a restart.
/// - After a lost connection it waits (exponential backoff with full jitter, ``ReconnectBackoff``) and tries
///   again; a session that got established resets the backoff.
/// - It holds its topic filters and subscribes to all of them again on every new session, before anything else.
/// - It stops for good on a refusal that retrying cannot fix (``ConnectionFailure/isPermanent``: a revoked or
///   untrusted certificate, HTTP 401/403, ...) and says which in ``ConnectionState/stopped(_:)``.
/// - Publishes made while no session is open wait in a bounded queue (``OfflinePublishQueue``: the oldest are
///   dropped when it is full, and counted in ``droppedPublishes``), and are sent in order, after the
///   subscriptions, once a session is open. They wait there too while an open connection is not taking what is
///   sent (a stalled gateway or network: more than 64 KiB unwritten), so a stall costs at most the queue's
///   bound, and leave as the connection drains. Delivery is at most once: a publish handed to a connection that
///   then breaks is not sent again.
///
/// Concurrency: an actor. ``run()`` drives the connection loop and returns when the client stops; every other
/// method may be called from any task meanwhile (they are serialised with the loop, which gives up the actor
/// whenever it waits on the network). ``deliveries``, ``states`` and ``notices`` are single-consumer streams
/// with bounded buffers; all three finish when the client stops.
public actor ReconnectingBrokerClient {
    public nonisolated let configuration: Configuration
    /// Messages for the held subscriptions, with the sender's verified identity, in arrival order across
    /// sessions. When the reader falls ``Configuration/deliveryBufferCapacity`` behind, the oldest waiting
    /// delivery is dropped and counted in ``droppedDeliveries``.
    public nonisolated let deliveries: AsyncStream<Delivery>
    /// Every state change, in order; a reader that falls 64 behind misses the oldest. ``state`` is the current one.
    public nonisolated let states: AsyncStream<ConnectionState>
    /// What the gateway said outside any request: refused publishes (`forbidden`, `rate_limited`, ... as
    /// `error` frames without id), `notice` frames (`certificate_expiring`, `subscription_revoked`), and
    /// subscriptions refused when renewed on a new session (which the client then stops holding).
    public nonisolated let notices: AsyncStream<BrokerError>

    /// The current state.
    public private(set) var state: ConnectionState = .idle
    /// Attempts to connect so far (the first included).
    public private(set) var connectionAttempts = 0
    /// The topic filters held, in the order they were first subscribed.
    public private(set) var subscriptions: [String] = []

    private let deliveriesContinuation: AsyncStream<Delivery>.Continuation
    private let statesContinuation: AsyncStream<ConnectionState>.Continuation
    private let noticesContinuation: AsyncStream<BrokerError>.Continuation
    private let deliveryDrops = NIOLockedValueBox(0)
    private var offlineQueue: OfflinePublishQueue
    private var random = SystemRandomNumberGenerator()

    /// The session of the current attempt, from the upgrade on.
    private var session: LiveSession?
    /// Whether `session` has its subscriptions renewed and the queue flushed: from then on publishes go to it
    /// directly.
    private var sessionEstablished = false
    /// The write of the last publish handed to `session`: once it is done, everything before it has left.
    private var lastPublishWrite: EventLoopFuture<Void>?
    /// Whether a task waits for `session` to drain before sending the queue's publishes to it.
    private var draining = false
    private var stopRequested = false
    private var running = false
    private var stopReason: StopReason?
    private var runWaiters: [CheckedContinuation<StopReason, Never>] = []
    /// The wait between attempts, cancelled by ``stop()``.
    private var backoffWait: Task<Void, any Error>?

    public init(configuration: Configuration) {
        self.configuration = configuration
        offlineQueue = OfflinePublishQueue(
            capacity: configuration.offlineQueueCapacity, byteCapacity: configuration.offlineQueueByteCapacity)
        (deliveries, deliveriesContinuation) = AsyncStream.makeStream(
            bufferingPolicy: .bufferingNewest(max(configuration.deliveryBufferCapacity, 1)))
        (states, statesContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(64))
        (notices, noticesContinuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(64))
    }

    /// Publishes dropped from the offline queue to make room for newer ones (one larger than the whole queue is
    /// refused by ``publish(_:json:)`` with `message_too_large` instead, and not counted here).
    public var droppedPublishes: Int { offlineQueue.droppedCount }
    /// Publishes waiting for a session.
    public var queuedPublishes: Int { offlineQueue.count }
    /// Deliveries dropped because the reader of ``deliveries`` fell too far behind.
    public nonisolated var droppedDeliveries: Int { deliveryDrops.withLockedValue { $0 } }

    // MARK: Running

    /// Connects, and keeps reconnecting, until ``stop()``, the cancellation of the calling task, or a permanent
    /// refusal; returns why it stopped.
    ///
    /// The client runs once: calling `run()` again (meanwhile or afterwards) waits for that same end and returns
    /// the same reason. To try again after a permanent refusal (with a renewed certificate, say), make a new client.
    public func run() async -> StopReason {
        if let stopReason { return stopReason }
        guard !running else {
            return await withCheckedContinuation { runWaiters.append($0) }
        }
        running = true
        let reason = await withTaskCancellationHandler {
            await connectionLoop()
        } onCancel: {
            Task { await self.stop() }
        }
        finish(reason)
        return reason
    }

    /// Stops the client: closes the open session (with the close handshake) or abandons the wait, and makes
    /// ``run()`` return ``StopReason/requested``. Publishes still queued stay unsent.
    public func stop() async {
        stopRequested = true
        backoffWait?.cancel()
        if let session {
            await session.broker.close()
        }
    }

    private func connectionLoop() async -> StopReason {
        var consecutiveFailures = 0
        while true {
            if stopRequested || Task.isCancelled { return .requested }
            connectionAttempts += 1
            setState(.connecting(attempt: connectionAttempts))
            let failure: ConnectionFailure
            switch await openSession() {
            case .failure(let refusal):
                failure = refusal
            case .success(let opened):
                // stop() during the attempt found no session to close: this one is closed here instead.
                if stopRequested || Task.isCancelled {
                    await opened.broker.close()
                    return .requested
                }
                let (ending, established) = await serve(opened)
                // Backoff starts over after a session that got going, so that a device is back within
                // `initialDelay` after an ordinary disconnection, however many failures came before it.
                if established { consecutiveFailures = 0 }
                failure = ending
            }
            if stopRequested || Task.isCancelled { return .requested }
            if failure.isPermanent { return .permanentRefusal(failure) }
            consecutiveFailures = consecutiveFailures.addingSaturated(1)
            let delay = configuration.backoff.delay(afterFailures: consecutiveFailures, using: &random)
            setState(.waiting(retryIn: delay, after: failure))
            let wait = Task { try await Task.sleep(for: delay) }
            backoffWait = wait
            // The wait is its own task so that `stop()` can cut it short; the caller's cancellation is forwarded.
            _ = await withTaskCancellationHandler { await wait.result } onCancel: { wait.cancel() }
            backoffWait = nil
        }
    }

    private func finish(_ reason: StopReason) {
        stopReason = reason
        setState(.stopped(reason))
        statesContinuation.finish()
        deliveriesContinuation.finish()
        noticesContinuation.finish()
        for waiter in runWaiters { waiter.resume(returning: reason) }
        runWaiters = []
    }

    private func setState(_ new: ConnectionState) {
        state = new
        statesContinuation.yield(new)
    }

    // MARK: One session

    /// Reads the files afresh and connects: a session, or why not.
    private func openSession() async -> Result<LiveSession, ConnectionFailure> {
        let credentials: DeviceCredentials
        do {
            credentials = try DeviceCredentials.read(
                certificate: configuration.certificatePath, key: configuration.keyPath, ca: configuration.caPath)
        } catch {
            return .failure(.credentials(ConnectionFailure.bounded(String(describing: error))))
        }
        let tls = GatewayClient.TLSOptions(
            context: credentials.context, trustRoots: configuration.caPath,
            serverName: configuration.serverName ?? configuration.host)
        do {
            let outcome = try await GatewayClient.connect(
                host: configuration.host, port: configuration.port, path: configuration.path, tls: tls,
                timeout: TimeAmount(clamping: configuration.handshakeTimeout))
            switch outcome {
            case .upgraded(let connection):
                let opened = LiveSession(
                    broker: BrokerSession(connection: connection),
                    details: SessionDetails(certificateSerial: credentials.serial))
                session = opened
                return .success(opened)
            case .refused(let status, _, let body):
                return .failure(.upgradeRefused(status: status, reason: ConnectionFailure.shortReason(body)))
            }
        } catch {
            return .failure(ConnectionFailure(connectError: error))
        }
    }

    /// Renews the subscriptions, flushes the queue, then forwards deliveries until the session ends.
    /// - Returns: why it ended, and whether it got established first.
    private func serve(_ live: LiveSession) async -> (ConnectionFailure, established: Bool) {
        let broker = live.broker
        let deliveriesContinuation = deliveriesContinuation
        let noticesContinuation = noticesContinuation
        let deliveryDrops = deliveryDrops
        let heartbeatInterval = configuration.heartbeatInterval
        let established = await withTaskGroup(of: Void.self, returning: Bool.self) { forwarders in
            // Forwarders run until the session's streams end, which is after its last frame was read: nothing the
            // gateway sent before closing is lost, and the close frame is known by then.
            forwarders.addTask {
                for await delivery in broker.deliveries {
                    if case .dropped = deliveriesContinuation.yield(delivery) {
                        deliveryDrops.withLockedValue { $0 = $0.addingSaturated(1) }
                    }
                }
            }
            forwarders.addTask {
                for await error in broker.errors { noticesContinuation.yield(error) }
            }
            forwarders.addTask {
                for await notice in broker.notices { noticesContinuation.yield(notice) }
            }
            let established = await establish(live)
            if established {
                await withTaskGroup(of: Void.self) { heartbeat in
                    heartbeat.addTask { await Self.heartbeat(live, every: heartbeatInterval) }
                    await broker.connection.waitUntilClosed()
                    heartbeat.cancelAll()
                }
            } else {
                broker.connection.channel.close(promise: nil)
            }
            await forwarders.waitForAll()
            return established
        }
        session = nil
        lastPublishWrite = nil
        sessionEstablished = false
        if let timeout = live.timeout.withLockedValue({ $0 }) { return (.timedOut(timeout), established) }
        if let close = broker.peerCloseFrame {
            return (.sessionClosed(code: close.code, reason: ConnectionFailure.shortReason(close.reason)), established)
        }
        return (.connectionLost, established)
    }

    /// Subscribes to every held filter, then hands the queued publishes to the session, in order.
    /// - Returns: false when the session ended (or the client was stopped) first.
    private func establish(_ live: LiveSession) async -> Bool {
        // Filters subscribed meanwhile (the loop gives up the actor while it waits for each ack) are held by then,
        // and taken by a later turn of the loop.
        var renewed: Set<String> = []
        while let filter = subscriptions.first(where: { !renewed.contains($0) }) {
            renewed.insert(filter)
            do {
                try await withRequestDeadline(live) { try await live.broker.subscribe(filter) }
            } catch let refusal as BrokerError {
                subscriptions.removeAll { $0 == filter }
                let message = "renewing the subscription to '\(filter)': \(refusal.message)"
                noticesContinuation.yield(BrokerError(code: refusal.code, message: message))
            } catch {
                return false
            }
            if stopRequested { return false }
        }
        // A filter let go while its renewal was on the way (unsubscribe sends nothing before `established`).
        for filter in renewed where !subscriptions.contains(filter) {
            do {
                try await withRequestDeadline(live) { try await live.broker.unsubscribe(filter) }
            } catch is BrokerError {
                // Not subscribed after all (its renewal was refused): nothing to undo.
            } catch {
                return false
            }
        }
        // No suspension from here to `established`: a publish made meanwhile cannot slip in ahead of the queue.
        guard live.broker.connection.isActive, !stopRequested else { return false }
        while let publish = offlineQueue.popFirst() {
            lastPublishWrite = Self.send(publish, on: live.broker)
        }
        sessionEstablished = true
        setState(.connected(live.details))
        return true
    }

    /// Runs `request` on the session; if the gateway has not answered within the request timeout, the session
    /// is closed (which fails the request) and its end is put down to the timeout.
    private func withRequestDeadline(_ live: LiveSession, _ request: () async throws -> Void) async throws {
        let channel = live.broker.connection.channel
        let timeout = TimeAmount(clamping: configuration.requestTimeout)
        let deadline = channel.eventLoop.scheduleTask(in: timeout) {
            live.timeout.withLockedValue { $0 = $0 ?? "no answer to a request within \(timeout)" }
            channel.close(promise: nil)
        }
        defer { deadline.cancel() }
        try await request()
    }

    /// Pings every `interval`; closes the session when nothing at all has arrived for two intervals.
    private static func heartbeat(_ live: LiveSession, every interval: Duration) async {
        let connection = live.broker.connection
        var payload: UInt64 = 0
        while !Task.isCancelled {
            do { try await Task.sleep(for: interval) } catch { return }
            let silence = ContinuousClock.now - live.broker.lastReceived
            guard silence < interval * 2 else {
                live.timeout.withLockedValue { $0 = $0 ?? "no frame from the gateway for \(silence)" }
                connection.channel.close(promise: nil)
                return
            }
            payload &+= 1
            var data = connection.channel.allocator.buffer(capacity: 8)
            data.writeInteger(payload)
            try? await connection.send(frame: WebSocketFrame(fin: true, opcode: .ping, maskKey: .random(), data: data))
        }
    }

    private static func send(_ publish: PendingPublish, on broker: BrokerSession) -> EventLoopFuture<Void> {
        let request = MessagingProtocol.Request.publish(topic: publish.topic, payload: publish.payload, id: nil)
        let (binary, bytes) = MessagingProtocol.encode(request)
        return broker.connection.enqueue(binary: binary, data: ByteBuffer(bytes: bytes))
    }

    /// Sends the queue's publishes to `live` once what it was last given has been written (its buffer is empty
    /// then); waits again if it stops taking them before the queue is empty. Writability is read off the event
    /// loop, so one turn may hand it the whole queue: at most the queue's bound.
    private func drainWhenWritten(_ live: LiveSession) {
        guard !draining else { return }
        draining = true
        let written = lastPublishWrite
        Task {
            // A failed write means the connection closed: the session's end is handled by `run()`.
            try? await written?.get()
            self.drain(live)
        }
    }

    private func drain(_ live: LiveSession) {
        draining = false
        guard let session, session === live, sessionEstablished, live.broker.connection.isActive else { return }
        while live.broker.connection.isWritable, let publish = offlineQueue.popFirst() {
            lastPublishWrite = Self.send(publish, on: live.broker)
        }
        if !offlineQueue.isEmpty { drainWhenWritten(live) }
    }

    // MARK: Publish and subscribe

    /// Publishes a JSON value (as JSON text: `{"celsius":21.5}`, `"hello"`, `42`), now if a session is open,
    /// otherwise when the next one is.
    /// - Throws: ``BrokerError`` before anything is sent: `invalid_topic` (empty, wildcards, control characters,
    ///   over 1024 bytes), `invalid_message` (not JSON), `message_too_large` (larger than the offline queue),
    ///   `client_stopped`. The gateway's own refusals (`forbidden`, `rate_limited`) arrive on ``notices``.
    @discardableResult
    public func publish(_ topic: String, json: String) throws -> PublishDisposition {
        let payload = Array(json.utf8)
        guard BrokerInputCheck.isJSONValue(payload) else {
            throw BrokerError(code: "invalid_message", message: "the payload is not a JSON value")
        }
        return try publish(PendingPublish(topic: topic, payload: .json(payload)))
    }

    /// Publishes bytes in the binary envelope; otherwise as ``publish(_:json:)``.
    @discardableResult
    public func publish(_ topic: String, binary: [UInt8]) throws -> PublishDisposition {
        try publish(PendingPublish(topic: topic, payload: .binary(binary)))
    }

    private func publish(_ publish: PendingPublish) throws -> PublishDisposition {
        if let problem = BrokerInputCheck.problem(withTopic: publish.topic) {
            throw BrokerError(code: "invalid_topic", message: problem)
        }
        guard publish.byteCount <= offlineQueue.byteCapacity else {
            throw BrokerError(
                code: "message_too_large",
                message: "\(publish.byteCount) bytes; the offline queue holds \(offlineQueue.byteCapacity)")
        }
        guard stopReason == nil else {
            throw BrokerError(code: "client_stopped", message: "the client has stopped: \(state)")
        }
        // A connection that just closed, before its session ended here, would swallow the publish: queue it.
        guard let session, sessionEstablished, session.broker.connection.isActive else {
            return .queued(droppedToMakeRoom: offlineQueue.append(publish))
        }
        if offlineQueue.isEmpty, session.broker.connection.isWritable {
            lastPublishWrite = Self.send(publish, on: session.broker)
            return .sent
        }
        // The connection is not taking what it was given (or older publishes still wait for it): in the bounded
        // queue, not in the connection's unbounded buffer.
        let dropped = offlineQueue.append(publish)
        drainWhenWritten(session)
        return .queued(droppedToMakeRoom: dropped)
    }

    /// Holds `filter` and subscribes to it: now if a session is open (returning once the gateway acknowledged
    /// it), and again on every new session.
    /// - Throws: ``BrokerError``: the gateway's refusal (`forbidden`, `invalid_topic`, `subscription_limit`), after
    ///   which the filter is not held; or, before anything is sent, `invalid_topic` or `subscription_limit` when
    ///   ``Configuration/maximumSubscriptions`` are held. A session that ends before the answer is not an error:
    ///   the filter is held, and subscribed on the next session.
    public func subscribe(_ filter: String) async throws {
        if let problem = BrokerInputCheck.problem(withFilter: filter) {
            throw BrokerError(code: "invalid_topic", message: problem)
        }
        guard !subscriptions.contains(filter) else { return }
        guard subscriptions.count < configuration.maximumSubscriptions else {
            throw BrokerError(
                code: "subscription_limit", message: "the client holds \(configuration.maximumSubscriptions) filters")
        }
        subscriptions.append(filter)
        guard let session, sessionEstablished else { return }
        do {
            try await withRequestDeadline(session) { try await session.broker.subscribe(filter) }
        } catch let refusal as BrokerError {
            subscriptions.removeAll { $0 == filter }
            throw refusal
        } catch {
            // The session ended; the next one subscribes.
        }
    }

    /// Stops holding `filter`, and unsubscribes the open session from it.
    public func unsubscribe(_ filter: String) async throws {
        guard subscriptions.contains(filter) else { return }
        subscriptions.removeAll { $0 == filter }
        guard let session, sessionEstablished else { return }
        do {
            try await withRequestDeadline(session) { try await session.broker.unsubscribe(filter) }
        } catch let refusal as BrokerError {
            throw refusal
        } catch {
            // The session ended; the next one will not subscribe.
        }
    }
}

/// A session of the client, with what its watchers found.
private final class LiveSession: Sendable {
    let broker: BrokerSession
    let details: SessionDetails
    /// Why the client closed it for lack of an answer, if it did.
    let timeout = NIOLockedValueBox<String?>(nil)

    init(broker: BrokerSession, details: SessionDetails) {
        self.broker = broker
        self.details = details
    }
}

extension TimeAmount {
    /// `duration` as a TimeAmount, clamped to 0 ... one year: the conversion to nanoseconds would trap past 292
    /// years, and a configuration is input.
    init(clamping duration: Duration) {
        let seconds = min(max(duration.inSeconds, 0), 365 * 86400)
        self = .nanoseconds(Int64(seconds * 1e9))
    }
}
