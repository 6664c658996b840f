import Foundation
import Logging
import NIOConcurrencyHelpers
import PortcullisAudit
import PortcullisClient
import PortcullisConfig
@testable import PortcullisGateway
import PortcullisPKI
import Testing

/// The reconnecting client against the real gateway: a restart on the same port, a revocation, a renewal.
///
/// Every wait is for an event, with minutes of deadline: these run beside the whole suite on two cores.
@Suite("Reconnecting client: restarts, revocation, renewal")
struct ReconnectingClientTests {
    /// A client for `credential` on the test gateway's broker route, with short waits between attempts.
    static func client(_ gw: TestGateway, _ credential: TestPKI.Credential) throws -> ReconnectingBrokerClient {
        var configuration = try ReconnectingBrokerClient.Configuration(
            url: "wss://127.0.0.1:\(gw.port)/v1/messages", certificatePath: credential.certificate,
            keyPath: credential.key, caPath: gw.pki.caPath)
        configuration.backoff = ReconnectBackoff(initialDelay: .milliseconds(50), maximumDelay: .seconds(1))
        // A loaded machine can take long over a handshake; the gateway's own deadline is 30 s.
        configuration.handshakeTimeout = .seconds(120)
        configuration.requestTimeout = .seconds(120)
        return ReconnectingBrokerClient(configuration: configuration)
    }

    /// Starts a gateway with the test gateway's configuration on its port again. The port is retried for a
    /// while: it is free once the first gateway has closed its listener, but another test's connection could
    /// hold it briefly.
    static func restart(_ gw: TestGateway) async throws -> Gateway {
        var configuration = gw.gateway.runtime.configuration
        configuration.listenPort = gw.port
        let deadline = ContinuousClock.now + .seconds(120)
        while true {
            let gateway = try Gateway(configuration: configuration, logger: Logger(label: "test"), threads: 1)
            do {
                _ = try await gateway.start()
                return gateway
            } catch where ContinuousClock.now < deadline {
                await gateway.shutdown()
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    @Test("After the gateway restarts on its port, the client reconnects by itself, subscribes again, receives new messages and sends what it queued offline")
    func reconnectsAfterGatewayRestart() async throws {
        try await withGateway { gw in
            let client = try Self.client(gw, gw.device)
            try await client.subscribe("devices/demo-device/commands/#")
            // The client's own queued publishes come back to it through this one, so their arrival shows both
            // the renewed subscription and the flush, in order.
            try await client.subscribe("fanout/#")
            let inbox = DeliveryInbox(client.deliveries)
            let run = Task { await client.run() }
            try await waitUntil("the first session") { await client.state.isConnected }

            let operatorSession = try await gw.broker(gw.operatorCredential)
            try await operatorSession.publish("devices/demo-device/commands/hello", json: "1")
            _ = try await inbox.wait(for: 1) { $0.topic == "devices/demo-device/commands/hello" }
            await operatorSession.close()

            await gw.gateway.shutdown()
            try await waitUntil("the client to notice the gateway went away") { !(await client.state.isConnected) }
            for reading in 0..<3 {
                #expect(try await client.publish("fanout/offline", json: #"{"reading":\#(reading)}"#) == .queued(droppedToMakeRoom: 0))
            }
            #expect(await client.queuedPublishes == 3)

            let restarted = try await Self.restart(gw)
            do {
                try await waitUntil("a session with the restarted gateway") {
                    let attempts = await client.connectionAttempts
                    return await client.state.isConnected && attempts > 1
                }
                let flushed = try await inbox.wait(for: 3) { $0.topic == "fanout/offline" }
                #expect(flushed.map(\.text) == [#"{"reading":0}"#, #"{"reading":1}"#, #"{"reading":2}"#])
                #expect(flushed.allSatisfy { $0.from == "demo-device" })
                #expect(await client.queuedPublishes == 0)
                #expect(await client.droppedPublishes == 0)

                let operatorAgain = try await BrokerSession.connect(port: gw.port, tls: gw.tls(gw.operatorCredential))
                try await operatorAgain.publish("devices/demo-device/commands/after-restart", json: #"{"reboot":true}"#)
                let command = try await inbox.wait(for: 1) { $0.topic == "devices/demo-device/commands/after-restart" }
                #expect(command.first?.from == "operator")
                #expect(command.first?.text == #"{"reboot":true}"#)
                await operatorAgain.close()

                await client.stop()
                #expect(await run.value == .requested)
                #expect(await client.state == .stopped(.requested))
            } catch {
                await client.stop()
                await restarted.shutdown()
                throw error
            }
            await restarted.shutdown()
        }
    }

    @Test("A revoked certificate stops the client for good, saying so, after one attempt")
    func revocationStopsTheClient() async throws {
        try await withGateway { gw in
            let client = try Self.client(gw, gw.device)
            try await client.subscribe("devices/demo-device/commands/#")
            let run = Task { await client.run() }
            try await waitUntil("the first session") { await client.state.isConnected }

            try gw.pki.revoke([gw.deviceCertificate], number: 2)
            #expect(await gw.gateway.reload(trigger: "test").result == .applied)

            try await waitUntil("the client to stop") { await client.state.isStopped }
            let revoked = StopReason.permanentRefusal(.sessionClosed(code: 1008, reason: "certificate_revoked"))
            #expect(await run.value == revoked)
            #expect(await client.state == .stopped(revoked))
            #expect(revoked.description.contains("certificate_revoked"))
            // `run()` has returned: nothing is left to try again. One attempt was made in all.
            #expect(await client.connectionAttempts == 1)
            await #expect(throws: BrokerError.self) { try await client.publish("devices/demo-device/telemetry", json: "1") }
        }
    }

    @Test("A certificate refused in the handshake is retried with backoff, and the wait names what the gateway answered")
    func handshakeRefusalIsRetried() async throws {
        try await withGateway { gw in
            // The gateway answers every refused certificate with the alert certificate_unknown (or, when the
            // connection is torn down first, a reset): neither can tell a revocation from a stale CRL on the
            // gateway, so the client keeps trying.
            let client = try Self.client(gw, gw.revoked)
            let run = Task { await client.run() }
            var failure: ConnectionFailure?
            try await waitUntil("a wait after the third attempt") {
                let attempts = await client.connectionAttempts
                if case .waiting(_, let after) = await client.state, attempts >= 3 { failure = after }
                return failure != nil
            }
            switch failure {
            case .tlsAlert("certificate_unknown"), .network, .connectionLost: break
            default: Issue.record("unexpected failure: \(String(describing: failure))")
            }
            #expect(failure?.isPermanent == false)
            let refusals = try await gw.auditRecords(atLeast: 2) { $0.event == "tls_refused" && $0.reason == "certificate_revoked" }
            #expect(refusals.count >= 2)
            await client.stop()
            #expect(await run.value == .requested)
        }
    }

    @Test("Certificate files renewed while the client is offline are used by its next session")
    func renewedCertificateIsPickedUp() async throws {
        try await withGateway { gw in
            let client = try Self.client(gw, gw.device)
            let run = Task { await client.run() }
            try await waitUntil("the first session") { await client.state.isConnected }
            let originalSerial = hexString(gw.deviceCertificate.serialNumber.bytes)
            #expect(await client.state == .connected(SessionDetails(certificateSerial: originalSerial)))

            await gw.gateway.shutdown()
            try await waitUntil("the client to notice the gateway went away") { !(await client.state.isConnected) }
            // A new key and certificate, written over the old files (atomically, as the PKI writes them).
            let (_, renewed) = try gw.pki.client("demo-device")
            let renewedSerial = hexString(renewed.serialNumber.bytes)
            #expect(renewedSerial != originalSerial)

            let restarted = try await Self.restart(gw)
            do {
                try await waitUntil("a session with the restarted gateway") {
                    let attempts = await client.connectionAttempts
                    return await client.state.isConnected && attempts > 1
                }
                #expect(await client.state == .connected(SessionDetails(certificateSerial: renewedSerial)))
                // The gateway's own record of the session names the renewed certificate.
                let opened = try await auditRecord(of: restarted) {
                    $0.event == "session_opened" && $0.identity == "demo-device" && $0.serial == renewedSerial
                }
                #expect(opened != nil, "no session_opened record with the renewed serial \(renewedSerial)")
                await client.stop()
                #expect(await run.value == .requested)
            } catch {
                await client.stop()
                await restarted.shutdown()
                throw error
            }
            await restarted.shutdown()
        }
    }
}

extension ConnectionState {
    var isConnected: Bool {
        if case .connected = self { return true }
        return false
    }

    var isStopped: Bool {
        if case .stopped = self { return true }
        return false
    }
}

/// Waits (polling, up to `seconds`) until `condition` holds; records an issue and throws when it never does.
func waitUntil(
    _ what: String, within seconds: Double = 180, sourceLocation: SourceLocation = #_sourceLocation,
    _ condition: () async -> Bool
) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while !(await condition()) {
        guard ContinuousClock.now < deadline else {
            Issue.record("waited \(seconds) s for \(what)", sourceLocation: sourceLocation)
            throw CancellationError()
        }
        try await Task.sleep(for: .milliseconds(20))
    }
}

/// An audit record of `gateway` matching `predicate`, waited for up to 120 s (records are written off the event loop).
func auditRecord(of gateway: Gateway, where predicate: (AuditRecord) -> Bool) async throws -> AuditRecord? {
    let deadline = ContinuousClock.now + .seconds(120)
    repeat {
        gateway.auditLog.flush()
        if let record = try AuditLog.read(path: gateway.auditLog.path).first(where: predicate) { return record }
        try await Task.sleep(for: .milliseconds(20))
    } while ContinuousClock.now < deadline
    return nil
}

/// Collects a client's deliveries from its one stream for the whole test, so that waiting for some never ends
/// the stream (cancelling a task waiting on an AsyncStream finishes it).
final class DeliveryInbox: Sendable {
    private let received = NIOLockedValueBox<[Delivery]>([])
    private let reader: Task<Void, Never>

    init(_ deliveries: AsyncStream<Delivery>) {
        let received = received
        reader = Task {
            for await delivery in deliveries { received.withLockedValue { $0.append(delivery) } }
        }
    }

    deinit { reader.cancel() }

    /// Waits (up to 180 s) until `count` deliveries match `predicate`, and returns the first `count` of them.
    func wait(
        for count: Int, sourceLocation: SourceLocation = #_sourceLocation, where predicate: @escaping (Delivery) -> Bool
    ) async throws -> [Delivery] {
        var matching: [Delivery] = []
        try await waitUntil("\(count) deliveries", sourceLocation: sourceLocation) {
            matching = received.withLockedValue { $0.filter(predicate) }
            return matching.count >= count
        }
        return Array(matching.prefix(count))
    }
}
