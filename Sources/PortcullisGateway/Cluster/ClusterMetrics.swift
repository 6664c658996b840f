import Prometheus

/// The shared broker's metrics, registered only on a gateway with `nats:` configured.
struct ClusterMetrics: Sendable {
    let connected: Gauge
    let connectionFailures: Counter
    let messagesIn: Counter
    let messagesRefused: Counter
    let publishesUnavailable: Counter
    let serverErrors: Counter

    init(registry: PrometheusCollectorRegistry) {
        connected = registry.gauge(named: "portcullis_nats_connected", help: "1 while the shared broker's NATS connection is up.")
        connectionFailures = registry.counter(
            named: "portcullis_nats_connection_failures_total",
            help: "NATS connections that failed or ended (each is followed by a reconnection).")
        messagesIn = registry.counter(
            named: "portcullis_nats_messages_in_total", help: "Messages from other gateways delivered to local sessions.")
        messagesRefused = registry.counter(
            named: "portcullis_nats_messages_refused_total",
            help: "Messages from NATS refused: not what a gateway sends (subject, sender, format or payload).")
        publishesUnavailable = registry.counter(
            named: "portcullis_publishes_unavailable_total",
            help: "Publishes refused with 'unavailable': NATS unreachable, or too much waiting for it.")
        serverErrors = registry.counter(
            named: "portcullis_nats_errors_total",
            help: "-ERR answers from NATS (a permissions violation means the account does not grant the gateways the prefix).")
    }
}
