import Prometheus

/// The gateway's metrics by their whole names (`portcullis_messages_total`), as the exposition shows them.
/// swift-prometheus deprecated its name-and-help calls for a descriptor of name parts; one whole name and an
/// empty unit give the same series.
extension PrometheusCollectorRegistry {
    private static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    func counter(named name: String, labels: [(String, String)] = [], help: String) -> Counter {
        labels.isEmpty
            ? makeCounter(descriptor: Self.descriptor(name, help))
            : makeCounter(descriptor: Self.descriptor(name, help), labels: labels)
    }

    func gauge(named name: String, labels: [(String, String)] = [], help: String) -> Gauge {
        labels.isEmpty
            ? makeGauge(descriptor: Self.descriptor(name, help))
            : makeGauge(descriptor: Self.descriptor(name, help), labels: labels)
    }

    func durationHistogram(named name: String, buckets: [Duration], help: String) -> DurationHistogram {
        makeDurationHistogram(descriptor: Self.descriptor(name, help), buckets: buckets)
    }
}
