import Foundation
import NIOCore
import NIOPosix
import Testing

@testable import PortcullisBench

@Suite("Load generators (portcullis bench)")
struct BenchTests {
    static func target(_ gw: TestGateway, path: String) throws -> BenchTarget {
        try BenchTarget(
            url: "wss://127.0.0.1:\(gw.port)\(path)", certificate: gw.device.certificate, key: gw.device.key,
            ca: gw.pki.caPath, origin: nil, serverName: "localhost", wire: .portcullis,
            serverPID: ProcessInfo.processInfo.processIdentifier)
    }

    @Test("NATS's text protocol is read across frame boundaries: MSG with its payload, PING, PONG and -ERR")
    func natsReader() {
        var reader = BenchReader(wire: .nats)
        var events: [BenchEvent] = []
        let stamp: UInt64 = 0x0102_0304_0506_0708
        var payload = ByteBuffer()
        payload.writeInteger(stamp)
        payload.writeString("rest")
        let whole = "INFO {}\r\nMSG bench.load 1 12\r\n" + String(buffer: payload) + "\r\nPING\r\nPONG\r\n-ERR 'Permissions Violation'\r\n"
        let bytes = Array(whole.utf8)
        // Split everywhere a frame could end: every event still comes out once, in order.
        for split in 1..<bytes.count {
            events.removeAll()
            reader = BenchReader(wire: .nats)
            for part in [bytes[..<split], bytes[split...]] {
                var frame = ByteBuffer(bytes: Array(part))
                reader.read(binary: true, payload: &frame) { events.append($0) }
            }
            #expect(
                events == [.delivery(sentAt: stamp), .ping, .acknowledged, .error("-ERR 'Permissions Violation'")],
                "split at \(split)")
        }
    }

    @Test("Portcullis deliveries, acks and errors are told apart")
    func portcullisReader() {
        var reader = BenchReader(wire: .portcullis)
        var events: [BenchEvent] = []
        var message = ByteBuffer(bytes: [0x02, 0, 1, UInt8(ascii: "t"), 0, 2, UInt8(ascii: "i"), UInt8(ascii: "d")])
        message.writeInteger(UInt64(42))
        reader.read(binary: true, payload: &message) { events.append($0) }
        var ack = ByteBuffer(string: #"{"type":"ack","id":"s"}"#)
        reader.read(binary: false, payload: &ack) { events.append($0) }
        var error = ByteBuffer(string: #"{"type":"error","code":"forbidden"}"#)
        reader.read(binary: false, payload: &error) { events.append($0) }
        #expect(events == [.delivery(sentAt: 42), .acknowledged, .error(#"{"type":"error","code":"forbidden"}"#)])
    }

    @Test("The fleet's frame reader takes whole server frames of each length form, and waits for the rest of a partial one")
    func fleetFrames() {
        let ping: [UInt8] = [0x89, 0x02, 0xAB, 0xCD]
        let medium: [UInt8] = [0x82, 126, 0x01, 0x00] + [UInt8](repeating: 7, count: 256)
        let large: [UInt8] = [0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00] + [UInt8](repeating: 9, count: 65_536)
        let stream = ping + medium + large
        var offset = 0
        var seen: [(UInt8, Int)] = []
        while let frame = FleetKeeper.frame(in: stream, at: offset) {
            seen.append((frame.opcode, frame.payload.count))
            offset = frame.end
        }
        #expect(seen.map(\.0) == [0x9, 0x2, 0x2] && seen.map(\.1) == [2, 256, 65_536])
        #expect(offset == stream.count)
        // Every cut short of a whole frame yields nothing yet.
        for cut in [1, 3, 5, 200, 259] {
            #expect(FleetKeeper.frame(in: Array((ping + medium).prefix(4 + cut)), at: 4) == nil, "cut at \(cut)")
        }
        #expect(FleetKeeper.frame(in: Array(large.prefix(9)), at: 0) == nil)
        #expect(FleetKeeper.frame(in: Array(large.dropLast()), at: 0) == nil)
    }

    @Test("connect, pubsub and idle run against a gateway and report what they measured")
    func scenariosAgainstTheGateway() async throws {
        try await withGateway { gw in
            let group = MultiThreadedEventLoopGroup.singleton

            let connect = try await ConnectBenchmark.run(
                try Self.target(gw, path: "/v1/echo"), duration: 4, warmup: 0.5, concurrency: 2, resume: false,
                progress: false, group: group)
            #expect(connect.sessions > 0 && connect.failures == 0, "\(connect)")
            #expect(connect.latencyMilliseconds.count == UInt64(connect.sessions))
            #expect((connect.serverCPUSeconds ?? 0) > 0)

            var options = PubSubBenchmark.Options()
            options.subscribers = 2
            options.rate = 200
            options.duration = 1
            options.warmup = 0.2
            options.topic = "fanout/bench"
            let pubsub = try await PubSubBenchmark.run(
                try Self.target(gw, path: "/v1/messages"), options: options, progress: false, group: group)
            #expect(pubsub.firstError == nil, "\(pubsub)")
            // At most the rate over the window and the warm-up whose shortfall it may catch up on (a loaded machine
            // publishes fewer, never more).
            #expect(pubsub.published > 0 && Double(pubsub.published) <= 200 * (pubsub.seconds + 1), "\(pubsub)")
            // Each subscriber receives every message: those still in flight when the window closed (on a loaded
            // machine, possibly all of them) arrive after it, and their latency is recorded all the same.
            #expect(pubsub.lost == 0, "\(pubsub)")
            #expect(pubsub.latencyMicroseconds.count > 0 && pubsub.latencyMicroseconds.p50 > 0)

            let idle = try await IdleBenchmark.run(
                try Self.target(gw, path: "/v1/echo"), sessions: 20, concurrency: 4, hold: 0.1, progress: false, group: group)
            #expect(idle.sessions == 20 && idle.failures == 0, "\(idle)")
            #expect(idle.serverKiBPerSession != nil)
            let opened = try gw.auditRecords().filter { $0.event == "session_opened" }
            #expect(opened.count >= connect.sessions + 20)
        }
    }

    @Test("Device-like load: publishes one per record, N→1 ingest through a wildcard, sessions from many loopback addresses")
    func deviceLikeIngest() async throws {
        try await withGateway { gw in
            var target = try Self.target(gw, path: "/v1/messages")
            target.sources = SourceAddresses(count: 4)
            var options = PubSubBenchmark.Options()
            options.publishers = 6
            options.subscribers = 1
            options.ingest = true
            options.rate = 300
            options.duration = 1
            options.warmup = 0.2
            options.topic = "fanout/ingest"
            #expect(options.publishMode == .perRecord)
            let ingest = try await PubSubBenchmark.run(target, options: options, progress: false, group: MultiThreadedEventLoopGroup.singleton)
            #expect(ingest.firstError == nil, "\(ingest)")
            #expect(ingest.published > 0 && ingest.lost == 0 && ingest.latencyMicroseconds.count > 0, "\(ingest)")
            #expect(ingest.ingest && ingest.publishMode == .perRecord)

            // Every publisher's own topic reached the one subscriber, and the sessions came from four addresses.
            let opened = try gw.auditRecords().filter { $0.event == "session_opened" }
            let sources = Set(opened.compactMap { $0.peer?.split(separator: ":").first.map(String.init) })
            #expect(sources == ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"], "\(sources)")
        }
    }

    @Test("bench scale loads policies, a CRL and subscriptions of each size and times decisions, look-ups and matches")
    func scale() throws {
        // The benchmark itself checks every answer (a refused decision, a wrong CRL answer or match stops it).
        let result = try ScaleBenchmark.run(sizes: [10, 500], operations: 1_000)
        #expect(result.measurements.map(\.size) == [10, 500])
        for measurement in result.measurements {
            #expect(measurement.policyLoadSeconds > 0 && measurement.crlLoadSeconds > 0 && measurement.subscriptionsLoadSeconds > 0)
            #expect(measurement.identifyAndDecideNanoseconds > 0 && measurement.crlLookupNanoseconds > 0)
            #expect(measurement.topicMatchNanoseconds > 0 && measurement.subscribeUnsubscribeNanoseconds > 0)
        }
    }

    @Test("Source addresses cover 127.0.0.0/8 without .0 or .255 hosts")
    func sourceAddresses() {
        #expect(SourceAddresses.address(0) == "127.0.0.1")
        #expect(SourceAddresses.address(253) == "127.0.0.254")
        #expect(SourceAddresses.address(254) == "127.0.1.1")
        #expect(SourceAddresses.address(SourceAddresses.maximum - 1) == "127.255.255.254")
        #expect(SourceAddresses(count: 1).take() == nil)
        #expect(SourceAddresses(count: 20_000_000).count == SourceAddresses.maximum)
    }

    @Test("connect --resume resumes TLS sessions with the system's OpenSSL, and each one is admitted again")
    func resumedSessions() async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout) { gw in
            let result = try await ConnectBenchmark.run(
                try Self.target(gw, path: "/v1/echo"), duration: 2, warmup: 0.5, concurrency: 2, resume: true,
                progress: false, group: MultiThreadedEventLoopGroup.singleton)
            #expect(result.failures == 0 && result.sessions > 0, "\(result)")
            // Only each client's first session is a full handshake (normally during the warm-up).
            #expect((result.resumedSessions ?? 0) >= result.sessions - 2, "\(result)")
            let resumed = try gw.auditRecords().filter { $0.event == "session_opened" && $0.resumed == true }
            #expect(resumed.count >= result.sessions)
        }
    }

    @Test("A refused session is reported with the server's status, not hidden in a rate")
    func refusalsAreReported() async throws {
        try await withGateway { gw in
            let group = MultiThreadedEventLoopGroup.singleton
            // The device's rule grants /v1/echo and /v1/messages only.
            let refused = try await ConnectBenchmark.run(
                try Self.target(gw, path: "/v1/nowhere"), duration: 2, warmup: 0, concurrency: 1, resume: false,
                progress: false, group: group)
            #expect(refused.sessions == 0 && refused.failures > 0)
            #expect(refused.firstError?.contains("404") == true, "\(String(describing: refused.firstError))")
        }
    }
}
