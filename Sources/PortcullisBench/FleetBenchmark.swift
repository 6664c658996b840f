import Foundation
import Histogram
import PortcullisPKI
import Synchronization
import X509

#if canImport(Glibc)
import Glibc
#endif

/// `bench fleet`: a fleet of idle devices on one gateway, held as devices hold their sessions. N mTLS sessions,
/// each subscribed to its own `devices/<name>/commands/#` and answering the gateway's pings, are held while the
/// server's memory, descriptors and CPU time are sampled and commands go to random devices (publish-to-delivery
/// latency). Then a reconnect storm: every device drops its connection (a TCP reset, no close_notify, as a lost
/// network does) and all reconnect at once, resuming their TLS sessions, and subscribe again.
///
/// Devices use the system's OpenSSL (``SystemOpenSSL``: swift-nio-ssl cannot resume a session as a client): each
/// is set up with blocking calls on one of `concurrency` threads, then handed to one thread that waits on all of
/// them with epoll, answering pings and timing deliveries. With `deviceIssuer`, every device gets a certificate of
/// its own (`fleet-<n>`), minted in this process, so the gateway holds one identity per device as a real fleet's.
public enum FleetBenchmark {
    public struct Options: Sendable {
        public var devices: Int
        public var concurrency: Int
        public var hold: Double
        public var commandsPerSecond: Double
        public var sampleInterval: Double
        public var storm: Bool
        /// Filters each device subscribes to: its `commands/#`, then `commands/<k>/#` under it.
        public var subscriptionsPerDevice: Int
        /// A PKI directory whose issuing CA signs a certificate per device; nil: every device uses the target's.
        public var deviceIssuer: String?

        public init(
            devices: Int, concurrency: Int, hold: Double, commandsPerSecond: Double, sampleInterval: Double, storm: Bool,
            subscriptionsPerDevice: Int = 1, deviceIssuer: String?
        ) {
            self.subscriptionsPerDevice = subscriptionsPerDevice
            self.devices = devices
            self.concurrency = concurrency
            self.hold = hold
            self.commandsPerSecond = commandsPerSecond
            self.sampleInterval = sampleInterval
            self.storm = storm
            self.deviceIssuer = deviceIssuer
        }
    }

    /// The server at one moment of the hold.
    public struct Sample: Codable, Sendable {
        /// Seconds since the ramp ended.
        public var seconds: Double
        public var residentKiB: Int?
        public var openFiles: Int?
        public var cpuSeconds: Double?
    }

    /// Commands sent to random devices in one phase, and how many arrived.
    public struct Commands: Codable, Sendable {
        public var sent: Int
        public var delivered: Int
        public var latencyMicroseconds: LatencySummary
    }

    public struct Storm: Codable, Sendable {
        /// From the first drop to the last device subscribed again.
        public var seconds: Double
        /// Server CPU time over those seconds.
        public var serverCPUSeconds: Double?
        public var reconnected: Int
        public var resumed: Int
        public var failures: Int
        /// Commands to random devices once all were back: each must arrive.
        public var commandsAfter: Commands
    }

    public struct Result: Codable, Sendable {
        public var scenario = "fleet"
        public var devices: Int
        public var failures: Int
        public var rampSeconds: Double
        /// Server CPU time over the ramp: full handshakes, admissions and subscriptions.
        public var rampServerCPUSeconds: Double?
        public var serverResidentKiBBefore: Int?
        /// Resident memory added per connected, subscribed device, read right after the ramp.
        public var serverKiBPerDevice: Double?
        public var holdSeconds: Double
        public var samples: [Sample]
        /// Server CPU per device and hour while the fleet idled (pings and the commands), in milliseconds.
        public var serverCPUMillisecondsPerDeviceHour: Double?
        public var commands: Commands
        /// Sessions the server closed during the hold: none should be.
        public var closedByServer: Int
        public var storm: Storm?
        public var firstError: String?
    }

    public static func run(_ target: BenchTarget, options: Options, progress: Bool) throws -> Result {
        let openssl = try SystemOpenSSL()
        let context = try openssl.makeClientContext(
            certificate: target.tls.certificateChain ?? "", key: target.tls.privateKey ?? "", ca: target.tls.trustRoots)
        defer { openssl.freeContext(context) }
        let opener = ResumingConnector.Opener(openssl: openssl, context: context, target: target)
        let reporter = Progress(enabled: progress)
        let credentials = try options.deviceIssuer.map { try DeviceCredentials(issuer: $0, count: options.devices, reporter: reporter) }
        defer { credentials?.remove() }

        let devices = (0...options.devices).map { FleetDevice(index: $0) }
        let commander = devices[options.devices]
        let keeper = try FleetKeeper(openssl: openssl, devices: devices)
        defer { keeper.stop() }
        let probe = target.serverPID.map(ServerProbe.init)
        let before = probe?.residentKiB()

        let connect: @Sendable (FleetDevice) throws -> Bool = { [options] device in
            let name = device.index == options.devices ? nil : "fleet-\(device.index)"
            let resumed = try device.connect(
                opener: opener, credentials: name.flatMap { credentials?.paths($0) },
                subscribeTo: name.map { Self.filters(device: $0, count: options.subscriptionsPerDevice) } ?? [])
            keeper.watch(device)
            return resumed
        }

        try _ = connect(commander)
        let cpuBeforeRamp = probe?.cpuSeconds()
        let ramp = Self.inParallel(devices.dropLast(), threads: options.concurrency, reporter: reporter, label: "ramp", connect)
        let rampSeconds = ramp.seconds
        let after = probe?.residentKiB()
        let rampCPU = probe?.cpuSeconds().flatMap { end in cpuBeforeRamp.map { end - $0 } }

        // Hold: commands at the rate, a sample every interval.
        var samples: [Sample] = []
        let holdStart = BenchClock.now()
        let cpuAtStart = probe?.cpuSeconds()
        func sample() {
            samples.append(Sample(
                seconds: Double(BenchClock.now() - holdStart) / 1e9, residentKiB: probe?.residentKiB(),
                openFiles: probe?.openFiles(), cpuSeconds: probe?.cpuSeconds()))
            reporter.report("fleet: \(keeper.connected) connected; server RSS \(samples.last?.residentKiB ?? 0) KiB, "
                + "\(samples.last?.openFiles ?? 0) descriptors")
        }
        sample()
        let commands = sendCommands(
            from: commander, to: options.devices, for: options.hold, perSecond: options.commandsPerSecond, keeper: keeper,
            every: options.sampleInterval, sample)
        let cpuHeld = probe?.cpuSeconds().flatMap { end in cpuAtStart.map { end - $0 } }
        let closedByServer = keeper.closedByServer.load(ordering: .relaxed)

        var storm: Storm?
        var stormError: String?
        if options.storm {
            let started = BenchClock.now()
            let cpuBeforeStorm = probe?.cpuSeconds()
            reporter.report("fleet storm: every device drops its connection")
            for device in devices.dropLast() { keeper.drop(device) }
            let again = Self.inParallel(devices.dropLast(), threads: options.concurrency, reporter: reporter, label: "storm", connect)
            stormError = again.firstError
            storm = Storm(
                seconds: Double(BenchClock.now() - started) / 1e9,
                serverCPUSeconds: probe?.cpuSeconds().flatMap { end in cpuBeforeStorm.map { end - $0 } },
                reconnected: again.succeeded, resumed: again.resumed,
                failures: again.failures,
                commandsAfter: sendCommands(
                    from: commander, to: options.devices, count: min(options.devices, 1_000),
                    perSecond: max(options.commandsPerSecond, 100), keeper: keeper))
        }
        for device in devices { keeper.close(device) }

        var perDevice: Double?
        if let before, let after, ramp.succeeded > 0 { perDevice = Double(after - before) / Double(ramp.succeeded) }
        var cpuPerDeviceHour: Double?
        if let cpuHeld, ramp.succeeded > 0, options.hold > 0 {
            cpuPerDeviceHour = cpuHeld * 1000 / Double(ramp.succeeded) * 3600 / options.hold
        }
        return Result(
            devices: ramp.succeeded, failures: ramp.failures, rampSeconds: rampSeconds, rampServerCPUSeconds: rampCPU,
            serverResidentKiBBefore: before,
            serverKiBPerDevice: perDevice, holdSeconds: options.hold, samples: samples,
            serverCPUMillisecondsPerDeviceHour: cpuPerDeviceHour, commands: commands, closedByServer: closedByServer,
            storm: storm, firstError: ramp.firstError ?? stormError ?? keeper.firstError.withLock { $0 })
    }

    /// The filters device `name` subscribes to: commands for it arrive on the first.
    static func filters(device name: String, count: Int) -> [String] {
        ["devices/\(name)/commands/#"] + (1..<max(1, count)).map { "devices/\(name)/commands/\($0)/#" }
    }

    /// What connecting a set of devices on several threads came to.
    struct ParallelOutcome {
        var seconds: Double
        var succeeded: Int
        var resumed: Int
        var failures: Int
        var firstError: String?
    }

    /// Runs `connect` for every device on `threads` threads, blocking until all are done; `connect` returns whether
    /// the TLS session was resumed.
    static func inParallel(
        _ devices: ArraySlice<FleetDevice>, threads: Int, reporter: Progress, label: String,
        _ connect: @escaping @Sendable (FleetDevice) throws -> Bool
    ) -> ParallelOutcome {
        final class Tally: Sendable {
            let next = Atomic<Int>(0), succeeded = Atomic<Int>(0), resumed = Atomic<Int>(0), failures = Atomic<Int>(0)
            let firstError = Mutex<String?>(nil)
        }
        let tally = Tally()
        let done = DispatchGroup()
        let started = BenchClock.now()
        let list = Array(devices)
        reporter.report("fleet \(label): connecting \(list.count) devices")
        for _ in 0..<max(1, threads) {
            done.enter()
            Thread.detachNewThread {
                defer { done.leave() }
                while true {
                    let index = tally.next.add(1, ordering: .relaxed).oldValue
                    guard index < list.count else { return }
                    do {
                        if try connect(list[index]) { tally.resumed.add(1, ordering: .relaxed) }
                        tally.succeeded.add(1, ordering: .relaxed)
                    } catch {
                        tally.failures.add(1, ordering: .relaxed)
                        tally.firstError.withLock { $0 = $0 ?? "device \(list[index].index): \(error)" }
                    }
                }
            }
        }
        while done.wait(timeout: .now() + 1) == .timedOut {
            reporter.report("fleet \(label): \(tally.succeeded.load(ordering: .relaxed)) of \(list.count) connected, "
                + "\(tally.failures.load(ordering: .relaxed)) failed")
        }
        return ParallelOutcome(
            seconds: Double(BenchClock.now() - started) / 1e9, succeeded: tally.succeeded.load(ordering: .relaxed),
            resumed: tally.resumed.load(ordering: .relaxed), failures: tally.failures.load(ordering: .relaxed),
            firstError: tally.firstError.withLock { $0 })
    }

    /// Sends commands to random devices, `perSecond`, for `seconds` (or `count` of them), calling `sample` every
    /// `interval` seconds; then waits up to 10 s for the last to arrive.
    static func sendCommands(
        from commander: FleetDevice, to devices: Int, for seconds: Double = .infinity, count: Int = .max,
        perSecond: Double, keeper: FleetKeeper, every interval: Double = .infinity, _ sample: () -> Void = {}
    ) -> Commands {
        keeper.resetCommands()
        let start = BenchClock.now()
        let end = seconds.isFinite ? start + UInt64(seconds * 1e9) : .max
        let spacing = UInt64(1e9 / max(perSecond, 0.001))
        var nextSample = interval.isFinite ? start + UInt64(interval * 1e9) : .max
        var sent = 0
        var due = start
        while sent < count, due < end {
            let now = BenchClock.now()
            if now >= nextSample {
                sample()
                nextSample += UInt64(interval * 1e9)
            }
            if now < due {
                usleep(UInt32(min(due - now, 100_000_000) / 1000))
                continue
            }
            let device = Int.random(in: 0..<devices)
            var payload = withUnsafeBytes(of: BenchClock.now().bigEndian) { Array($0) }
            payload += [UInt8](repeating: 0x2E, count: 56)
            let topic = Array("devices/fleet-\(device)/commands/reboot".utf8)
            let publish = [0x01, UInt8(topic.count >> 8), UInt8(topic.count & 0xFF)] + topic + payload
            if commander.send(ResumingConnector.Opener.maskedFrame(opcode: 0x2, payload: publish)) { sent += 1 }
            due += spacing
        }
        if seconds.isFinite { sample() }
        let deadline = BenchClock.now() + 10_000_000_000
        while keeper.commandsDelivered < sent, BenchClock.now() < deadline { usleep(10_000) }
        return Commands(sent: sent, delivered: keeper.commandsDelivered, latencyMicroseconds: keeper.commandLatency())
    }
}

/// One device's connection. Every field is touched under `lock`: by its connecting thread, by the keeper thread
/// that reads it, and by the thread that sends commands (the commander).
final class FleetDevice: @unchecked Sendable {
    let index: Int
    let lock = NSLock()
    private(set) var fd: Int32 = -1
    private(set) var ssl: OpaquePointer?
    /// The TLS session to resume, kept across reconnections.
    private var session: OpaquePointer?
    /// Bytes read and not yet a whole frame.
    var inbound: [UInt8] = []
    private var openssl: SystemOpenSSL?

    init(index: Int) {
        self.index = index
    }

    var isOpen: Bool { lock.withLock { ssl != nil } }

    /// Connects (resuming the last session), subscribes and waits for the ack, with blocking calls; then makes the
    /// socket non-blocking for the keeper. Returns whether the TLS session was resumed.
    func connect(
        opener: ResumingConnector.Opener, credentials: (chain: String, key: String)?, subscribeTo filters: [String]
    ) throws -> Bool {
        try lock.withLock {
            openssl = opener.openssl
            var established = try opener.establish(resuming: &session, credentials: credentials)
            do {
                for filter in filters {
                    let request = Array(#"{"type":"subscribe","topic":"\#(filter)","id":"s"}"#.utf8)
                    try opener.write(established.ssl, ResumingConnector.Opener.maskedFrame(opcode: 0x1, payload: request))
                }
                try Self.awaitAcks(filters.count, opener, established.ssl, buffered: &established.buffered)
            } catch {
                opener.openssl.freeSSL(established.ssl)
                close(established.fd)
                throw error
            }
            var noTimeout = timeval()
            setsockopt(established.fd, SOL_SOCKET, SO_RCVTIMEO, &noTimeout, socklen_t(MemoryLayout<timeval>.size))
            _ = fcntl(established.fd, F_SETFL, fcntl(established.fd, F_GETFL) | O_NONBLOCK)
            (fd, ssl, inbound) = (established.fd, established.ssl, established.buffered)
            return established.resumed
        }
    }

    private static func awaitAcks(
        _ count: Int, _ opener: ResumingConnector.Opener, _ ssl: OpaquePointer, buffered: inout [UInt8]
    ) throws {
        var acknowledged = 0
        while true {
            while acknowledged < count, let (payload, consumed) = ResumingConnector.Opener.frame(in: buffered) {
                buffered.removeFirst(consumed)
                let text = String(decoding: payload, as: UTF8.self)
                if text.hasPrefix(#"{"type":"ack""#) { acknowledged += 1 }
                if text.hasPrefix(#"{"type":"error""#) { throw BenchError("subscribe refused: \(text)") }
            }
            // Nothing more is due once every ack is in: another read would wait for the next ping.
            if acknowledged == count { return }
            try opener.readMore(ssl, into: &buffered)
        }
    }

    /// Writes a whole frame on the non-blocking socket, waiting for room when the socket's buffer is full.
    /// Call with `lock` held.
    func writeLocked(_ bytes: [UInt8]) -> Bool {
        guard let ssl, let openssl else { return false }
        while true {
            let written = bytes.withUnsafeBytes { openssl.write(ssl, $0.baseAddress, Int32($0.count)) }
            if written == bytes.count { return true }
            guard openssl.getError(ssl, written) == 3 /* SSL_ERROR_WANT_WRITE */ else { return false }
            var ready = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&ready, 1, 1000)
        }
    }

    /// Sends a frame from another thread than the keeper's.
    func send(_ bytes: [UInt8]) -> Bool {
        lock.withLock { writeLocked(bytes) }
    }

    /// Ends the connection. `reset`: as a lost network would, a TCP reset without close_notify, keeping the TLS
    /// session resumable; otherwise a close frame and close_notify. Call with `lock` held.
    func endLocked(reset: Bool) {
        guard let ssl, let openssl else { return }
        if reset {
            // SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN: freeing it then does not mark the session unresumable.
            openssl.setShutdownFlags(ssl, 3)
            var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        } else {
            _ = writeLocked(ResumingConnector.Opener.maskedFrame(opcode: 0x8, payload: [0x03, 0xE8]))
            _ = openssl.shutdown(ssl)
        }
        openssl.freeSSL(ssl)
        close(fd)
        (self.ssl, fd, inbound) = (nil, -1, [])
    }

    deinit {
        if let session { openssl?.freeSession(session) }
    }
}

/// The one thread that reads every device: answers pings, times command deliveries, notices closes.
final class FleetKeeper: @unchecked Sendable {
    // @unchecked: the devices are immutable references; their state is behind their locks; the rest is atomic.
    private let openssl: SystemOpenSSL
    private let devices: [FleetDevice]
    private let epoll: Epoll
    private let running = Atomic<Bool>(true)
    private let finished = DispatchSemaphore(value: 0)
    private let delivered = Atomic<Int>(0)
    let closedByServer = Atomic<Int>(0)
    private let open = Atomic<Int>(0)
    let firstError = Mutex<String?>(nil)
    /// Nanoseconds from a command's send time to its delivery.
    private let latency = Mutex(Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three))

    init(openssl: SystemOpenSSL, devices: [FleetDevice]) throws {
        self.openssl = openssl
        self.devices = devices
        epoll = try Epoll()
        Thread.detachNewThread { [self] in
            run()
            finished.signal()
        }
    }

    var connected: Int { open.load(ordering: .relaxed) }
    var commandsDelivered: Int { delivered.load(ordering: .relaxed) }

    func resetCommands() {
        delivered.store(0, ordering: .relaxed)
        latency.withLock { $0.reset() }
    }

    func commandLatency() -> LatencySummary {
        latency.withLock { LatencySummary($0, divisor: 1000) }
    }

    func watch(_ device: FleetDevice) {
        device.lock.withLock { epoll.add(device.fd, token: UInt64(device.index)) }
        open.add(1, ordering: .relaxed)
        // Whatever arrived with the ack is read at the first readiness; there is none for bytes already read.
        if device.lock.withLock({ !device.inbound.isEmpty }) { service(device) }
    }

    /// Drops a device's connection as a lost network does (see ``FleetDevice/endLocked(reset:)``).
    func drop(_ device: FleetDevice) { end(device, reset: true) }

    /// Closes a device's connection cleanly.
    func close(_ device: FleetDevice) { end(device, reset: false) }

    private func end(_ device: FleetDevice, reset: Bool) {
        device.lock.withLock {
            guard device.ssl != nil else { return }
            epoll.remove(device.fd)
            device.endLocked(reset: reset)
            open.subtract(1, ordering: .relaxed)
        }
    }

    func stop() {
        running.store(false, ordering: .relaxed)
        finished.wait()
        epoll.close()
    }

    private func run() {
        while running.load(ordering: .relaxed) {
            for token in epoll.wait(milliseconds: 100) where token < devices.count {
                service(devices[Int(token)])
            }
        }
    }

    /// Reads what the device has, then acts on each whole frame: on the keeper thread, and from `watch` for
    /// what arrived with the ack.
    private func service(_ device: FleetDevice) {
        var chunk = [UInt8](repeating: 0, count: 16_384)
        device.lock.withLock {
            guard let ssl = device.ssl else { return }
            while true {
                let count = chunk.withUnsafeMutableBytes { openssl.read(ssl, $0.baseAddress, Int32($0.count)) }
                if count > 0 {
                    device.inbound += chunk[..<Int(count)]
                    continue
                }
                if openssl.getError(ssl, count) == 2 /* SSL_ERROR_WANT_READ */ { break }
                return closedLocked(device, reason: "the server closed the connection")
            }
            var offset = 0
            while let frame = Self.frame(in: device.inbound, at: offset) {
                offset = frame.end
                switch frame.opcode {
                case 0x9:  // ping: answer as a device does
                    _ = device.writeLocked(ResumingConnector.Opener.maskedFrame(opcode: 0xA, payload: Array(frame.payload)))
                case 0x2:
                    record(delivery: frame.payload)
                case 0x1:
                    let text = String(decoding: frame.payload, as: UTF8.self)
                    if text.hasPrefix(#"{"type":"error""#) { firstError.withLock { $0 = $0 ?? text } }
                case 0x8:
                    return closedLocked(device, reason: "the server sent a close frame")
                default:
                    break
                }
            }
            device.inbound.removeFirst(offset)
        }
    }

    private func closedLocked(_ device: FleetDevice, reason: String) {
        epoll.remove(device.fd)
        device.endLocked(reset: true)
        open.subtract(1, ordering: .relaxed)
        closedByServer.add(1, ordering: .relaxed)
        firstError.withLock { $0 = $0 ?? "device \(device.index): \(reason)" }
    }

    /// A delivered command: `0x02`, topic and sender each after a 2-byte length, then the payload, whose first
    /// 8 bytes are the send time.
    private func record(delivery bytes: ArraySlice<UInt8>) {
        var at = bytes.startIndex + 1
        for _ in 0..<2 {
            guard at + 2 <= bytes.endIndex else { return }
            at += 2 + (Int(bytes[at]) << 8 | Int(bytes[at + 1]))
        }
        guard at + 8 <= bytes.endIndex else { return }
        let sentAt = bytes[at..<(at + 8)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let now = BenchClock.now()
        latency.withLock { _ = $0.record(now > sentAt ? now - sentAt : 0) }
        delivered.add(1, ordering: .relaxed)
    }

    /// The server frame (unmasked) that starts at `offset`, if it is whole.
    static func frame(in bytes: [UInt8], at offset: Int) -> (opcode: UInt8, payload: ArraySlice<UInt8>, end: Int)? {
        let available = bytes.count - offset
        guard available >= 2 else { return nil }
        var length = Int(bytes[offset + 1] & 0x7F)
        var header = 2
        if length == 126 {
            guard available >= 4 else { return nil }
            length = Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
            header = 4
        } else if length == 127 {
            guard available >= 10 else { return nil }
            // A fleet device is sent commands and pings; a length past 2^31 is a broken stream, not a frame.
            length = bytes[(offset + 2)..<(offset + 10)].reduce(0) { ($0 << 8 | Int($1)) & 0x7FFF_FFFF }
            header = 10
        }
        guard available >= header + length else { return nil }
        let start = offset + header
        return (bytes[offset] & 0x0F, bytes[start..<(start + length)], start + length)
    }
}

/// epoll, looked up in the C library at run time: Swift's Glibc module does not carry `sys/epoll.h`, and a
/// scan of 19,000 descriptors per `poll` would cost the machine the gateway runs on.
struct Epoll: Sendable {
    private let descriptor: Int32
    private let control: @convention(c) (Int32, Int32, Int32, UnsafeMutableRawPointer?) -> Int32
    private let waitFor: @convention(c) (Int32, UnsafeMutableRawPointer?, Int32, Int32) -> Int32
    /// `struct epoll_event` is packed (12 bytes) on x86-64 and 16 bytes elsewhere: `events`, then the token.
    #if arch(x86_64)
    private static let eventSize = 12
    #else
    private static let eventSize = 16
    #endif
    private static let tokenOffset = eventSize - 8

    init() throws {
        guard let libc = dlopen(nil, RTLD_NOW) else { throw BenchError("dlopen of the C library failed") }
        func symbol<T>(_ name: String, as _: T.Type) throws -> T {
            guard let address = dlsym(libc, name) else { throw BenchError("the C library has no \(name)") }
            return unsafeBitCast(address, to: T.self)
        }
        let create = try symbol("epoll_create1", as: (@convention(c) (Int32) -> Int32).self)
        control = try symbol("epoll_ctl", as: (@convention(c) (Int32, Int32, Int32, UnsafeMutableRawPointer?) -> Int32).self)
        waitFor = try symbol("epoll_wait", as: (@convention(c) (Int32, UnsafeMutableRawPointer?, Int32, Int32) -> Int32).self)
        descriptor = create(0o2000000 /* EPOLL_CLOEXEC */)
        guard descriptor >= 0 else { throw BenchError("epoll_create1: \(String(cString: strerror(errno)))") }
    }

    /// Watches `fd` for input (level-triggered), reported as `token`.
    func add(_ fd: Int32, token: UInt64) {
        var event = [UInt8](repeating: 0, count: Self.eventSize)
        event.withUnsafeMutableBytes {
            $0.storeBytes(of: 0x001 /* EPOLLIN */, toByteOffset: 0, as: UInt32.self)
            $0.storeBytes(of: token, toByteOffset: Self.tokenOffset, as: UInt64.self)
            _ = control(descriptor, 1 /* EPOLL_CTL_ADD */, fd, $0.baseAddress)
        }
    }

    func remove(_ fd: Int32) {
        _ = control(descriptor, 2 /* EPOLL_CTL_DEL */, fd, nil)
    }

    /// The tokens of descriptors with input (or closed), waiting up to `milliseconds`.
    func wait(milliseconds: Int32) -> [UInt64] {
        var events = [UInt8](repeating: 0, count: Self.eventSize * 256)
        let ready = events.withUnsafeMutableBytes { waitFor(descriptor, $0.baseAddress, 256, milliseconds) }
        return events.withUnsafeBytes { bytes in
            (0..<Int(max(0, ready))).map { bytes.loadUnaligned(fromByteOffset: $0 * Self.eventSize + Self.tokenOffset, as: UInt64.self) }
        }
    }

    func close() {
        _ = Glibc.close(descriptor)
    }
}

/// A certificate and key per device, minted by the PKI's issuing CA into a temporary directory.
struct DeviceCredentials: Sendable {
    let directory: String

    init(issuer pkiPath: String, count: Int, reporter: Progress) throws {
        let pki = PKIDirectory(path: pkiPath)
        let (authority, chain) = try pki.loadIssuer()
        directory = NSTemporaryDirectory() + "portcullis-fleet-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let chainPEM = try chain.map { try $0.serializeAsPEM().pemString + "\n" }.joined()
        let expiry = Date().addingTimeInterval(86_400)
        for device in 0..<count {
            let key = try KeyAlgorithm.p256.generate()
            let certificate = try authority.issue(
                commonName: "fleet-\(device)", publicKey: key.publicKey, profile: .client(), notValidAfter: expiry)
            let (chainPath, keyPath) = paths("fleet-\(device)")
            try (certificate.serializeAsPEM().pemString + "\n" + chainPEM).write(toFile: chainPath, atomically: false, encoding: .utf8)
            guard FileManager.default.createFile(
                atPath: keyPath, contents: Data((try key.serializeAsPEM().pemString + "\n").utf8),
                attributes: [.posixPermissions: 0o600])
            else { throw BenchError("cannot write \(keyPath)") }
            if device % 2_000 == 1_999 { reporter.report("fleet: \(device + 1) of \(count) device certificates issued") }
        }
    }

    func paths(_ name: String) -> (chain: String, key: String) {
        ("\(directory)/\(name).pem", "\(directory)/\(name).key")
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}
