import Foundation
import NIOPosix
import Prometheus
import Testing

@testable import PortcullisGateway

@Suite("Event loop lag")
struct EventLoopLagProbeTests {
    @Test("A loop kept busy for 300 ms shows as a lag of at least 200 ms, in the gauge and the histogram")
    func blockedLoopIsMeasured() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let registry = PrometheusCollectorRegistry()
        let probe = EventLoopLagProbe(registry: registry)
        probe.start(group)
        // Let a few probes run, so one is due while the loop is held.
        try await Task.sleep(for: .milliseconds(100))
        group.next().execute { usleep(300_000) }
        let deadline = ContinuousClock.now + .seconds(30)
        while probe.worstLag < 0.2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(probe.worstLag >= 0.2)
        let exposition = String(decoding: registry.emitToBuffer(), as: UTF8.self)
        #expect(exposition.contains(#"portcullis_event_loop_lag_seconds_bucket{le="0.5"}"#))
        let worst = exposition.split(separator: "\n").first { $0.hasPrefix("portcullis_event_loop_lag_max_seconds ") }
        #expect(worst.flatMap { Double($0.split(separator: " ")[1]) }.map { $0 >= 0.2 } == true, "\(String(describing: worst))")
        probe.stop()
        try await group.shutdownGracefully()
    }
}
