import Foundation
import NIOCore
import Synchronization

/// `bench idle`: opens N sessions, holds them, and reports what each costs the server in resident memory
/// (read from /proc, so it needs the server's pid) and how long opening them took.
public enum IdleBenchmark {
    public struct Result: Codable, Sendable {
        public var scenario = "idle"
        public var wire: WireProtocol
        public var sessions: Int
        public var failures: Int
        public var openSeconds: Double
        public var sessionsPerSecond: Double
        public var serverResidentKiBBefore: Int?
        public var serverResidentKiBAfter: Int?
        public var serverKiBPerSession: Double?
        public var firstError: String?
    }

    private final class State: Sendable {
        /// The next session to open, shared by the concurrent openers.
        let next = Atomic<Int>(0)
        let failures = Atomic<Int>(0)
    }

    public static func run(
        _ target: BenchTarget, sessions count: Int, concurrency: Int, hold: Double, progress: Bool, group: any EventLoopGroup
    ) async throws -> Result {
        let probe = target.serverPID.map(ServerProbe.init)
        let before = probe?.residentKiB()
        let bench = BenchWire(wire: target.wire, topic: "")
        let state = State()
        let reporter = Progress(enabled: progress)
        let started = BenchClock.now()
        let (opened, firstError) = try await withThrowingTaskGroup(of: ([BenchSession], String?).self) { tasks in
            for _ in 0..<concurrency {
                tasks.addTask {
                    var mine: [BenchSession] = []
                    var firstError: String?
                    while state.next.add(1, ordering: .relaxed).oldValue < count {
                        do {
                            mine.append(try await BenchSession.open(target, bench: bench, group: group))
                        } catch {
                            state.failures.add(1, ordering: .relaxed)
                            firstError = firstError ?? "\(error)"
                        }
                    }
                    return (mine, firstError)
                }
            }
            let reporting = Task {
                while !Task.isCancelled {
                    try await Task.sleep(for: .seconds(1))
                    reporter.report("idle: \(min(count, state.next.load(ordering: .relaxed))) of \(count) sessions opened")
                }
            }
            defer { reporting.cancel() }
            return try await tasks.reduce(into: ([BenchSession](), String?.none)) {
                $0.0 += $1.0
                $0.1 = $0.1 ?? $1.1
            }
        }
        let openSeconds = Double(BenchClock.now() - started) / 1e9
        // Let the server settle (audit writes, buffers released after the handshakes) before reading its memory.
        try await Task.sleep(for: .seconds(hold))
        let after = probe?.residentKiB()
        reporter.report("idle: holding \(opened.count) sessions; server RSS \(after.map { "\($0) KiB" } ?? "unknown")")
        for session in opened { session.close() }
        var perSession: Double?
        if let before, let after, !opened.isEmpty { perSession = Double(after - before) / Double(opened.count) }
        return Result(
            wire: target.wire, sessions: opened.count, failures: state.failures.load(ordering: .relaxed), openSeconds: openSeconds,
            sessionsPerSecond: Double(opened.count) / openSeconds, serverResidentKiBBefore: before,
            serverResidentKiBAfter: after, serverKiBPerSession: perSession, firstError: firstError)
    }
}
