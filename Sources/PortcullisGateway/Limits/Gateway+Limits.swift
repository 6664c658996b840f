import NIOCore
import PortcullisAudit
import PortcullisConfig

/// Connection limits at accept, and the aggregated audit of refusals before authentication.
extension Gateway {
    /// Counts an accepted connection against `limits`, or refuses it before TLS: the bootstrap closes a
    /// channel whose initializer throws. `address` is the client's address as the limits count it; nil for a
    /// trusted load balancer's connection, counted in all until its PROXY header names the client
    /// (``attribute(_:to:under:)``).
    func admit(_ channel: any Channel, address: String?, under configuration: GatewayConfiguration) throws -> CountedAddress {
        let limits = configuration.limits
        let capacity = connectionCapacity(under: configuration)
        if let refusal = limiter.withLockedValue({ $0.admit(address, limits: limits, capacity: capacity, now: Self.seconds()) }) {
            metrics.refused(refusal.rawValue)
            var record = AuditRecord(
                event: "connection_refused", decision: "deny", reason: refusal.rawValue,
                detail: detail(of: refusal, capacity: capacity, limits: limits))
            record.peer = Self.describe(channel.remoteAddress)
            auditUnauthenticated(record, address: address ?? channel.remoteAddress?.ipAddress ?? "unknown")
            throw ConnectionRefusedAtAccept()
        }
        let counted = CountedAddress(address)
        metrics.connectionsOpen.increment()
        channel.closeFuture.whenComplete { [self] _ in
            metrics.connectionsOpen.decrement()
            limiter.withLockedValue { $0.release(counted.address, now: Self.seconds()) }
        }
        return counted
    }

    /// Counts a load balancer's connection against its client `address`, now that the PROXY header has named
    /// it; or says why not (reason and detail) when the client is over its per-address limits: the connection
    /// then stays counted in all only.
    func attribute(
        _ counted: CountedAddress, to address: String, under configuration: GatewayConfiguration
    ) -> (reason: String, detail: String)? {
        let limits = configuration.limits
        if let refusal = limiter.withLockedValue({ $0.attribute(address, limits: limits, now: Self.seconds()) }) {
            return (refusal.rawValue, detail(of: refusal, capacity: connectionCapacity(under: configuration), limits: limits))
        }
        counted.address = address
        return nil
    }

    private func detail(
        of refusal: ConnectionLimiter.Refusal, capacity: Int, limits: GatewayConfiguration.ConnectionLimits
    ) -> String {
        switch refusal {
        case .maxConnections: "\(limits.maxConnections ?? 0) connections are open (limits.max_connections)"
        case .perAddressConnections:
            "\(limits.perAddressConnections ?? 0) connections from this address are open (limits.per_address.connections)"
        case .perAddressRate:
            "more than \(limits.perAddressNewPerSecond ?? 0) new connections a second from this address "
                + "(limits.per_address.new_per_second)"
        case .openFiles:
            "\(capacity) connections are open, all the process's open-file limit (\(openFiles.limit)) leaves room "
                + "for beside \(OpenFileBudget.reserved) kept for the audit log, listeners and reloads"
        }
    }

    private struct ConnectionRefusedAtAccept: Error {}

    /// How many connections the open-file limit leaves room for under `configuration`'s routes: an upstream
    /// session holds two descriptors.
    func connectionCapacity(under configuration: GatewayConfiguration) -> Int {
        let upstream = configuration.routes.contains { $0.kind == .upstream }
        return openFiles.connections(descriptorsPerConnection: upstream ? 2 : 1)
    }

    /// Says at start (and after a reload) when `limits.max_connections` promises more than the open-file
    /// limit allows: the gateway will refuse with `open_files` before it gets there.
    func warnIfOpenFilesBindConnections() {
        let configuration = runtime.configuration
        let capacity = connectionCapacity(under: configuration)
        let configured = configuration.limits.maxConnections
        guard configured.map({ $0 > capacity }) ?? true else { return }
        let configuredText = configured.map(String.init) ?? "off"
        logger.warning(
            """
            the open-file limit allows \(capacity) connections, fewer than limits.max_connections (\(configuredText)); \
            connections past it are refused (open_files). Raise the limit (LimitNOFILE= in systemd, ulimit -n) or \
            lower max_connections.
            """,
            metadata: ["limits.open_files": "\(openFiles.limit)"])
    }

    /// Monotonic seconds, the clock of the connection limits.
    private static func seconds() -> Double { Double(NIODeadline.now().uptimeNanoseconds) / 1e9 }

    /// Audits a refusal that happened before authentication: at once when it is the first of its address,
    /// reason and certificate in this interval, otherwise counted into the interval's summary.
    func auditUnauthenticated(_ record: AuditRecord, address: String) {
        guard runtime.configuration.limits.refusalAuditInterval > 0 else {
            audit(record)
            return
        }
        let first = refusals.withLockedValue {
            $0.aggregator.note(
                address: address, reason: record.reason ?? "", fingerprint: record.fingerprint, event: record.event)
        }
        if first { audit(record) }
    }

    /// Writes the counted refusals once the interval has passed (or now, at shutdown).
    func drainRefusals(force: Bool) {
        let interval = runtime.configuration.limits.refusalAuditInterval
        let now = NIODeadline.now()
        let summaries: [RefusalAggregator.Summary]? = refusals.withLockedValue { state in
            guard force || now - state.since >= .configured(seconds: max(interval, 1)) else { return nil }
            state.since = now
            return state.aggregator.drain()
        }
        for summary in summaries ?? [] {
            var record = AuditRecord(event: summary.event, decision: "deny", reason: summary.key.reason)
            record.peer = summary.key.address
            record.fingerprint = summary.key.fingerprint
            record.count = summary.count
            record.detail = "\(summary.count) more refusal(s) of this kind from "
                + (summary.key.address == "*" ? "addresses beyond the \(RefusalAggregator.maximumKeys) told apart" : "this address")
                + " since the first was written (aggregated over limits.refusal_audit_interval)"
            audit(record)
        }
    }
}

/// The address the connection limiter counts a connection against: nil while a load balancer's connection
/// waits for its PROXY header, then the client's. Only touched on the channel's event loop.
final class CountedAddress: @unchecked Sendable {
    var address: String?

    init(_ address: String?) {
        self.address = address
    }
}
