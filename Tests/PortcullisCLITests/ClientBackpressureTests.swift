import Foundation
import NIOConcurrencyHelpers
import PortcullisClient
import PortcullisTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The reconnecting client against a gateway that stops reading (a `serve` process held with SIGSTOP): its
/// publishes must wait in the bounded queue, not in the connection's unbounded buffer.
@Suite("Reconnecting client against a stalled gateway")
struct ClientBackpressureTests {
    /// Limits high enough that the burst after the stall is not refused for its rate.
    static let policy = """
        identity_mapping:
          - source: cn
        rules:
          - name: device-messages
            identities: [demo-device]
            routes: [/v1/messages]
            allow_missing_origin: true
            publish: ["devices/{identity}/telemetry"]
            limits: {messages_per_second: 1000000, bytes_per_second: 1073741824, max_message_bytes: 65536}
          - name: operator-messages
            identities: [demo-operator]
            routes: [/v1/messages]
            allow_missing_origin: true
            subscribe: ["devices/+/telemetry"]

        """

    @Test("Publishes to a connection that stalls are queued (bounded, drops counted) and leave in order once it drains")
    func stalledGateway() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: "\(directory)/policies", withIntermediateDirectories: true)
        try Self.policy.write(toFile: "\(directory)/policies/test.yaml", atomically: true, encoding: .utf8)
        let (serve, portText) = try await startDevGateway(in: directory)
        defer {
            kill(serve.process.processIdentifier, SIGCONT)
            serve.process.terminate()
        }
        let port = try #require(Int(portText))
        func files(_ name: String) -> (String, String, String) {
            ("\(directory)/pki/issued/\(name).crt", "\(directory)/pki/private/\(name).key", "\(directory)/pki/ca.crt")
        }

        let (operatorCertificate, operatorKey, ca) = files("demo-operator")
        // Tried again until it holds: on a loaded machine a handshake can outlast the dev default's 10 s deadline.
        let tls = GatewayClient.TLSOptions(certificateChain: operatorCertificate, privateKey: operatorKey, trustRoots: ca, serverName: nil)
        var subscribed: BrokerSession?
        let connectDeadline = Date().addingTimeInterval(300)
        while subscribed == nil, Date() < connectDeadline {
            if let session = try? await BrokerSession.connect(port: port, tls: tls),
                (try? await session.subscribe("devices/+/telemetry")) != nil
            {
                subscribed = session
            } else {
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        let watcher = try #require(subscribed, "the operator could not subscribe")
        let seen = NIOLockedValueBox([String]())
        let reader = Task {
            for await delivery in watcher.deliveries { seen.withLockedValue { $0.append(delivery.text) } }
        }
        defer { reader.cancel() }

        let (certificate, key, _) = files("demo-device")
        var configuration = try ReconnectingBrokerClient.Configuration(
            url: "wss://localhost:\(port)/v1/messages", certificatePath: certificate, keyPath: key, caPath: ca)
        // The stall is the test's doing: the heartbeat must not end the session meanwhile.
        configuration.heartbeatInterval = .seconds(3600)
        let client = ReconnectingBrokerClient(configuration: configuration)
        let running = Task { await client.run() }
        defer { running.cancel() }
        let states = Task { () -> Bool in
            for await state in client.states { if case .connected = state { return true } }
            return false
        }
        #expect(await states.value, "the device never connected")

        // Stopped, the gateway reads nothing: the kernel's buffers fill (megabytes on loopback), then the
        // connection's; from then on publishes must be queued.
        #expect(kill(serve.process.processIdentifier, SIGSTOP) == 0)
        let payload = String(repeating: "x", count: 16 * 1024)
        var sentBeforeQueueing = 0
        var firstQueued: Int?
        for index in 0..<8_000 {
            let disposition = try await client.publish("devices/demo-device/telemetry", json: #"{"n":\#(index),"pad":"\#(payload)"}"#)
            if case .queued = disposition {
                firstQueued = index
                break
            }
            sentBeforeQueueing += 1
        }
        let queuedFrom = try #require(firstQueued, "8,000 publishes of 16 KiB (128 MiB) were all handed to a stalled connection")
        // More than the queue holds (1 MiB: 63 of these): the oldest are dropped, and counted.
        for index in (queuedFrom + 1)...(queuedFrom + 100) {
            let disposition = try await client.publish("devices/demo-device/telemetry", json: #"{"n":\#(index),"pad":"\#(payload)"}"#)
            #expect(disposition != .sent, "publish \(index) went to the stalled connection")
        }
        let last = queuedFrom + 100
        try await client.publish("devices/demo-device/telemetry", json: #"{"marker":\#(last + 1)}"#)
        #expect(await client.droppedPublishes > 0)
        #expect(await client.queuedPublishes <= configuration.offlineQueueCapacity)

        // Resumed: what the connection held, then the queue, in order, reach the operator.
        #expect(kill(serve.process.processIdentifier, SIGCONT) == 0)
        let deadline = Date().addingTimeInterval(120)
        while !seen.withLockedValue({ $0.contains { $0.contains(#""marker":\#(last + 1)"#) } }), Date() < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        let numbers = seen.withLockedValue { $0 }.compactMap { text -> Int? in
            guard let start = text.range(of: #""n":"#)?.upperBound else { return nil }
            return Int(text[start...].prefix { $0.isNumber })
        }
        #expect(seen.withLockedValue { $0.contains { $0.contains(#""marker":\#(last + 1)"#) } }, "the marker never arrived")
        #expect(numbers == numbers.sorted(), "out of order")
        #expect(numbers.contains(last), "the newest queued publish did not arrive")
        #expect(await client.queuedPublishes == 0)
        print("backpressure: \(sentBeforeQueueing) publishes of 16 KiB handed to the stalled connection before the first was queued")
        await client.stop()
    }
}
