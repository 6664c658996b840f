import Foundation
import Histogram
import NIOCore
import NIOPosix
import Synchronization

/// `bench connect`: sessions established per second, each a full mTLS handshake, the upgrade, admission and
/// (for NATS) CONNECT and PING, then closed at once.
public enum ConnectBenchmark {
    public struct Result: Codable, Sendable {
        public var scenario = "connect"
        public var wire: WireProtocol
        public var resumed: Bool
        public var concurrency: Int
        public var seconds: Double
        public var sessions: Int
        public var failures: Int
        public var sessionsPerSecond: Double
        public var serverCPUSeconds: Double?
        public var sessionsPerServerCPUSecond: Double?
        /// Time from TCP connect to an admitted session, in milliseconds.
        public var latencyMilliseconds: LatencySummary
        public var firstError: String?
    }

    private final class State: Sendable {
        let counted = Atomic<Bool>(false)
        let stop = Atomic<Bool>(false)
        let sessions = Atomic<Int>(0)
        let failures = Atomic<Int>(0)
        let firstError = Mutex<String?>(nil)
        let latency = Mutex(Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three))
    }

    public static func run(
        _ target: BenchTarget, duration: Double, warmup: Double, concurrency: Int, resume: Bool, progress: Bool,
        group: any EventLoopGroup
    ) async throws -> Result {
        if resume {
            throw BenchError(
                "--resume: swift-nio-ssl's client keeps no TLS sessions to resume; measure resumption with "
                    + "'openssl s_time -reuse' (Benchmarks/run.py does)")
        }
        let bench = BenchWire(wire: target.wire, topic: "")
        let state = State()
        let reporter = Progress(enabled: progress)

        // Sessions of the warm-up are made but not counted.
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            for _ in 0..<concurrency {
                tasks.addTask {
                    var local = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
                    while !state.stop.load(ordering: .relaxed) {
                        let began = BenchClock.now()
                        do {
                            let session = try await BenchSession.open(target, bench: bench, group: group)
                            let took = BenchClock.now() - began
                            session.close()
                            if state.counted.load(ordering: .relaxed) {
                                state.sessions.add(1, ordering: .relaxed)
                                local.record(took / 1000)
                            }
                        } catch {
                            if state.counted.load(ordering: .relaxed) { state.failures.add(1, ordering: .relaxed) }
                            state.firstError.withLock { if $0 == nil { $0 = "\(error)" } }
                        }
                    }
                    state.latency.withLock { $0.add(local) }
                }
            }
            try await Task.sleep(for: .seconds(warmup))
            state.counted.store(true, ordering: .relaxed)
            let cpu = ServerCPUWindow(target)
            let started = BenchClock.now()
            var lastCount = 0
            for second in 1...max(1, Int(duration.rounded(.up))) {
                try await Task.sleep(for: .seconds(min(1, duration - Double(second - 1))))
                let count = state.sessions.load(ordering: .relaxed)
                reporter.report("connect \(second)/\(Int(duration.rounded(.up))) s: \(count - lastCount) sessions/s, \(state.failures.load(ordering: .relaxed)) failed")
                lastCount = count
            }
            state.counted.store(false, ordering: .relaxed)
            let seconds = Double(BenchClock.now() - started) / 1e9
            let serverCPU = cpu.seconds()
            state.stop.store(true, ordering: .relaxed)
            try await tasks.waitForAll()
            let total = state.sessions.load(ordering: .relaxed)
            return Result(
                wire: target.wire, resumed: false, concurrency: concurrency, seconds: seconds, sessions: total,
                failures: state.failures.load(ordering: .relaxed), sessionsPerSecond: Double(total) / seconds,
                serverCPUSeconds: serverCPU, sessionsPerServerCPUSecond: serverCPU.map { Double(total) / $0 },
                latencyMilliseconds: state.latency.withLock { LatencySummary($0, divisor: 1000) },
                firstError: state.firstError.withLock { $0 })
        }
    }
}
