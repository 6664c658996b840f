import Foundation
import Histogram
import NIOCore
import Synchronization

/// How a publisher hands its messages to TLS.
public enum PublishMode: String, Sendable, Codable, CaseIterable {
    /// As a device does: each publish is its own TLS record and its own write, and the publisher yields to its
    /// event loop between publishes. The server pays a read and a decryption per message.
    case perRecord = "per-record"
    /// As a batching client does: the publishes due at once go out in one buffer, so the server reads many
    /// frames per TLS record. Far cheaper for the server, and not what a fleet of devices sends.
    case coalesced
}

/// `bench pubsub`: P publishers and S subscribers, one message per WebSocket frame, all on one topic or (ingest)
/// each publisher on a topic of its own that every subscriber's wildcard covers. Delivered messages and bytes
/// per second, and publish-to-delivery latency.
public enum PubSubBenchmark {
    public struct Options: Sendable {
        public var publishers = 1
        public var subscribers = 1
        public var payloadSize = 64
        /// Messages per second across all publishers; nil for as fast as the server delivers.
        public var rate: Double?
        public var duration = 10.0
        public var warmup = 1.0
        public var topic: String?
        /// At full speed, how many messages may be published but not yet delivered to every subscriber: the
        /// publisher waits for the slowest subscriber rather than letting either server's queues grow.
        public var window = 4096
        public var publishMode = PublishMode.perRecord
        /// Each publisher publishes to `TOPIC/<n>` (`TOPIC.<n>` for NATS) and subscribers subscribe to
        /// `TOPIC/+`: many devices' telemetry to one consumer, through a wildcard.
        public var ingest = false
        /// Subscribers connect to these ports of the target's host in turn (a cluster's other gateways), rather
        /// than to the target's.
        public var subscriberPorts: [Int] = []

        public init() {}
    }

    public struct Result: Codable, Sendable {
        public var scenario = "pubsub"
        public var wire: WireProtocol
        public var publishers: Int
        public var subscribers: Int
        public var payloadBytes: Int
        public var targetRate: Double?
        public var publishMode: PublishMode
        public var ingest: Bool
        public var seconds: Double
        public var published: Int
        public var delivered: Int
        public var deliveredPerSecond: Double
        public var deliveredBytesPerSecond: Double
        public var serverCPUSeconds: Double?
        public var deliveredPerServerCPUSecond: Double?
        /// Publish-to-delivery time, in microseconds.
        public var latencyMicroseconds: LatencySummary
        public var firstError: String?
        /// Deliveries missing once the publishers stopped and the stragglers had up to 30 s to arrive: every
        /// message published during the run, warm-up included, times the subscribers, less what they received.
        public var lost: Int = 0
    }

    public static func run(_ target: BenchTarget, options: Options, progress: Bool, group: any EventLoopGroup) async throws -> Result {
        guard options.payloadSize >= 8 else { throw BenchError("--payload must be at least 8 bytes (it carries the send time)") }
        let topic = options.topic ?? (target.wire == .nats ? "bench.load" : "bench/load")
        let separator = target.wire == .nats ? "." : "/"
        let bench = BenchWire(wire: target.wire, topic: options.ingest ? topic + separator + (target.wire == .nats ? "*" : "+") : topic)
        let measuredFrom = MeasuredWindow()
        let reporter = Progress(enabled: progress)

        var subscribers: [(session: BenchSession, counter: DeliveryCounter)] = []
        for number in 0..<options.subscribers {
            let counter = DeliveryCounter()
            var subscriberTarget = target
            if !options.subscriberPorts.isEmpty { subscriberTarget.port = options.subscriberPorts[number % options.subscriberPorts.count] }
            let session = try await BenchSession.open(
                subscriberTarget, bench: bench, counter: counter, measuredFrom: measuredFrom, group: group)
            try await session.subscribe()
            subscribers.append((session, counter))
        }
        var publishers: [BenchSession] = []
        for _ in 0..<options.publishers {
            publishers.append(try await BenchSession.open(target, bench: bench, group: group))
        }
        // NATS confirms a subscription with the PONG that follows it, so it is in place before anything is published.
        // A gateway's ack says its broker has it; its subscription on the cluster's NATS follows within milliseconds.
        if !options.subscriberPorts.isEmpty { try await Task.sleep(for: .seconds(1)) }
        let flow = PublishFlow(counters: subscribers.map(\.counter), window: options.window)
        var waitersByLoop: [ObjectIdentifier: WindowWaiters] = [:]
        for publisher in publishers where waitersByLoop[ObjectIdentifier(publisher.eventLoop)] == nil {
            waitersByLoop[ObjectIdentifier(publisher.eventLoop)] = WindowWaiters(eventLoop: publisher.eventLoop, flow: flow)
        }
        let filler = [UInt8](repeating: UInt8(ascii: "x"), count: options.payloadSize - 8)
        let drivers = try await withThrowingTaskGroup(of: PublishDriver.self) { tasks in
            for (number, publisher) in publishers.enumerated() {
                let framing = BenchWire(wire: target.wire, topic: options.ingest ? "\(topic)\(separator)\(number)" : topic)
                    .publishFraming(payloadSize: options.payloadSize)
                let waiters = waitersByLoop[ObjectIdentifier(publisher.eventLoop)]!
                tasks.addTask {
                    try await publisher.eventLoop.submit {
                        let driver = PublishDriver(
                            session: publisher, flow: flow, waiters: waiters, framing: framing, filler: filler,
                            rate: options.rate.map { $0 / Double(options.publishers) }, mode: options.publishMode)
                        driver.start()
                        return driver
                    }.get()
                }
            }
            return try await tasks.reduce(into: []) { $0.append($1) }
        }

        func deliveredSoFar() -> Int { subscribers.reduce(0) { $0 + $1.counter.delivered.load(ordering: .relaxed) } }
        try await Task.sleep(for: .seconds(options.warmup))
        measuredFrom.start.store(BenchClock.now(), ordering: .relaxed)
        let cpu = ServerCPUWindow(target)
        let started = BenchClock.now()
        let deliveredAtStart = deliveredSoFar()
        let publishedAtStart = flow.published.load(ordering: .relaxed)
        var last = deliveredAtStart
        let whole = max(1, Int(options.duration.rounded(.up)))
        for second in 1...whole {
            try await Task.sleep(for: .seconds(min(1, options.duration - Double(second - 1))))
            let now = deliveredSoFar()
            reporter.report("pubsub \(second)/\(whole) s: \(now - last) delivered/s")
            last = now
        }
        let delivered = deliveredSoFar() - deliveredAtStart
        let published = flow.published.load(ordering: .relaxed) - publishedAtStart
        let seconds = Double(BenchClock.now() - started) / 1e9
        let serverCPU = cpu.seconds()
        for driver in drivers { driver.stop() }
        let lost = try await stragglersMissing(after: flow)

        var latency = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
        var firstError: String?
        for session in subscribers.map(\.session) + publishers {
            let (histogram, error) = try await session.onLoop { ($0.latency, $0.firstError) }
            latency.add(histogram)
            firstError = firstError ?? error
            session.close()
        }
        return Result(
            wire: target.wire, publishers: options.publishers, subscribers: options.subscribers,
            payloadBytes: options.payloadSize, targetRate: options.rate, publishMode: options.publishMode,
            ingest: options.ingest, seconds: seconds, published: published,
            delivered: delivered, deliveredPerSecond: Double(delivered) / seconds,
            deliveredBytesPerSecond: Double(delivered * options.payloadSize) / seconds, serverCPUSeconds: serverCPU,
            deliveredPerServerCPUSecond: serverCPU.map { Double(delivered) / $0 },
            latencyMicroseconds: LatencySummary(latency, divisor: 1000), firstError: firstError, lost: lost)
    }

    /// Waits (up to 30 s: the window's figures do not depend on it) until every subscriber has what was
    /// published, and returns how many deliveries are still missing then.
    private static func stragglersMissing(after flow: PublishFlow) async throws -> Int {
        func missing() -> Int {
            let published = flow.published.load(ordering: .relaxed)
            return flow.counters.reduce(0) { $0 + max(0, published - $1.delivered.load(ordering: .relaxed)) }
        }
        let deadline = BenchClock.now() + 30_000_000_000
        while missing() > 0, BenchClock.now() < deadline { try await Task.sleep(for: .milliseconds(10)) }
        return missing()
    }
}

/// How far publishers may run ahead of the slowest subscriber.
final class PublishFlow: Sendable {
    let published = Atomic<Int>(0)
    let counters: [DeliveryCounter]
    let window: Int

    init(counters: [DeliveryCounter], window: Int) {
        self.counters = counters
        self.window = window
    }

    /// How many more messages may be published now.
    var allowance: Int {
        let slowest = counters.lazy.map { $0.delivered.load(ordering: .relaxed) }.min() ?? .max
        return window - (published.load(ordering: .relaxed) - slowest)
    }
}

/// The publishers of one event loop that wait for room in the flow window, woken by one timer that polls for
/// them all. A timer per publisher was one task due every 50 µs per publisher: with 50 or more, the loop ran due
/// timers without end (NIO runs every ready task before it reads) and never read the deliveries they waited for.
final class WindowWaiters: @unchecked Sendable {
    // @unchecked: used only on its event loop.
    private let eventLoop: any EventLoop
    private let flow: PublishFlow
    private var waiting: [() -> Void] = []
    private var polling = false

    init(eventLoop: any EventLoop, flow: PublishFlow) {
        self.eventLoop = eventLoop
        self.flow = flow
    }

    /// Calls `resume` once the window has room.
    func wait(_ resume: @escaping () -> Void) {
        waiting.append(resume)
        guard !polling else { return }
        polling = true
        eventLoop.scheduleTask(in: .microseconds(50)) { self.poll() }
    }

    private func poll() {
        guard flow.allowance > 0 else {
            eventLoop.scheduleTask(in: .microseconds(50)) { self.poll() }
            return
        }
        polling = false
        let ready = waiting
        waiting = []
        for resume in ready { resume() }
    }
}

/// Publishes from one session's event loop: at a fixed rate (a 1 ms timer writes what is due), or as fast as the
/// flow window and the socket allow; per record, one publish per turn of the event loop.
final class PublishDriver: @unchecked Sendable {
    // @unchecked: created, driven and stopped only on the session's event loop.
    private let session: BenchSession
    private let flow: PublishFlow
    private let waiters: WindowWaiters
    private let framing: (prefix: [UInt8], suffix: [UInt8])
    private let filler: [UInt8]
    private let rate: Double?
    private let mode: PublishMode
    private var sent = 0
    private var started: UInt64 = 0
    private var stopped = false
    private var timer: RepeatedTask?

    init(session: BenchSession, flow: PublishFlow, waiters: WindowWaiters, framing: (prefix: [UInt8], suffix: [UInt8]), filler: [UInt8], rate: Double?, mode: PublishMode) {
        self.mode = mode
        self.waiters = waiters
        self.session = session
        self.flow = flow
        self.framing = framing
        self.filler = filler
        self.rate = rate
    }

    func start() {
        started = BenchClock.now()
        let handler = session.handlerOnLoop
        if let rate {
            // The timer runs on the session's loop, where the handler lives.
            let handler = NIOLoopBound(handler, eventLoop: session.eventLoop)
            timer = session.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(1)) { [self] _ in
                let due = Int(Double(BenchClock.now() - started) / 1e9 * rate) - sent
                // After a stall, catch up by at most 100 ms worth rather than in one burst.
                let count = min(due, max(1, Int(rate / 10)))
                guard count > 0, !stopped else { return }
                handler.value.publish(count: count, framing: framing, filler: filler, mode: mode)
                sent += count
                flow.published.add(count, ordering: .relaxed)
            }
        } else {
            handler.onWritable = { [self] in self.publishAsAllowed() }
            publishAsAllowed()
        }
    }

    private func publishAsAllowed() {
        guard !stopped else { return }
        let handler = session.handlerOnLoop
        guard handler.isWritable else { return }  // resumed by onWritable
        let count = min(flow.allowance, mode == .perRecord ? 1 : 256)
        if count > 0 {
            handler.publish(count: count, framing: framing, filler: filler, mode: mode)
            sent += count
            flow.published.add(count, ordering: .relaxed)
            session.eventLoop.execute { self.publishAsAllowed() }
        } else {
            waiters.wait { self.publishAsAllowed() }
        }
    }

    func stop() {
        session.eventLoop.execute { [self] in
            stopped = true
            timer?.cancel()
            session.handlerOnLoop.onWritable = nil
        }
    }
}
