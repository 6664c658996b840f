import Foundation
import NIOConcurrencyHelpers
import PortcullisAudit
import PortcullisConfig
import Prometheus

/// The gateway's Prometheus metrics, served by the admin listener's `/metrics`.
///
/// One registry per gateway (not swift-metrics' process-wide factory), so that gateways in one process — the
/// tests run many — do not share counters. The message path holds its counters directly: an atomic add per
/// read batch, no lookup. Label values are bounded: routes and refusal reasons are fixed sets, and client
/// certificates are reported for the few that expire soonest only.
public final class GatewayMetrics: Sendable {
    /// How many client certificates in use get their own expiry series.
    public static let clientCertificateSeries = 10

    let registry = PrometheusCollectorRegistry()
    let handshakeDuration: DurationHistogram
    let handshakesFull: Counter
    let handshakesResumed: Counter
    let handshakesFailed: Counter
    let messagesIn: Counter
    let messagesOut: Counter
    let bytesIn: Counter
    let bytesOut: Counter
    let aclDenials: Counter
    let rateLimitHits: Counter
    let slowConsumerCloses: Counter
    let sessionsEnded: Counter
    private let auditQueueDepth: Gauge
    private let auditWriteLatency: Gauge
    private let auditFailing: Gauge
    private let auditDropped: Gauge
    private let clientCertificatesInUse: Gauge
    private let crlsExpired: Gauge
    /// Accepted connections not yet closed (handshakes and sessions).
    let connectionsOpen: Gauge
    private let routeGauges = NIOLockedValueBox<[String: Gauge]>([:])
    /// Gauges whose labels come from the loaded certificates or the sessions open: replaced at each scrape.
    private let certificateGauges = NIOLockedValueBox<[Gauge]>([])

    init() {
        handshakeDuration = registry.durationHistogram(
            named: "portcullis_tls_handshake_duration_seconds",
            buckets: [.milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
                      .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
                      .seconds(5)],
            help: "Time from TCP accept to the end of the TLS handshake (successful handshakes).")
        let registry = self.registry
        /// One counter family, one counter per value of its label.
        func family(_ name: String, _ label: String, _ values: [String], help: String) -> [Counter] {
            values.map { registry.counter(named: name, labels: [(label, $0)], help: help) }
        }
        let handshakes = family(
            "portcullis_tls_handshakes_total", "result", ["full", "resumed", "failed"],
            help: "TLS handshakes by result: full, resumed (session ticket) or failed.")
        (handshakesFull, handshakesResumed, handshakesFailed) = (handshakes[0], handshakes[1], handshakes[2])
        let messages = family(
            "portcullis_messages_total", "direction", ["in", "out"],
            help: "WebSocket data messages: in from clients, out to clients.")
        (messagesIn, messagesOut) = (messages[0], messages[1])
        let bytes = family(
            "portcullis_message_bytes_total", "direction", ["in", "out"],
            help: "Payload bytes of WebSocket data messages: in from clients, out to clients.")
        (bytesIn, bytesOut) = (bytes[0], bytes[1])
        aclDenials = registry.counter(
            named: "portcullis_acl_denials_total", help: "Subscribes and publishes a topic ACL refused.")
        rateLimitHits = registry.counter(
            named: "portcullis_rate_limit_hits_total", help: "Publishes over the identity's rate limit.")
        slowConsumerCloses = registry.counter(
            named: "portcullis_slow_consumer_closes_total",
            help: "Sessions closed (1013) because their client fell too far behind.")
        sessionsEnded = registry.counter(
            named: "portcullis_sessions_ended_by_gateway_total",
            help: "Open sessions the gateway closed after a reload or at their certificate's expiry (1008).")
        auditQueueDepth = registry.gauge(
            named: "portcullis_audit_queue_depth", help: "Audit records waiting to be written.")
        auditWriteLatency = registry.gauge(
            named: "portcullis_audit_write_latency_seconds",
            help: "Time the last batch of audit records took to write (and fsync, when it did).")
        auditFailing = registry.gauge(
            named: "portcullis_audit_failing", help: "1 while audit records cannot be written.")
        auditDropped = registry.gauge(
            named: "portcullis_audit_records_dropped", help: "Audit records lost since the gateway started.")
        clientCertificatesInUse = registry.gauge(
            named: "portcullis_client_certificates_in_use", help: "Distinct client certificates of open sessions.")
        connectionsOpen = registry.gauge(
            named: "portcullis_connections_open",
            help: "Accepted connections not yet closed, handshakes and sessions alike (limits.max_connections bounds it).")
        crlsExpired = registry.gauge(
            named: "portcullis_crl_expired",
            help: "CRLs in force past their nextUpdate (with tls.crl_expired: refuse, the certificates they cover are refused).")
        // Every result is counted from zero, so a dashboard has the series before the first reload.
        for result in [ReloadOutcome.Result.applied, .unchanged, .rejected] { reloadCounter(result) }
    }

    /// Counts a refusal by its stable reason code (a fixed set, so the label stays bounded).
    func refused(_ reason: String) {
        registry.counter(
            named: "portcullis_refusals_total", labels: [("reason", reason)],
            help: "Connections refused before becoming a session, by reason.").increment()
    }

    /// Counts a PROXY protocol v2 header read from a trusted load balancer, by command (`PROXY`, or `LOCAL` for
    /// its health checks).
    func proxyHeaderRead(_ command: String) {
        registry.counter(
            named: "portcullis_proxy_headers_total", labels: [("command", command)],
            help: "PROXY protocol v2 headers read from trusted load balancers, by command (PROXY or LOCAL).").increment()
    }

    /// The gauge of open sessions on `route` (a configured path): looked up in a small map of its own, cheaper
    /// per session than the registry's lookup by name and labels.
    func sessionsOpen(route: String) -> Gauge {
        if let gauge = routeGauges.withLockedValue({ $0[route] }) { return gauge }
        let gauge = registry.gauge(
            named: "portcullis_sessions_open", labels: [("route", route)], help: "Open WebSocket sessions by route.")
        routeGauges.withLockedValue { $0[route] = gauge }
        return gauge
    }

    /// Shows every route's open-session gauge from zero, before its first session.
    func addRoutes(_ routes: [GatewayConfiguration.Route]) {
        for route in routes { _ = sessionsOpen(route: route.path) }
    }

    func reloads(_ result: ReloadOutcome.Result) {
        reloadCounter(result).increment()
    }

    @discardableResult
    private func reloadCounter(_ result: ReloadOutcome.Result) -> Counter {
        registry.counter(
            named: "portcullis_reloads_total", labels: [("result", result.rawValue)],
            help: "Reloads by result: applied, unchanged, rejected (the previous set stayed).")
    }

    /// A client certificate of an open session, for the expiry series.
    struct CertificateInUse: Hashable {
        var identity: String
        var serial: String
        var notValidAfter: Date
    }

    /// The exposition text: the gauges that describe the present are computed now.
    func exposition(
        summary: RuntimeSummary, audit: AuditStatistics, certificatesInUse: Set<CertificateInUse>, expiredCRLs: Int,
        now: Date = Date()
    ) -> [UInt8] {
        crlsExpired.set(to: Double(expiredCRLs))
        auditQueueDepth.set(to: Double(audit.queueDepth))
        auditWriteLatency.set(to: audit.lastWriteLatency)
        auditFailing.set(to: audit.failure == nil ? 0 : 1)
        auditDropped.set(to: Double(audit.dropped))
        clientCertificatesInUse.set(to: Double(certificatesInUse.count))
        certificateGauges.withLockedValue { gauges in
            for gauge in gauges { registry.unregisterGauge(gauge) }
            gauges.removeAll()
            let name = "portcullis_certificate_expiry_seconds"
            let help = "Seconds until a certificate's not-after (negative once expired): the server's, the client "
                + "CAs', and the \(Self.clientCertificateSeries) client certificates in use that expire first."
            func add(_ kind: String, _ subject: String, _ serial: String, _ notValidAfter: Date) {
                let gauge = registry.gauge(
                    named: name, labels: [("kind", kind), ("subject", subject), ("serial", serial)], help: help)
                gauge.set(to: notValidAfter.timeIntervalSince(now))
                gauges.append(gauge)
            }
            let server = summary.serverCertificate
            add("server", server.subject, server.serial, server.notValidAfter)
            for ca in summary.certificateAuthorities { add("ca", ca.subject, ca.serial, ca.notValidAfter) }
            let soonest = certificatesInUse.sorted { $0.notValidAfter < $1.notValidAfter }.prefix(Self.clientCertificateSeries)
            for certificate in soonest { add("client", certificate.identity, certificate.serial, certificate.notValidAfter) }
        }
        return registry.emitToBuffer()
    }
}
