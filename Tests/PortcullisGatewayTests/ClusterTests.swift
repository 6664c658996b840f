import Foundation
import NIOConcurrencyHelpers
import PortcullisClient
import PortcullisConfig
import PortcullisProtocol
import PortcullisTestSupport
import Testing

@testable import PortcullisGateway

/// Every delivery of a session, collected as it comes: tests wait for what they expect with a generous deadline
/// instead of reading the stream with a timeout (a cancelled read would end the stream).
final class DeliveryLog: Sendable {
    private let received = NIOLockedValueBox([Delivery]())

    init(_ session: BrokerSession) {
        Task { [received] in
            for await delivery in session.deliveries { received.withLockedValue { $0.append(delivery) } }
        }
    }

    var all: [Delivery] { received.withLockedValue { $0 } }

    /// Waits up to `seconds` for a delivery matching `predicate`; true when one came.
    func wait(within seconds: Double = 60, for predicate: (Delivery) -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if all.contains(where: predicate) { return true }
            try await Task.sleep(for: .milliseconds(20))
        }
        return all.contains(where: predicate)
    }
}

/// The shared broker: two gateways (each its own PKI, as two sites could have) and a real nats-server.
@Suite("Shared broker over NATS", .serialized)
struct ClusterTests {
    /// A scratch directory for nats-server, removed by the caller.
    static func scratch() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("nats-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// A nats-server in a scratch directory for `body`, with the configuration change that joins a gateway to it.
    static func withNATS(
        maximumPayload: Int? = nil,
        _ body: (NATSServer, @escaping (inout GatewayConfiguration) -> Void) async throws -> Void
    ) async throws {
        let directory = try scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let nats = try await NATSServer.start(in: directory, maximumPayload: maximumPayload)
        defer { nats.stop() }
        try await body(nats, try joining(nats))
    }

    static func joining(_ nats: NATSServer) throws -> (inout GatewayConfiguration) -> Void {
        let passwordFile = try nats.gatewayPasswordFile()
        let port = nats.port
        return { configuration in
            var settings = GatewayConfiguration.NATS(url: "nats://127.0.0.1:\(port)")!
            settings.user = "gateway"
            settings.passwordFile = passwordFile
            configuration.nats = settings
        }
    }

    /// Waits until the gateway says it is ready (connected to NATS); the reason it is not, else nil.
    static func ready(_ gw: TestGateway, within seconds: Double = 60) async throws -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        while let reason = gw.gateway.notReadyReason, Date() < deadline {
            _ = reason
            try await Task.sleep(for: .milliseconds(20))
        }
        return gw.gateway.notReadyReason
    }

    /// Publishes probes from `device` until `log` has one: then the receiving gateway's subscription has reached
    /// NATS. Returns whether it did within the deadline.
    static func probe(from device: BrokerSession, topic: String, until log: DeliveryLog) async throws -> Bool {
        let deadline = Date().addingTimeInterval(60)
        var count = 0
        while Date() < deadline {
            count += 1
            try await device.publish(topic, json: #"{"probe":\#(count)}"#)
            if try await log.wait(within: 0.2, for: { $0.text.contains("probe") }) { return true }
        }
        return false
    }

    static func metrics(_ gw: TestGateway) -> String {
        String(decoding: gw.gateway.metricsExposition(), as: UTF8.self)
    }

    @Test("The sender header keeps an identity's blanks, which NATS would trim into another identity; nothing else reads")
    func senderHeader() {
        for identity in ["demo-device", "alice ", " alice", "a%20b", "100%", "device 7"] {
            let value = ClusterLink.senderHeaderValue(identity)
            #expect(!value.hasPrefix(" ") && !value.hasSuffix(" "), "\(value)")
            #expect(ClusterLink.identity(fromSenderHeader: value) == identity)
        }
        for forged in ["alice ", "a%41", "a%2", "%", "", "a\u{301}"] {
            #expect(ClusterLink.identity(fromSenderHeader: forged) == nil, "\(forged)")
        }
    }

    @Test("A publish on one gateway reaches subscribers on the other exactly once, stamped with the sender's identity; a CRL from another CA is refused")
    func crossGateway() async throws {
        try await Self.withNATS { nats, join in
            try await withGateway(adjust: join) { a in
                try await withGateway(adjust: join) { b in
                    #expect(try await Self.ready(a) == nil)
                    #expect(try await Self.ready(b) == nil)
                    let remote = try await b.broker(b.operatorCredential)
                    // Overlapping filters on one gateway: the message still comes once.
                    try await remote.subscribe("devices/+/telemetry")
                    try await remote.subscribe("devices/demo-device/telemetry")
                    let remoteLog = DeliveryLog(remote)
                    let local = try await a.broker(a.operatorCredential)
                    try await local.subscribe("devices/+/telemetry")
                    let localLog = DeliveryLog(local)
                    let device = try await a.broker(a.device)
                    let topic = "devices/demo-device/telemetry"
                    #expect(try await Self.probe(from: device, topic: topic, until: remoteLog), "B's subscription never reached NATS")

                    try await device.publish(topic, json: #"{"reading":"real"}"#)
                    try await device.publish(topic, binary: [0, 1, 2, 255])
                    try await device.publish(topic, json: #""sentinel""#)
                    #expect(try await remoteLog.wait { $0.text == #""sentinel""# })
                    #expect(try await localLog.wait { $0.text == #""sentinel""# })
                    for log in [remoteLog, localLog] {
                        let real = log.all.filter { $0.text.contains("real") }
                        #expect(real.count == 1, "\(log.all)")
                        #expect(real.first?.from == "demo-device" && real.first?.topic == topic)
                        #expect(real.first?.payload == .json(Array(#"{"reading":"real"}"#.utf8)))
                        let binary = log.all.filter { $0.payload == .binary([0, 1, 2, 255]) }
                        #expect(binary.count == 1 && binary.first?.from == "demo-device", "\(log.all)")
                    }
                    // Each test gateway has a CA of its own: the other's CRL reaches it through NATS and is refused.
                    let foreignCRL = try #require(await a.auditRecord { $0.event == "crl_refused" })
                    #expect(foreignCRL.detail?.contains("does not verify against this gateway's CA bundle") == true, "\(foreignCRL)")
                    #expect(Self.metrics(b).contains("portcullis_nats_connected 1"))
                    #expect(!Self.metrics(b).contains("portcullis_nats_messages_in_total 0"))
                    await device.close()
                    await local.close()
                    await remote.close()
                }
            }
        }
    }

    @Test("With NATS gone: /readyz says so, sessions stay, publishes are refused 'unavailable'; then it recovers by itself")
    func outage() async throws {
        try await Self.withNATS { nats, join in
            try await withGateway(adjust: join) { a in
                try await withGateway(adjust: join) { b in
                    #expect(try await Self.ready(a) == nil)
                    #expect(try await Self.ready(b) == nil)
                    let remote = try await b.broker(b.operatorCredential)
                    try await remote.subscribe("devices/+/telemetry")
                    let remoteLog = DeliveryLog(remote)
                    let device = try await a.broker(a.device)
                    let topic = "devices/demo-device/telemetry"
                    #expect(try await Self.probe(from: device, topic: topic, until: remoteLog))

                    nats.stop()
                    let deadline = Date().addingTimeInterval(60)
                    while a.gateway.notReadyReason == nil, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
                    let reason = try #require(a.gateway.notReadyReason)
                    #expect(reason.hasPrefix("NATS is unreachable: "), "\(reason)")
                    await expectRefusal("unavailable") { try await device.publish(topic, json: #""lost""#) }
                    await expectRefusal("unavailable") { try await device.publish(topic, json: #""lost again""#) }
                    #expect(Self.metrics(a).contains("portcullis_publishes_unavailable_total 2"), "\(Self.metrics(a))")
                    #expect(Self.metrics(a).contains("portcullis_nats_connected 0"))
                    let down = try #require(await a.auditRecord { $0.event == "nats_unavailable" })
                    #expect(down.decision == "deny" && down.detail?.contains("publishes are refused") == true)

                    #expect(try await nats.restart(), "nats-server did not start again on its port")
                    #expect(try await Self.ready(a) == nil)
                    #expect(try await Self.ready(b) == nil)
                    // The same sessions, resubscribed by the gateways: nothing was reconnected by the clients.
                    try await device.publish(topic, json: #""after""#)
                    #expect(try await remoteLog.wait { $0.text == #""after""# })
                    #expect(!remoteLog.all.contains { $0.text.contains("lost") })
                    let up = try #require(await a.auditRecord { $0.event == "nats_recovered" })
                    #expect(up.count == 2, "\(up)")
                    await device.close()
                    await remote.close()
                }
            }
        }
    }

    @Test("Only what a gateway would send is delivered; a NATS user granted nothing can neither publish nor subscribe")
    func trust() async throws {
        try await Self.withNATS { nats, join in
            try await withGateway(adjust: join) { gw in
                #expect(try await Self.ready(gw) == nil)
                let remote = try await gw.broker(gw.operatorCredential)
                try await remote.subscribe("devices/+/telemetry")
                let log = DeliveryLog(remote)
                func hpub(_ subject: String, headers: [String], payload: String) -> String {
                    let block = "NATS/1.0\r\n" + headers.map { $0 + "\r\n" }.joined() + "\r\n"
                    return "HPUB \(subject) \(block.utf8.count) \(block.utf8.count + payload.utf8.count)\r\n\(block)\(payload)\r\n"
                }
                let good = ["Portcullis-Sender: demo-device", "Portcullis-Format: json"]
                // As another gateway would (the gateway user): until the subscription has reached NATS.
                let deadline = Date().addingTimeInterval(60)
                while !log.all.contains(where: { $0.text == #""probe""# }), Date() < deadline {
                    _ = try await natsExchange(
                        port: nats.port, user: "gateway", password: NATSServer.gatewayPassword,
                        commands: hpub("portcullis.devices.demo-device.telemetry", headers: good, payload: #""probe""#))
                }
                #expect(log.all.contains { $0.text == #""probe""# && $0.from == "demo-device" })
                let forged = [
                    "PUB portcullis.devices.demo-device.telemetry 8\r\n\"nobody\"\r\n",
                    hpub("portcullis.devices.demo-device.telemetry", headers: good, payload: #"1,"from":"admin""#),
                    hpub("portcullis.devices.demo-device.telemetry", headers: ["Portcullis-Sender: cafe\u{301}", "Portcullis-Format: json"], payload: "2"),
                    hpub("portcullis.devices.%64emo-device.telemetry", headers: good, payload: "3"),
                    hpub("portcullis.devices.demo-device.telemetry", headers: ["Portcullis-Sender: demo-device", "Portcullis-Format: xml"], payload: "4"),
                    hpub("portcullis.devices.demo-device.telemetry", headers: good + ["Portcullis-Sender: admin"], payload: "5"),
                    hpub("portcullis.devices.demo-device.telemetry", headers: good, payload: #""last""#),
                ]
                _ = try await natsExchange(
                    port: nats.port, user: "gateway", password: NATSServer.gatewayPassword, commands: forged.joined())
                #expect(try await log.wait { $0.text == #""last""# })
                let delivered = log.all.map(\.text).filter { $0 != #""probe""# }
                #expect(delivered == [#""last""#], "\(delivered)")
                #expect(Self.metrics(gw).contains("portcullis_nats_messages_refused_total 6"), "\(Self.metrics(gw))")

                let device = try await natsExchange(
                    port: nats.port, user: "device", password: NATSServer.devicePassword,
                    commands: "PUB portcullis.devices.demo-device.telemetry 2\r\nhi\r\nSUB portcullis.> 1\r\n")
                #expect(device.contains("Permissions Violation for Publish to \"portcullis.devices.demo-device.telemetry\""), "\(device)")
                #expect(device.contains("Permissions Violation for Subscription to \"portcullis.>\""), "\(device)")
                await remote.close()
            }
        }
    }

    @Test("A CRL one gateway reloads reaches the other through NATS, which verifies it and ends the revoked device's session")
    func revocationEverywhere() async throws {
        try await Self.withNATS { nats, join in
            try await withGateway(adjust: join) { a in
                // Gateway B trusts A's CA (one fleet, two gateways) and keeps its own copy of the CRL.
                let copy = "\(nats.directory)/b-crl.pem"
                try FileManager.default.copyItem(atPath: a.pki.crlPath, toPath: copy)
                try await withGateway(adjust: {
                    join(&$0)
                    $0.tls.clientCA = a.pki.caPath
                    $0.tls.clientIntermediates = nil
                    $0.tls.crl = copy
                }) { b in
                    #expect(try await Self.ready(a) == nil)
                    #expect(try await Self.ready(b) == nil)
                    guard case .upgraded(let session) = try await GatewayClient.connect(port: b.port, path: "/v1/echo", tls: b.tls(a.device))
                    else {
                        Issue.record("A's device was not admitted by B")
                        return
                    }
                    // `pki revoke` on the admin host: A's CRL, with a higher number, reloaded by A.
                    try a.pki.revoke([a.deviceCertificate], number: 2)
                    let revokedAt = Date()
                    _ = await a.gateway.reload(trigger: "test: pki revoke")
                    let closed = await withTaskGroup(of: Bool.self) { group in
                        group.addTask {
                            await session.waitUntilClosed()
                            return true
                        }
                        group.addTask {
                            try? await Task.sleep(for: .seconds(60))
                            return false
                        }
                        let first = await group.next() ?? false
                        group.cancelAll()
                        return first
                    }
                    #expect(closed, "B kept the revoked device's session")
                    print("cluster: B ended the revoked device's session \(Int(Date().timeIntervalSince(revokedAt) * 1000)) ms after A reloaded")
                    let reload = try #require(await b.auditRecord { $0.event == "reload" && $0.reason == "applied" })
                    #expect(reload.detail?.hasPrefix("CRL from another gateway (NATS)") == true, "\(reload)")
                    #expect(try await b.auditRecord { $0.identity == "demo-device" && $0.reason == "certificate_revoked" } != nil)
                    #expect(FileManager.default.contents(atPath: copy) == FileManager.default.contents(atPath: a.pki.crlPath))
                }
            }
        }
    }

    @Test("A publish over NATS's max_payload is refused 'message_too_large', and the gateway stays connected")
    func overMaximumPayload() async throws {
        try await Self.withNATS(maximumPayload: 2048) { nats, join in
            try await withGateway(adjust: join) { gw in
                #expect(try await Self.ready(gw) == nil)
                let device = try await gw.broker(gw.device)
                let large = "\"" + String(repeating: "x", count: 3000) + "\""
                await expectRefusal("message_too_large") { try await device.publish("devices/demo-device/telemetry", json: large) }
                try await device.publish("devices/demo-device/telemetry", json: #""small""#)
                #expect(gw.gateway.notReadyReason == nil)
                #expect(Self.metrics(gw).contains("portcullis_nats_connection_failures_total 0"), "\(Self.metrics(gw))")
                await device.close()
            }
        }
    }
}
