import NIOCore
import Prometheus
import Synchronization

/// Measures how late each event loop runs a task scheduled for a known moment. A loop held by a handler or a
/// task (a reload's work, a decision that scans, a large write) for 30 ms runs the probe up to 30 ms late, so
/// "no event loop was blocked for more than 10 ms" is read from `/metrics`, not assumed.
///
/// Every lag goes to the `portcullis_event_loop_lag_seconds` histogram; the worst since the gateway started is
/// a gauge of its own. A probe runs every ``interval`` per loop: a few hundred timers a second, whatever the
/// fleet's size.
final class EventLoopLagProbe: Sendable {
    static let interval = TimeAmount.milliseconds(20)

    private let histogram: DurationHistogram
    private let worst: Gauge
    private let worstNanoseconds = Atomic<Int64>(0)
    private let stopped = Atomic<Bool>(false)

    init(registry: PrometheusCollectorRegistry) {
        histogram = registry.durationHistogram(
            named: "portcullis_event_loop_lag_seconds",
            buckets: [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
                      .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(500), .seconds(1)],
            help: "How late an event loop ran a task due at a known moment (sampled every 20 ms per loop): how long the loop was kept busy.")
        worst = registry.gauge(
            named: "portcullis_event_loop_lag_max_seconds",
            help: "The longest any event loop has been kept from a due task since the gateway started.")
    }

    /// Probes every loop of `group` until ``stop()``.
    func start(_ group: any EventLoopGroup) {
        for loop in group.makeIterator() { schedule(on: loop) }
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
    }

    /// The worst lag seen so far, in seconds.
    var worstLag: Double { Double(worstNanoseconds.load(ordering: .relaxed)) / 1e9 }

    private func schedule(on loop: any EventLoop) {
        guard !stopped.load(ordering: .relaxed) else { return }
        let due = NIODeadline.now() + Self.interval
        loop.scheduleTask(deadline: due) { [self] in
            record(lag: NIODeadline.now() - due)
            schedule(on: loop)
        }
    }

    private func record(lag: TimeAmount) {
        let nanoseconds = max(0, lag.nanoseconds)
        histogram.recordNanoseconds(nanoseconds)
        let previous = worstNanoseconds.max(nanoseconds, ordering: .relaxed).oldValue
        if nanoseconds > previous { worst.set(to: Double(nanoseconds) / 1e9) }
    }
}
