import Foundation
import Histogram
import NIOCore
import NIOPosix
import Synchronization

/// `bench connect`: sessions established per second, each a full mTLS handshake (or, with `--resume`, a
/// resumed one), the upgrade, admission and (for NATS) CONNECT and PING, then closed at once.
public enum ConnectBenchmark {
    public struct Result: Codable, Sendable {
        public var scenario = "connect"
        public var wire: WireProtocol
        public var resume: Bool
        public var concurrency: Int
        public var seconds: Double
        public var sessions: Int
        /// Of ``sessions``, how many resumed a TLS session (with `--resume`; the first of each client cannot).
        public var resumedSessions: Int?
        public var failures: Int
        public var sessionsPerSecond: Double
        public var serverCPUSeconds: Double?
        public var sessionsPerServerCPUSecond: Double?
        /// Time from TCP connect to an admitted session, in milliseconds.
        public var latencyMilliseconds: LatencySummary
        public var firstError: String?
    }

    /// Shared by the clients of one run: sessions made in the measured window, failures, latency.
    final class State: Sendable {
        let counted = Atomic<Bool>(false)
        let stop = Atomic<Bool>(false)
        let sessions = Atomic<Int>(0)
        let resumed = Atomic<Int>(0)
        let failures = Atomic<Int>(0)
        let running = Atomic<Int>(0)
        let firstError = Mutex<String?>(nil)
        let latency = Mutex(Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three))

        /// A failed attempt counts when it began or ended in the measured window: on a loaded machine a refusal
        /// can take longer than the window, and it must still be reported, not lost between two windows.
        func record(error: any Error, beganInWindow: Bool = false) {
            if beganInWindow || counted.load(ordering: .relaxed) { failures.add(1, ordering: .relaxed) }
            firstError.withLock { if $0 == nil { $0 = "\(error)" } }
        }
    }

    public static func run(
        _ target: BenchTarget, duration: Double, warmup: Double, concurrency: Int, resume: Bool, progress: Bool,
        group: any EventLoopGroup
    ) async throws -> Result {
        let state = State()
        // Without a warm-up, the first attempts are already measured.
        if warmup <= 0 { state.counted.store(true, ordering: .relaxed) }
        if resume {
            try ResumingConnector.start(target, concurrency: concurrency, state: state)
        } else {
            startNIOClients(target, concurrency: concurrency, state: state, group: group)
        }
        let reporter = Progress(enabled: progress)
        // Sessions of the warm-up are made but not counted.
        try await Task.sleep(for: .seconds(warmup))
        state.counted.store(true, ordering: .relaxed)
        let cpu = ServerCPUWindow(target)
        let started = BenchClock.now()
        var lastCount = 0
        let whole = max(1, Int(duration.rounded(.up)))
        for second in 1...whole {
            try await Task.sleep(for: .seconds(min(1, duration - Double(second - 1))))
            let count = state.sessions.load(ordering: .relaxed)
            reporter.report(
                "connect \(second)/\(whole) s: \(count - lastCount) sessions/s, \(state.failures.load(ordering: .relaxed)) failed")
            lastCount = count
        }
        state.counted.store(false, ordering: .relaxed)
        let seconds = Double(BenchClock.now() - started) / 1e9
        let serverCPU = cpu.seconds()
        state.stop.store(true, ordering: .relaxed)
        while state.running.load(ordering: .relaxed) > 0 { try await Task.sleep(for: .milliseconds(10)) }
        let total = state.sessions.load(ordering: .relaxed)
        return Result(
            wire: target.wire, resume: resume, concurrency: concurrency, seconds: seconds, sessions: total,
            resumedSessions: resume ? state.resumed.load(ordering: .relaxed) : nil,
            failures: state.failures.load(ordering: .relaxed), sessionsPerSecond: Double(total) / seconds,
            serverCPUSeconds: serverCPU, sessionsPerServerCPUSecond: serverCPU.map { Double(total) / $0 },
            latencyMilliseconds: state.latency.withLock { LatencySummary($0, divisor: 1000) },
            firstError: state.firstError.withLock { $0 })
    }

    /// Full handshakes with the client library, `concurrency` at a time.
    private static func startNIOClients(_ target: BenchTarget, concurrency: Int, state: State, group: any EventLoopGroup) {
        let bench = BenchWire(wire: target.wire, topic: "")
        for _ in 0..<concurrency {
            state.running.add(1, ordering: .relaxed)
            Task {
                defer { state.running.subtract(1, ordering: .relaxed) }
                var local = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
                while !state.stop.load(ordering: .relaxed) {
                    let began = BenchClock.now()
                    let beganInWindow = state.counted.load(ordering: .relaxed)
                    do {
                        let session = try await BenchSession.open(target, bench: bench, group: group)
                        let took = BenchClock.now() - began
                        session.close()
                        if state.counted.load(ordering: .relaxed) {
                            state.sessions.add(1, ordering: .relaxed)
                            local.record(took / 1000)
                        }
                    } catch {
                        state.record(error: error, beganInWindow: beganInWindow)
                    }
                }
                state.latency.withLock { $0.add(local) }
            }
        }
    }
}
