import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import PortcullisAdmission
import PortcullisAudit
import PortcullisConfig
import PortcullisNATS

/// The gateway: a TLS listener whose connections go through admission (certificate, request, route,
/// identity, Origin, policy) before they become WebSocket sessions.
public final class Gateway: Sendable {
    private let runtimeBox: NIOLockedValueBox<GatewayRuntime>
    private let serverChannel = NIOLockedValueBox<(any Channel)?>(nil)
    let adminChannel = NIOLockedValueBox<(any Channel)?>(nil)
    let group: MultiThreadedEventLoopGroup
    /// The admin listener's own thread: a scrape of `/metrics` walks every open session (some 40 ms with
    /// 19,000 of them), which must not hold up a loop that serves sessions.
    let adminGroup: MultiThreadedEventLoopGroup
    /// Each event loop's connection timers, by loop.
    private let loopTimers: [ObjectIdentifier: LoopTimers]
    public let auditLog: AuditLog
    let broker = Broker()
    /// The shared broker's link to NATS; nil when `nats` is not configured.
    let cluster: ClusterLink?
    let usage = IdentityUsage()
    private let stopped = NIOLockedValueBox(false)
    /// Every open connection, so that a shutdown can drain them and a reload re-check them.
    private let connections = NIOLockedValueBox([ObjectIdentifier: OpenConnection]())
    let reloads = ReloadQueue()
    /// What `/metrics` serves.
    public let metrics = GatewayMetrics()
    /// How late the event loops run what is due: the measure of a loop kept busy.
    let lagProbe: EventLoopLagProbe
    /// Open connections, by client address too, against `limits`.
    let limiter = NIOLockedValueBox(ConnectionLimiter())
    /// The process's open-file limit, raised to its hard limit at start: it caps connections too.
    let openFiles: OpenFileBudget
    /// Refusals before authentication, aggregated for the audit log; drained every `refusal_audit_interval`.
    let refusals = NIOLockedValueBox((aggregator: RefusalAggregator(), since: NIODeadline.now()))
    let logger: Logger

    /// An accepted connection, and once it is a session, the client certificate it uses.
    struct OpenConnection: Sendable {
        let channel: any Channel
        let connection: Connection
        var certificate: GatewayMetrics.CertificateInUse?
    }

    /// Loads everything the configuration names and opens the audit log; nothing listens yet. `threads` event
    /// loops serve connections unless the configuration's `event_loops` says otherwise.
    ///
    /// - Throws: ``GatewayStartupError`` with every problem found.
    public init(configuration: GatewayConfiguration, logger: Logger, threads: Int = System.coreCount) throws {
        let runtime = try GatewayRuntime.load(configuration)
        let policy = configuration.onAuditFailure
        do {
            auditLog = try AuditLog(directory: configuration.auditDirectory, settings: configuration.audit) { change in
                switch change {
                case .failing(let reason, let detail):
                    let consequence = policy == .refuseNewSessions
                        ? "refusing new sessions until it recovers" : "sessions continue unaudited"
                    logger.error(
                        "audit log failing: \(detail); \(consequence)",
                        metadata: ["audit.reason": "\(reason)"])
                case .recovered(let reason, let dropped):
                    logger.notice(
                        "audit log recovered; \(dropped) records were lost", metadata: ["audit.reason": "\(reason)"])
                }
            }
        } catch {
            throw GatewayStartupError(problems: ["\(configuration.auditDirectory): cannot open the audit log (\(error))"])
        }
        let natsSettings: NATSConnection.Settings?
        do {
            var warnings: [String] = []
            natsSettings = try configuration.nats.map { try NATSConnection.Settings($0, warnings: &warnings) }
            for warning in warnings { logger.warning("\(warning)") }
        } catch {
            auditLog.close()
            throw error
        }
        self.runtimeBox = NIOLockedValueBox(runtime)
        self.lagProbe = EventLoopLagProbe(registry: metrics.registry)
        self.openFiles = OpenFileBudget.raisingSoftLimit()
        metrics.addRoutes(configuration.routes)
        // Threads are started only once nothing above can throw: a failed start leaves none behind.
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: configuration.eventLoops ?? threads)
        self.adminGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.loopTimers = Dictionary(
            uniqueKeysWithValues: group.makeIterator().map { (ObjectIdentifier($0), LoopTimers(eventLoop: $0)) })
        self.logger = logger
        if let nats = configuration.nats, let natsSettings, let mapping = SubjectMapping(prefix: nats.subjectPrefix) {
            let auditLog = self.auditLog
            let cluster = ClusterLink(
                mapping: mapping, settings: natsSettings, eventLoop: group.next(), broker: broker,
                metrics: ClusterMetrics(registry: metrics.registry), logger: logger, audit: { auditLog.record($0) })
            broker.join(cluster)
            self.cluster = cluster
        } else {
            self.cluster = nil
        }
    }

    /// The connection timers of `loop`, one of the gateway's event loops.
    func timers(for loop: any EventLoop) -> LoopTimers {
        guard let timers = loopTimers[ObjectIdentifier(loop)] else {
            preconditionFailure("\(loop) is not one of the gateway's event loops")
        }
        return timers
    }

    /// The runtime new connections are accepted under.
    public var runtime: GatewayRuntime { runtimeBox.withLockedValue { $0 } }

    /// Swaps in a new runtime atomically; connections accepted from now on use it, open ones keep theirs.
    public func install(_ runtime: GatewayRuntime) {
        runtimeBox.withLockedValue { $0 = runtime }
    }

    func audit(_ record: AuditRecord) {
        auditLog.record(record)
    }

    /// Binds the listener and returns the bound address (the port is the real one when 0 was asked for).
    @discardableResult
    public func start() async throws -> SocketAddress {
        let configuration = runtime.configuration
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    // One runtime for the connection's limits, TLS context and admission, even if a reload lands now.
                    let runtime = self.runtime
                    let address = channel.remoteAddress?.ipAddress ?? "unknown"
                    let proxyProtocol = runtime.configuration.proxyProtocol
                    let fromLoadBalancer = proxyProtocol?.trusts(address) ?? false
                    let counted = try self.admit(channel, address: fromLoadBalancer ? nil : address, under: runtime.configuration)
                    let connection = try self.configure(channel, address: address, runtime: runtime)
                    if let proxyProtocol {
                        let source: ProxyHeaderHandler.Source =
                            fromLoadBalancer
                            ? .loadBalancer(counted)
                            : .direct(trusted: proxyProtocol.trusted.map(\.description).joined(separator: ", "))
                        try channel.pipeline.syncOperations.addHandler(
                            ProxyHeaderHandler(connection: connection, source: source), position: .first)
                    }
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: configuration.listenHost, port: configuration.listenPort).get()
        } catch let error as IOError where error.errnoCode == EACCES {
            throw GatewayStartupError(problems: [
                "cannot listen on \(configuration.listenHost):\(configuration.listenPort): permission denied. "
                    + "Ports below 1024 need privilege: choose another port with --listen HOST:PORT, or grant "
                    + "the binary the capability (setcap 'cap_net_bind_service=+ep' $(which portcullis))."
            ])
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw GatewayStartupError(problems: [
                "cannot listen on \(configuration.listenHost):\(configuration.listenPort): the address is already in use"
            ])
        } catch {
            throw GatewayStartupError(problems: [
                "cannot listen on \(configuration.listenHost):\(configuration.listenPort): \(error)"
            ])
        }
        serverChannel.withLockedValue { $0 = channel }
        startSharingCRLs()
        cluster?.start()
        warnIfOpenFilesBindConnections()
        lagProbe.start(group)
        // Aggregated refusals are written once their interval has passed (checked every second, so that a
        // reload's new interval applies at once).
        channel.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] task in
            if stopped.withLockedValue({ $0 }) {
                task.cancel()
                return
            }
            drainRefusals(force: false)
        }
        var record = AuditRecord(event: "gateway_started")
        record.detail = "listening on \(configuration.listenHost):\(channel.localAddress?.port ?? configuration.listenPort)"
        audit(record)
        logger.info(
            "gateway listening",
            metadata: ["gateway.listen": "\(configuration.listenHost):\(channel.localAddress?.port ?? 0)"])
        return channel.localAddress!
    }

    /// The port the listener is bound to, once started.
    public var port: Int? {
        serverChannel.withLockedValue { $0?.localAddress?.port }
    }

    /// Drains: stops accepting, closes every WebSocket session with 1001 (going away) and every connection
    /// still in admission, waits up to `deadline` for them to finish, then flushes the audit log.
    public func shutdown(deadline: Duration = .seconds(10)) async {
        // Idempotent: a second call (a second signal, a test's teardown) finds nothing left to do.
        let first = stopped.withLockedValue { stopped -> Bool in
            let wasRunning = !stopped
            stopped = true
            return wasRunning
        }
        guard first else { return }
        if let channel = serverChannel.withLockedValue({ $0 }) {
            try? await channel.close()
        }
        // The admin listener stays up while draining (`/readyz` says 503), and goes with the event loops.
        let open = connections.withLockedValue { Array($0.values) }
        for connection in open {
            connection.channel.pipeline.fireUserInboundEventTriggered(GatewayShutdown())
        }
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: deadline)
        while clock.now < end, connections.withLockedValue({ !$0.isEmpty }) {
            try? await Task.sleep(for: .milliseconds(10))
        }
        // Whatever has not finished its close handshake by the deadline is closed with the event loops.
        let cutOff = connections.withLockedValue { $0.count }
        if cutOff > 0 {
            logger.warning("drain deadline reached: closing \(cutOff) connection(s) still open", metadata: ["deadline": "\(deadline)"])
        }
        lagProbe.stop()
        cluster?.stop()
        broker.join(nil)
        try? await group.shutdownGracefully()
        try? await adminGroup.shutdownGracefully()
        // A timer nothing cancelled would keep its connection, and through it the gateway, alive.
        for timers in loopTimers.values { timers.discardAfterShutdown() }
        drainRefusals(force: true)
        var record = AuditRecord(event: "gateway_stopped")
        record.detail = "drained \(open.count) connection(s)" + (cutOff > 0 ? "; \(cutOff) still open at the \(deadline) deadline were closed" : "")
        audit(record)
        auditLog.close()
    }

    private func configure(_ channel: any Channel, address: String, runtime: GatewayRuntime) throws -> Connection {
        let connection = Connection(
            gateway: self, runtime: runtime, peer: Self.describe(channel.remoteAddress), address: address,
            eventLoop: channel.eventLoop)
        let pipeline = channel.pipeline.syncOperations
        let ssl = NIOSSLServerHandler(context: runtime.sslContext) { certificates, promise in
            connection.verify(certificates, promise: promise)
        }
        try pipeline.addHandler(ssl)
        try pipeline.addHandler(TLSOutcomeHandler(connection: connection))
        let maxMessageBytes = runtime.configuration.maxMessageBytes
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: maxMessageBytes,
            automaticErrorHandling: false,
            shouldUpgrade: { channel, head in
                let event = AdmissionEvent.upgradeRequested(UpgradeRequest(head), auditFailing: self.auditLog.isFailing)
                for action in connection.handle(event, channel: channel) {
                    switch action {
                    case .upgrade(let session):
                        connection.negotiateCompression(for: session, offers: head.headers["Sec-WebSocket-Extensions"])
                        return channel.eventLoop.makeSucceededFuture(connection.upgradeAnswerHeaders(session))
                    case .connectBackend(let session):
                        connection.negotiateCompression(for: session, offers: head.headers["Sec-WebSocket-Extensions"])
                        // The backend's choice of subprotocol is known once it has answered.
                        return connection.connectUpstream(for: session, head: head, channel: channel)
                    default:
                        continue
                    }
                }
                return channel.eventLoop.makeSucceededFuture(nil)
            },
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    for case .startSession(let admitted) in connection.handle(.upgraded, channel: channel) {
                        try self.startSession(admitted, connection: connection, channel: channel)
                        return
                    }
                    throw NIOWebSocketUpgradeError.unsupportedWebSocketTarget
                }
            })
        try pipeline.configureHTTPServerPipeline(
            withPipeliningAssistance: false,
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }),
            // Parse errors are answered by the AdmissionResponder, with the status that fits (431 or 400).
            withErrorHandling: false,
            withOutboundHeaderValidation: true,
            withEncoderConfiguration: HTTPResponseEncoder.Configuration(),
            // The parser stops at `max_header_bytes` of request line and fields (its default is 80 KiB whatever the
            // configuration says); admission then checks the whole head, separators included, against the same.
            withDecoderLimitConfiguration: Self.decoderLimits(maxHeaderBytes: runtime.configuration.maxHeaderBytes))
        try pipeline.addHandler(AdmissionResponder(connection: connection))

        connection.handshakeTimeout = connection.timers.schedule(in: .configured(seconds: runtime.configuration.handshakeTimeout)) {
            connection.handle(.deadlinePassed, channel: channel)
        }
        let key = ObjectIdentifier(channel)
        connections.withLockedValue { $0[key] = OpenConnection(channel: channel, connection: connection) }
        channel.closeFuture.whenComplete { _ in
            self.connections.withLockedValue { $0[key] = nil }
            connection.closed.store(true, ordering: .relaxed)
            connection.timers.cancel(connection.handshakeTimeout)
            connection.handle(.closed, channel: channel)
        }
        return connection
    }

    static func decoderLimits(maxHeaderBytes: Int) -> NIOHTTPDecoderLimitConfiguration {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = maxHeaderBytes
        limits.maxHeaderListSize = maxHeaderBytes
        return limits
    }

    /// Turns the upgraded channel into a session on `admitted`'s route, and notes its certificate for the expiry
    /// metrics.
    private func startSession(_ admitted: AdmittedSession, connection: Connection, channel: any Channel) throws {
        let pipeline = channel.pipeline.syncOperations
        // The responder would read WebSocket bytes as HTTP: it leaves before any frame arrives. The TLS outcome
        // is known by now, and a session handles the drain itself: that handler leaves too, rather than pass
        // on every read of the session.
        pipeline.removeHandler(context: try pipeline.context(handlerType: AdmissionResponder.self), promise: nil)
        pipeline.removeHandler(context: try pipeline.context(handlerType: TLSOutcomeHandler.self), promise: nil)
        // Fragments are reassembled by the session's protocol layer: NIO's aggregator hands on whole messages
        // without their mask key and validates no UTF-8 as it goes.
        let session = SessionContext(
            admitted, configuration: connection.runtime.configuration, compression: connection.compression, gateway: self,
            timers: connection.timers)
        let messages: any SessionRoute
        switch admitted.route.kind {
        case .echo: messages = EchoRoute()
        case .broker: messages = BrokerRoute(context: session)
        case .upstream:
            // shouldUpgrade connected the backend before agreeing to the upgrade.
            guard let backend = connection.upstream else { throw NIOWebSocketUpgradeError.unsupportedWebSocketTarget }
            messages = UpstreamRoute(backend: backend)
        }
        let webSocket = WebSocketProtocolHandler(session: session, route: messages)
        try pipeline.addHandler(webSocket)
        try pipeline.addHandler(SessionLifetimeHandler(session: session, webSocket: webSocket, route: messages))

        let key = ObjectIdentifier(channel)
        let certificate = GatewayMetrics.CertificateInUse(
            identity: admitted.identity.name, serial: admitted.facts.serial, notValidAfter: admitted.notValidAfter)
        connections.withLockedValue { $0[key]?.certificate = certificate }
        // A reload installed a newer runtime while this connection was in admission under the older one.
        let current = runtime
        guard !connection.runtime.isSame(as: current), let open = connections.withLockedValue({ $0[key] }) else { return }
        Task { _ = await self.recheck([open], under: current, trustChanged: true) }
    }

    /// Open sessions and connections still in admission.
    func openSessions() -> [OpenConnection] {
        connections.withLockedValue { Array($0.values) }
    }

    /// The Prometheus exposition of ``metrics``, with the gauges of this moment.
    public func metricsExposition() -> [UInt8] {
        // Copied out under the lock, counted and sorted outside it: sessions opening and closing take that lock.
        let certificates = Set(connections.withLockedValue { $0.values.compactMap(\.certificate) })
        let runtime = self.runtime
        return metrics.exposition(
            summary: runtime.summary, audit: auditLog.statistics(), certificatesInUse: certificates,
            expiredCRLs: runtime.verifier.trust.expiredCRLs(at: Date()).count)
    }

    /// Whether the gateway takes new sessions: listening, not draining, and (under `refuse_new_sessions`)
    /// able to audit. Nil when ready, else why not.
    public var notReadyReason: String? {
        if stopped.withLockedValue({ $0 }) { return "shutting down" }
        if serverChannel.withLockedValue({ $0 }) == nil { return "not listening yet" }
        if let reason = cluster?.unavailableReason { return "NATS is unreachable: \(reason)" }
        if runtime.configuration.onAuditFailure == .refuseNewSessions, auditLog.isFailing {
            return "the audit log is failing (on_audit_failure: refuse_new_sessions)"
        }
        let trust = runtime.verifier.trust
        if trust.refusesExpiredCRLs, let stale = trust.expiredCRLs(at: Date()).first {
            return "the CRL of \(stale.issuer) is past its nextUpdate (tls.crl_expired: refuse): "
                + "the certificates it covers are refused until a new CRL is published"
        }
        return nil
    }

    /// Sent through every pipeline when the gateway drains.
    struct GatewayShutdown {}

    static func describe(_ address: SocketAddress?) -> String {
        guard let address, let ip = address.ipAddress else { return "unknown" }
        let port = address.port ?? 0
        if case .v6 = address { return "[\(ip)]:\(port)" }
        return "\(ip):\(port)"
    }
}
