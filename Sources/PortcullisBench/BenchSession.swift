import Foundation
import Histogram
import NIOCore
import NIOPosix
import PortcullisClient
import Synchronization

/// One admitted session of a benchmark: upgraded, and past the protocol's handshake.
struct BenchSession: Sendable {
    let eventLoop: any EventLoop
    private let slot: HandlerSlot

    /// The handler lives on its channel's event loop; this slot is written there once, before the upgrade's
    /// outcome is delivered, and read only through ``onLoop(_:)`` afterwards.
    private final class HandlerSlot: @unchecked Sendable {
        var handler: BenchSessionHandler?
        var eventLoop: (any EventLoop)?
    }

    /// Connects, upgrades and completes the handshake. Throws with the server's reason when refused.
    static func open(
        _ target: BenchTarget, bench: BenchWire, counter: DeliveryCounter? = nil, measuredFrom: MeasuredWindow? = nil,
        group: any EventLoopGroup
    ) async throws -> BenchSession {
        let ready = group.any().makePromise(of: Void.self)
        let slot = HandlerSlot()
        let outcome: GatewayClient.Outcome
        do {
            outcome = try await GatewayClient.connect(
                host: target.host, port: target.port, path: target.path, origins: target.origin.map { [$0] } ?? [],
                tls: target.tls,
                frameHandler: { [counter, measuredFrom] in
                    let handler = BenchSessionHandler(bench: bench, ready: ready, counter: counter, measuredFrom: measuredFrom)
                    slot.handler = handler
                    slot.eventLoop = MultiThreadedEventLoopGroup.currentEventLoop
                    return handler
                },
                localAddress: target.sources.take(),
                group: group)
        } catch {
            ready.fail(error)
            throw error
        }
        guard case .upgraded = outcome, let eventLoop = slot.eventLoop else {
            let failure = BenchError("refused with \(outcome.status)")
            ready.fail(failure)
            throw failure
        }
        try await ready.futureResult.get()
        return BenchSession(eventLoop: eventLoop, slot: slot)
    }

    private init(eventLoop: any EventLoop, slot: HandlerSlot) {
        self.eventLoop = eventLoop
        self.slot = slot
    }

    /// Runs `body` with the handler on its event loop.
    func onLoop<T: Sendable>(_ body: @escaping @Sendable (BenchSessionHandler) throws -> T) async throws -> T {
        try await eventLoop.submit { [slot] in try body(slot.handler!) }.get()
    }

    /// The handler, for code already running on ``eventLoop``.
    var handlerOnLoop: BenchSessionHandler {
        eventLoop.preconditionInEventLoop()
        return slot.handler!
    }

    func subscribe() async throws {
        try await eventLoop.flatSubmit { [slot] in slot.handler!.subscribe() }.get()
    }

    func close() {
        eventLoop.execute { [slot] in slot.handler?.close() }
    }
}

/// Percentiles of a latency histogram, in the unit the caller chose.
public struct LatencySummary: Codable, Sendable, Equatable {
    public var p50: Double
    public var p90: Double
    public var p99: Double
    public var p99_9: Double
    public var max: Double
    public var count: UInt64

    init(_ histogram: Histogram<UInt64>, divisor: Double) {
        p50 = Double(histogram.valueAtPercentile(50)) / divisor
        p90 = Double(histogram.valueAtPercentile(90)) / divisor
        p99 = Double(histogram.valueAtPercentile(99)) / divisor
        p99_9 = Double(histogram.valueAtPercentile(99.9)) / divisor
        max = Double(histogram.max) / divisor
        count = histogram.totalCount
    }
}

/// Server CPU time across the measured window, when the server's process is known.
struct ServerCPUWindow {
    let probes: [ServerProbe]
    let start: Double?

    /// The CPU time of the target's server process, and of its other processes (a cluster's gateways and NATS).
    init(_ target: BenchTarget) {
        probes = (target.serverPID.map { [$0] } ?? []).map(ServerProbe.init) + target.otherServerPIDs.map(ServerProbe.init)
        start = Self.total(probes)
    }

    func seconds() -> Double? {
        guard let start, let end = Self.total(probes) else { return nil }
        return end - start
    }

    private static func total(_ probes: [ServerProbe]) -> Double? {
        guard !probes.isEmpty else { return nil }
        var sum = 0.0
        for probe in probes {
            guard let seconds = probe.cpuSeconds() else { return nil }
            sum += seconds
        }
        return sum
    }
}

/// Prints a progress line about once a second to standard error while a benchmark runs.
struct Progress: Sendable {
    let enabled: Bool

    func report(_ line: String) {
        guard enabled else { return }
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}
