import Foundation
import NIOConcurrencyHelpers
import NIOCore
import PortcullisClient
import PortcullisTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What one session received, as it came: waited on with a generous deadline.
private final class Received: Sendable {
    private let texts = NIOLockedValueBox([(text: String, from: String)]())

    init(_ session: BrokerSession) {
        Task { [texts] in
            for await delivery in session.deliveries { texts.withLockedValue { $0.append((delivery.text, delivery.from)) } }
        }
    }

    func contains(_ text: String) -> Bool { texts.withLockedValue { $0.contains { $0.text.contains(text) } } }
    var senders: Set<String> { Set(texts.withLockedValue { $0.map(\.from) }) }
}

/// The audit records of `directory` (a gateway's audit_dir), as JSON objects.
private func auditRecords(in directory: String) -> [[String: Any]] {
    guard let text = try? String(contentsOfFile: "\(directory)/audit.jsonl", encoding: .utf8) else { return [] }
    return text.split(separator: "\n").compactMap {
        try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
    }
}

@Suite("Several gateways behind HAProxy, sharing NATS (processes)")
struct ClusterProcessTests {
    @Test("Three serve processes, nats-server and HAProxy: publishes reach every gateway; a SIGKILLed gateway, a restarted nats-server and a revocation are each carried through")
    func cluster() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let setup = [
            ["pki", "init"], ["pki", "issue", "server", "localhost", "--dns", "localhost", "--ip", "127.0.0.1"],
            ["pki", "issue", "client", "demo-device"], ["pki", "issue", "client", "demo-operator"], ["pki", "crl"],
        ]
        for command in setup {
            let result = try await portcullis(command, in: directory)
            #expect(result.status == 0, "\(command): \(result.output)")
        }
        try FileManager.default.copyItem(
            atPath: repositoryRoot.appendingPathComponent("policies").path, toPath: "\(directory)/policies")
        let nats = try await NATSServer.start(in: directory)
        defer { nats.stop() }
        let passwordFile = try nats.gatewayPasswordFile()

        var gateways: [(serve: RunningCommand, port: Int)] = []
        defer { for gateway in gateways { stopProcess(gateway.serve.process) } }
        for index in 1...3 {
            // Gateway 1 reads the CRL `pki revoke` writes, as on the admin host; the others keep a copy of their own,
            // which they get through NATS.
            let crl = index == 1 ? "pki/crl.pem" : "crl-\(index).pem"
            if index > 1 { try FileManager.default.copyItem(atPath: "\(directory)/pki/crl.pem", toPath: "\(directory)/\(crl)") }
            try """
                listen: 127.0.0.1:0
                tls: {certificate: pki/issued/localhost.crt, key: pki/private/localhost.key, client_ca: pki/ca.crt, crl: \(crl)}
                routes: [{path: /v1/messages, kind: broker}]
                policies: policies
                audit_dir: audit-\(index)
                admin: {listen: off}
                proxy_protocol: {trusted: [127.0.0.2]}
                nats: {url: "nats://127.0.0.1:\(nats.port)", user: gateway, password_file: \(passwordFile), name: gw-\(index)}

                """.write(toFile: "\(directory)/gw-\(index).yaml", atomically: true, encoding: .utf8)
            let serve = try RunningCommand(["serve", "--config", "gw-\(index).yaml"], in: directory)
            #expect(try await serve.waitFor("connected to NATS"), "\(serve.output)")
            let port = try #require(listeningPort(serve.output).flatMap { Int($0) }, "\(serve.output)")
            gateways.append((serve, port))
        }
        // `balance first`: a device lands on gateway 3, then on gateway 2 once 3 is gone; 1 reads the CRL.
        let haproxy = try await HAProxy.start(in: directory, source: "127.0.0.2", gateways: gateways.reversed().map(\.port))
        defer { haproxy.stop() }

        func tls(_ name: String) -> GatewayClient.TLSOptions {
            GatewayClient.TLSOptions(
                certificateChain: "\(directory)/pki/issued/\(name).crt", privateKey: "\(directory)/pki/private/\(name).key",
                trustRoots: "\(directory)/pki/ca.crt", serverName: nil)
        }
        var operators: [BrokerSession] = []
        var received: [Received] = []
        for gateway in gateways {
            let session = try await BrokerSession.connect(port: gateway.port, tls: tls("demo-operator"))
            try await session.subscribe("devices/+/telemetry")
            operators.append(session)
            received.append(Received(session))
        }
        /// The device, through HAProxy from 127.0.0.7; tried again while HAProxy finds a gateway that answers.
        func connectDevice() async throws -> BrokerSession? {
            let deadline = Date().addingTimeInterval(90)
            while Date() < deadline {
                if let session = try? await BrokerSession.connect(
                    port: haproxy.port, tls: tls("demo-device"), localAddress: try SocketAddress(ipAddress: "127.0.0.7", port: 0))
                {
                    return session
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            return nil
        }
        /// Publishes `label` probes until every operator in `receivers` has one: the gateways' subscriptions have
        /// reached NATS (a publish refused `unavailable` meanwhile is simply tried again).
        func probe(_ device: BrokerSession, _ label: String, until receivers: [Received]) async throws -> Bool {
            let deadline = Date().addingTimeInterval(90)
            var count = 0
            while Date() < deadline {
                count += 1
                try? await device.publish("devices/demo-device/telemetry", json: #""\#(label)-\#(count)""#)
                if try await eventually(within: 0.3, { receivers.allSatisfy { $0.contains(label) } }) { return true }
            }
            return false
        }

        // 1. A device through HAProxy publishes; operators on all three gateways receive it as demo-device.
        var device = try #require(try await connectDevice(), "the device could not connect through HAProxy")
        #expect(try await probe(device, "first", until: received))
        #expect(received.allSatisfy { $0.senders == ["demo-device"] }, "\(received.map(\.senders))")
        let opened = auditRecords(in: "\(directory)/audit-3").first {
            $0["event"] as? String == "session_opened" && $0["identity"] as? String == "demo-device"
        }
        #expect((opened?["peer"] as? String)?.hasPrefix("127.0.0.7:") == true, "\(String(describing: opened))")
        #expect((opened?["proxy"] as? String)?.hasPrefix("127.0.0.2:") == true, "\(String(describing: opened))")

        // 2. Its gateway dies; the device connects again through HAProxy, lands on another and carries on.
        kill(gateways[2].serve.process.processIdentifier, SIGKILL)
        await device.connection.waitUntilClosed()
        device = try #require(try await connectDevice(), "the device could not connect again through HAProxy")
        #expect(try await probe(device, "after-kill", until: [received[0], received[1]]))
        #expect(auditRecords(in: "\(directory)/audit-2").contains {
            $0["event"] as? String == "session_opened" && $0["identity"] as? String == "demo-device"
        })

        // 3. nats-server restarts; both gateways notice, recover by themselves, and deliver again.
        nats.stop()
        for index in [1, 2] {
            #expect(
                try await eventually { auditRecords(in: "\(directory)/audit-\(index)").contains { $0["event"] as? String == "nats_unavailable" } },
                "gateway \(index) did not notice NATS was gone")
        }
        #expect(try await nats.restart(), "nats-server did not start again on its port")
        for index in [1, 2] {
            #expect(
                try await eventually { auditRecords(in: "\(directory)/audit-\(index)").contains { $0["event"] as? String == "nats_recovered" } },
                "gateway \(index) did not recover")
        }
        #expect(try await probe(device, "after-nats", until: [received[0], received[1]]))

        // 4. Revoked on the admin host (gateway 1's CRL): the device's session on gateway 2 ends too.
        let revokedAt = Date()
        let revoke = try await portcullis(["pki", "revoke", "demo-device"], in: directory)
        #expect(revoke.status == 0, "\(revoke.output)")
        let ended = try await eventually { !device.connection.isActive }
        #expect(ended, "the revoked device's session on gateway 2 stayed open")
        print("cluster: the revoked device's session on gateway 2 ended \(Int(Date().timeIntervalSince(revokedAt) * 1000)) ms after pki revoke")
        #expect(auditRecords(in: "\(directory)/audit-2").contains {
            $0["event"] as? String == "reload" && ($0["detail"] as? String)?.hasPrefix("CRL from another gateway (NATS)") == true
        })

        for session in operators { await session.close() }
    }
}
