import ArgumentParser
import Foundation
import NIOPosix
import PortcullisAudit
import PortcullisBench
import PortcullisPKI
import PortcullisYAML

/// `portcullis bench`: load generators for a gateway (or, with `--protocol nats`, for nats-server doing the same
/// job), for release builds on the same machine as the server.
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure session setup, message throughput and latency, and memory per idle session.",
        discussion: """
            Run from a release build (swift build -c release). Give --server-pid to have figures per server \
            CPU-second and memory read from /proc. Benchmarks/run.py runs every scenario against Portcullis and \
            nats-server and prints one table.
            """,
        subcommands: [BenchConnect.self, BenchPubSub.self, BenchIdle.self, BenchFleet.self, BenchAudit.self, BenchScale.self]
    )
}

/// Options every scenario takes.
struct BenchOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The server's URL.", valueName: "wss://host:port/path"))
    var url = "wss://127.0.0.1:8443/v1/messages"

    @Option(help: ArgumentHelp("Client certificate chain (PEM).", valueName: "file"))
    var cert = "pki/issued/demo-device.chain.pem"

    @Option(help: ArgumentHelp("Client private key (PEM).", valueName: "file"))
    var key = "pki/private/demo-device.key"

    @Option(help: ArgumentHelp("CA bundle that signs the server's certificate.", valueName: "file"))
    var ca = "pki/ca.crt"

    @Option(help: ArgumentHelp("Origin header to send (none by default, as a device).", valueName: "origin"))
    var origin: String?

    @Option(help: ArgumentHelp("TLS server name (default: the URL's host).", valueName: "name"))
    var serverName: String?

    @Option(name: .customLong("protocol"), help: "Protocol inside the WebSocket: portcullis or nats.")
    var wire: WireProtocol = .portcullis

    @Option(help: ArgumentHelp("The server's process id, to report its CPU time and memory from /proc.", valueName: "pid"))
    var serverPID: Int32?

    @Option(help: ArgumentHelp(
        "Another process of the server (a cluster's other gateways and NATS), counted in its CPU time; repeat it.",
        valueName: "pid"))
    var alsoServerPID: [Int32] = []

    @Option(help: "How long to measure (10s, 1m).")
    var duration = "10s"

    @Option(help: "Run this long before measuring.")
    var warmup = "1s"

    @Option(help: "Concurrent connection attempts.")
    var concurrency = 8

    @Option(help: ArgumentHelp(
        "Loopback addresses to connect from, in turn (127.0.0.1, 127.0.0.2, …): one address reaches a port from some 28,000 ephemeral ports.",
        valueName: "count"))
    var sourceAddresses = 1

    @Option(help: "Event loop threads of the load generator (default: one per core).")
    var threads = ProcessInfo.processInfo.activeProcessorCount

    @Flag(help: "Print the result as one JSON object.")
    var json = false

    var durationSeconds: Double { parseDuration(duration)! }
    var warmupSeconds: Double { parseDuration(warmup)! }

    func validate() throws {
        // Bounded like every number from outside: the benchmark arms timers with these.
        guard let seconds = parseDuration(duration), seconds > 0, seconds <= 86400 else {
            throw ValidationError("--duration must be a duration from 1ms to 1d, such as 10s")
        }
        guard let warmup = parseDuration(warmup), warmup >= 0, warmup <= 3600 else {
            throw ValidationError("--warmup must be a duration from 0s to 1h, such as 1s")
        }
        guard concurrency > 0, threads > 0 else { throw ValidationError("--concurrency and --threads must be positive") }
        guard (1...SourceAddresses.maximum).contains(sourceAddresses) else {
            throw ValidationError("--source-addresses must be from 1 to \(SourceAddresses.maximum)")
        }
    }

    func target() throws -> BenchTarget {
        do {
            var target = try BenchTarget(
                url: url, certificate: cert, key: key, ca: ca, origin: origin, serverName: serverName, wire: wire,
                serverPID: serverPID)
            target.sources = SourceAddresses(count: sourceAddresses)
            target.otherServerPIDs = alsoServerPID
            return target
        } catch {
            throw ValidationError("\(error)")
        }
    }

    /// Runs a scenario on its own event loops and prints its result: as one JSON object, or as `lines` and the
    /// first error the clients met. A scenario that cannot run at all exits 1 with the reason.
    func measure<R: BenchResult>(
        _ scenario: (BenchTarget, MultiThreadedEventLoopGroup) async throws -> R, lines: (R) -> [String]
    ) async throws {
        let target = try target()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let result: R
        do {
            result = try await scenario(target, group)
        } catch {
            try? await group.shutdownGracefully()
            StandardStreams.error("portcullis: bench: \(error)\n")
            throw ExitCode(1)
        }
        try await group.shutdownGracefully()
        if json {
            try printBenchJSON(result)
        } else {
            for line in lines(result) + (result.firstError.map { ["first error: \($0)"] } ?? []) { print(line) }
        }
    }
}

/// A scenario's result as one line of JSON with snake-case keys, as Benchmarks/run.py reads them.
func printBenchJSON<T: Encodable>(_ result: T) throws {
    let encoder = JSONEncoder()
    encoder.keyEncodingStrategy = .convertToSnakeCase
    encoder.outputFormatting = [.sortedKeys]
    print(String(decoding: try encoder.encode(result), as: UTF8.self))
}

/// What every scenario's result has in common.
protocol BenchResult: Encodable {
    var firstError: String? { get }
}

extension ConnectBenchmark.Result: BenchResult {}
extension PubSubBenchmark.Result: BenchResult {}
extension IdleBenchmark.Result: BenchResult {}

extension WireProtocol: ExpressibleByArgument {}
extension PublishMode: ExpressibleByArgument {}

private func figure(_ value: Double?, _ digits: Int = 0) -> String {
    guard let value else { return "n/a" }
    return value.formatted(.number.precision(.fractionLength(digits)))
}

private func latencyLine(_ summary: LatencySummary, unit: String) -> String {
    "latency \(unit): p50 \(figure(summary.p50, 1))  p90 \(figure(summary.p90, 1))  p99 \(figure(summary.p99, 1))  p99.9 \(figure(summary.p99_9, 1))  max \(figure(summary.max, 1))"
}

struct BenchConnect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connect", abstract: "Full mTLS handshakes, upgrades and admissions per second.")

    @OptionGroup var options: BenchOptions

    @Flag(help: "Resume TLS sessions instead of full handshakes.")
    var resume = false

    func run() async throws {
        try await options.measure { target, group in
            try await ConnectBenchmark.run(
                target, duration: options.durationSeconds, warmup: options.warmupSeconds, concurrency: options.concurrency,
                resume: resume, progress: !options.json, group: group)
        } lines: { result in
            [
                "connect (\(result.wire.rawValue)\(result.resume ? ", resumed" : "")): \(result.sessions) sessions\(result.resumedSessions.map { " (\($0) resumed)" } ?? "") in \(figure(result.seconds, 1)) s, \(result.failures) failed",
                "sessions/s: \(figure(result.sessionsPerSecond))  per server CPU-second: \(figure(result.sessionsPerServerCPUSecond))",
                latencyLine(result.latencyMilliseconds, unit: "ms"),
            ]
        }
    }
}

struct BenchPubSub: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pubsub", abstract: "Publishers and subscribers on one topic: delivered messages/s and latency.")

    @OptionGroup var options: BenchOptions

    @Option(help: "Publishing sessions.")
    var publishers = 1

    @Option(help: "Subscribing sessions.")
    var subscribers = 1

    @Option(help: "Payload bytes per message (at least 8: the send time).")
    var payload = 64

    @Option(help: "Messages per second across all publishers (default: as fast as the server delivers).")
    var rate: Double?

    @Option(help: "Topic (default bench/load, or bench.load for NATS).")
    var topic: String?

    @Option(help: ArgumentHelp(
        "per-record: each publish its own TLS record and write, yielding between them, as devices send; coalesced: the publishes due at once in one write.",
        valueName: "mode"))
    var publishMode = PublishMode.perRecord

    @Flag(help: "N→1 ingest: each publisher on a topic of its own (TOPIC/<n>), subscribers to TOPIC/+.")
    var ingest = false

    @Option(help: ArgumentHelp(
        "Subscribers connect to this port of the URL's host instead (a cluster's other gateways), in turn; repeat it.",
        valueName: "port"))
    var subscriberPort: [Int] = []

    func validate() throws {
        guard publishers > 0, subscribers > 0 else { throw ValidationError("--publishers and --subscribers must be positive") }
        guard payload >= 8 else { throw ValidationError("--payload must be at least 8 bytes (it carries the send time)") }
        if let rate, !(rate > 0 && rate <= 100_000_000) { throw ValidationError("--rate must be from 1 to 100,000,000 messages/s") }
        guard subscriberPort.allSatisfy({ (1...65535).contains($0) }) else { throw ValidationError("--subscriber-port must be from 1 to 65535") }
    }

    func run() async throws {
        var settings = PubSubBenchmark.Options()
        settings.publishers = publishers
        settings.subscribers = subscribers
        settings.payloadSize = payload
        settings.rate = rate
        settings.duration = options.durationSeconds
        settings.warmup = options.warmupSeconds
        settings.topic = topic
        settings.publishMode = publishMode
        settings.ingest = ingest
        settings.subscriberPorts = subscriberPort
        try await options.measure { [settings] target, group in
            try await PubSubBenchmark.run(target, options: settings, progress: !options.json, group: group)
        } lines: { result in
            [
                "pubsub (\(result.wire.rawValue)) \(publishers)→\(subscribers)\(ingest ? " ingest" : ""), \(payload)-byte payloads, \(publishMode.rawValue), \(rate.map { "\(figure($0)) msg/s" } ?? "full speed"):",
                "delivered/s: \(figure(result.deliveredPerSecond))  bytes/s: \(figure(result.deliveredBytesPerSecond))  per server CPU-second: \(figure(result.deliveredPerServerCPUSecond))",
                latencyLine(result.latencyMicroseconds, unit: "µs"),
            ] + (result.lost > 0 ? ["lost: \(result.lost) deliveries never arrived (30 s after the publishers stopped)"] : [])
        }
    }
}

struct BenchIdle: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "idle", abstract: "Open N sessions, hold them, and report the server's memory per session.")

    @OptionGroup var options: BenchOptions

    @Option(help: "Sessions to open and hold.")
    var sessions = 1000

    @Option(help: "How long to hold them before reading the server's memory.")
    var hold = "2s"

    func validate() throws {
        guard let seconds = parseDuration(hold), seconds >= 0, seconds <= 86400 else {
            throw ValidationError("--hold must be a duration from 0s to 1d, such as 2s")
        }
    }

    func run() async throws {
        try await options.measure { target, group in
            try await IdleBenchmark.run(
                target, sessions: sessions, concurrency: options.concurrency, hold: parseDuration(hold)!,
                progress: !options.json, group: group)
        } lines: { result in
            [
                "idle (\(result.wire.rawValue)): \(result.sessions) sessions opened in \(figure(result.openSeconds, 1)) s, \(result.failures) failed",
                "server memory: \(figure(result.serverKiBPerSession, 1)) KiB per session (RSS \(result.serverResidentKiBBefore.map(String.init) ?? "?") → \(result.serverResidentKiBAfter.map(String.init) ?? "?") KiB)",
            ]
        }
    }
}

struct BenchFleet: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "Hold a fleet of idle devices, each subscribed to its commands, then drop and reconnect them all.",
        discussion: """
            Opens --devices sessions (device n subscribes to devices/fleet-<n>/commands/# and answers the gateway's \
            pings), holds them while it samples the server's memory, descriptors and CPU time (--server-pid) and \
            sends commands to random devices from one more session (--cert, which needs publish on \
            devices/+/commands/#), timing each delivery. Then the reconnect storm: every device drops its \
            connection with a TCP reset and all reconnect at once, resuming their TLS sessions, and subscribe \
            again; commands must reach them. With --device-ca, every device gets a certificate of its own \
            (CN fleet-<n>) from that PKI's issuing CA; otherwise all use --cert. Benchmarks/fleet.py runs it \
            against a gateway configured for it. Exit 1 when a device could not connect, a session was closed \
            by the server, or a command was not delivered.
            """)

    @OptionGroup var options: BenchOptions

    @Option(help: "Devices to connect and hold.")
    var devices = 1000

    @Option(help: "How long to hold them (30s, 10m).")
    var hold = "1m"

    @Option(help: "Commands sent to random devices per second while holding.")
    var commandsPerSecond = 20.0

    @Option(help: "How often to sample the server while holding.")
    var sampleInterval = "10s"

    @Option(help: "Filters each device subscribes to: its devices/fleet-<n>/commands/#, then commands/<k>/# under it.")
    var subscriptionsPerDevice = 1

    @Option(name: .customLong("device-ca"), help: ArgumentHelp("A PKI directory whose CA issues each device its own certificate.", valueName: "dir"))
    var deviceCA: String?

    @Flag(help: "Skip the reconnect storm.")
    var noStorm = false

    func validate() throws {
        guard (1...1_000_000).contains(devices) else { throw ValidationError("--devices must be from 1 to 1,000,000") }
        guard (1...1_000).contains(subscriptionsPerDevice) else {
            throw ValidationError("--subscriptions-per-device must be from 1 to 1,000")
        }
        guard let seconds = parseDuration(hold), seconds >= 0, seconds <= 86400 else {
            throw ValidationError("--hold must be a duration from 0s to 1d, such as 10m")
        }
        guard let interval = parseDuration(sampleInterval), interval >= 0.1, interval <= 3600 else {
            throw ValidationError("--sample-interval must be a duration from 100ms to 1h, such as 10s")
        }
        guard commandsPerSecond > 0, commandsPerSecond <= 100_000 else {
            throw ValidationError("--commands-per-second must be more than 0 and at most 100,000")
        }
        if let deviceCA, !PKIDirectory(path: deviceCA).hasCA { throw ValidationError("--device-ca \(deviceCA): no CA there") }
    }

    func run() throws {
        let result: FleetBenchmark.Result
        do {
            result = try FleetBenchmark.run(
                try options.target(),
                options: .init(
                    devices: devices, concurrency: options.concurrency, hold: parseDuration(hold)!,
                    commandsPerSecond: commandsPerSecond, sampleInterval: parseDuration(sampleInterval)!, storm: !noStorm,
                    subscriptionsPerDevice: subscriptionsPerDevice, deviceIssuer: deviceCA),
                // Progress goes to standard error even with --json (which is on standard output): Benchmarks/fleet.py
                // reads it to tell which phase the gateway's event-loop lag belongs to.
                progress: true)
        } catch {
            StandardStreams.error("portcullis: bench: \(error)\n")
            throw ExitCode(1)
        }
        if options.json {
            try printBenchJSON(result)
        } else {
            let first = result.samples.first, last = result.samples.last
            var lines = [
                "fleet: \(result.devices) devices connected and subscribed in \(figure(result.rampSeconds, 1)) s, \(result.failures) failed",
                "server memory: \(figure(result.serverKiBPerDevice, 1)) KiB per device; RSS \(first?.residentKiB.map(String.init) ?? "?") → "
                    + "\(last?.residentKiB.map(String.init) ?? "?") KiB and descriptors \(first?.openFiles.map(String.init) ?? "?") → "
                    + "\(last?.openFiles.map(String.init) ?? "?") over the \(figure(result.holdSeconds)) s hold",
                "server CPU while idle: \(figure(result.serverCPUMillisecondsPerDeviceHour, 2)) ms per device-hour",
                "commands: \(result.commands.delivered) of \(result.commands.sent) delivered; "
                    + latencyLine(result.commands.latencyMicroseconds, unit: "µs"),
                "closed by the server during the hold: \(result.closedByServer)",
            ]
            if let storm = result.storm {
                lines.append(
                    "storm: \(storm.reconnected) reconnected (\(storm.resumed) resumed) in \(figure(storm.seconds, 1)) s, "
                        + "\(storm.failures) failed; then \(storm.commandsAfter.delivered) of \(storm.commandsAfter.sent) commands delivered")
            }
            for line in lines + (result.firstError.map { ["first error: \($0)"] } ?? []) { print(line) }
        }
        let stormFailed = result.storm.map { $0.failures > 0 || $0.commandsAfter.delivered < $0.commandsAfter.sent } ?? false
        if result.failures > 0 || result.closedByServer > 0 || result.commands.delivered < result.commands.sent || stormFailed {
            throw ExitCode(1)
        }
    }
}

struct BenchAudit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Write N typical records through the audit writer into a new log and report records per second.",
        discussion: "The log it leaves is a realistic one to time 'audit query' and 'audit verify' on.")

    @Option(name: .customLong("audit-dir"), help: ArgumentHelp("A new (empty) directory for the log.", valueName: "dir"))
    var directory: String

    @Option(help: "Records to write.")
    var records = 1_000_000

    @Option(help: "fsync policy: always, batch or never.")
    var fsync = "batch"

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        guard AuditFsyncPolicy(rawValue: fsync) != nil else { throw ValidationError("--fsync must be always, batch or never") }
        guard records > 0 else { throw ValidationError("--records must be positive") }
        if !AuditDirectory(path: directory).segments().isEmpty {
            throw ValidationError("\(directory) already holds an audit log: give a new directory")
        }
    }

    func run() throws {
        var settings = AuditSettings()
        settings.fsync = AuditFsyncPolicy(rawValue: fsync)!
        let result = try AuditBenchmark.run(directory: directory, records: records, settings: settings)
        if json {
            printJSON(result)
            return
        }
        say("audit (fsync \(result.fsync)): \(result.records) records in \(figure(result.seconds, 2)) s = "
            + "\(Int(result.recordsPerSecond)) records/s (\(Int(result.recordsPerCPUSecond)) per CPU-second), "
            + "\(result.dropped) dropped, \(result.segments) segments, \(result.bytes / 1_048_576) MiB")
    }
}

struct BenchScale: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale",
        abstract: "Time admission decisions, CRL look-ups and topic matching with fleet-sized policies, CRLs and subscriptions.",
        discussion: """
            In this process, no server: per size N, a policy set of N identity rules and N pinned fingerprints \
            (parsed from YAML), a CRL of N serials (read from DER) and N subscriptions. Prints the time to load \
            each and the nanoseconds per decision, look-up, match and subscription change, so that the sizes \
            can be compared.
            """)

    @Option(help: ArgumentHelp("Comma-separated sizes to compare.", valueName: "n,n"))
    var sizes = "100,100000"

    @Option(help: "Operations timed per figure.")
    var operations = 200_000

    @Flag(help: "Print the result as JSON.")
    var json = false

    var parsedSizes: [Int] { sizes.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) } }

    func validate() throws {
        let parsed = parsedSizes
        guard !parsed.isEmpty, parsed.count == sizes.split(separator: ",").count, parsed.allSatisfy({ (1...1_000_000).contains($0) }) else {
            throw ValidationError("--sizes must be numbers from 1 to 1,000,000, such as 100,100000")
        }
        guard (1_000...100_000_000).contains(operations) else {
            throw ValidationError("--operations must be from 1,000 to 100,000,000")
        }
    }

    func run() throws {
        let result = try ScaleBenchmark.run(sizes: parsedSizes, operations: operations)
        if json {
            printJSON(result)
            return
        }
        for measurement in result.measurements {
            say("N = \(measurement.size): load policies \(figure(measurement.policyLoadSeconds, 3)) s, CRL \(figure(measurement.crlLoadSeconds, 3)) s, "
                + "subscriptions \(figure(measurement.subscriptionsLoadSeconds, 3)) s; per operation: identify + decide "
                + "\(figure(measurement.identifyAndDecideNanoseconds)) ns, CRL look-up \(figure(measurement.crlLookupNanoseconds)) ns, "
                + "topic match \(figure(measurement.topicMatchNanoseconds)) ns, subscribe + unsubscribe "
                + "\(figure(measurement.subscribeUnsubscribeNanoseconds)) ns")
        }
    }
}
