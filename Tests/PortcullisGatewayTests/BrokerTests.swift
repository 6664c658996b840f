import Foundation
import NIOCore
import PortcullisAudit
import PortcullisClient
import PortcullisProtocol
import Testing

/// Collects `count` deliveries (or fewer if `seconds` pass).
func collect(_ count: Int, from session: BrokerSession, within seconds: Double = 120) async -> [Delivery] {
    await withTaskGroup(of: [Delivery].self) { group in
        group.addTask {
            var received: [Delivery] = []
            for await delivery in session.deliveries {
                received.append(delivery)
                if received.count == count { break }
            }
            return received
        }
        group.addTask {
            try? await Task.sleep(for: .seconds(seconds))
            return []
        }
        var result: [Delivery] = []
        for await partial in group {
            if !partial.isEmpty || result.isEmpty { result = partial }
            group.cancelAll()
            break
        }
        return result
    }
}

/// Expects `operation` to throw a broker error with `code`.
func expectRefusal(_ code: String, _ operation: () async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async {
    do {
        try await operation()
        Issue.record("expected \(code)", sourceLocation: sourceLocation)
    } catch let error as BrokerError {
        #expect(error.code == code, sourceLocation: sourceLocation)
    } catch {
        Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("Publish/subscribe broker")
struct BrokerTests {
    @Test("Fan-out: ten subscribers each get every message exactly once, in each publisher's order")
    func fanOut() async throws {
        try await withGateway { gw in
            var subscribers: [BrokerSession] = []
            for _ in 0..<10 {
                let session = try await gw.broker(gw.device)
                try await session.subscribe("fanout/#")
                subscribers.append(session)
            }
            let first = try await gw.broker(gw.device)
            let second = try await gw.broker(gw.spiffeDevice)
            async let a: Void = { for n in 0..<100 { try await first.publishWithoutAck("fanout/a", json: "\(n)") } }()
            async let b: Void = { for n in 0..<100 { try await second.publishWithoutAck("fanout/b", json: "\(n)") } }()
            _ = try await (a, b)
            for subscriber in subscribers {
                let received = await collect(200, from: subscriber)
                #expect(received.count == 200)
                let fromA = received.filter { $0.topic == "fanout/a" }
                let fromB = received.filter { $0.topic == "fanout/b" }
                #expect(fromA.map(\.text) == (0..<100).map(String.init))
                #expect(fromB.map(\.text) == (0..<100).map(String.init))
                #expect(Set(fromA.map(\.from)) == ["demo-device"])
                #expect(Set(fromB.map(\.from)) == ["device-42"])
            }
            // Exactly once: nothing more arrives.
            try await first.publish("fanout/end", json: "true")
            for subscriber in subscribers {
                #expect(await collect(1, from: subscriber).map(\.topic) == ["fanout/end"])
                await subscriber.close()
            }
        }
    }

    @Test("An operator sees every device's telemetry; a device sees only its own commands")
    func operatorAndDevices() async throws {
        try await withGateway { gw in
            let operatorSession = try await gw.broker(gw.operatorCredential)
            let device = try await gw.broker(gw.device)
            let other = try await gw.broker(gw.spiffeDevice)
            try await operatorSession.subscribe("devices/+/telemetry")
            try await device.subscribe("devices/demo-device/commands/#")
            try await other.subscribe("devices/device-42/commands/#")

            try await device.publish("devices/demo-device/telemetry", json: #"{"t":21.5}"#)
            try await other.publish("devices/device-42/telemetry", json: #"{"t":19}"#)
            let telemetry = await collect(2, from: operatorSession)
            #expect(Set(telemetry.map(\.from)) == ["demo-device", "device-42"])
            #expect(telemetry.first { $0.from == "demo-device" }?.text == #"{"t":21.5}"#)

            try await operatorSession.publish("devices/demo-device/commands/reboot", json: #""now""#)
            let command = await collect(1, from: device)
            #expect(command.map(\.topic) == ["devices/demo-device/commands/reboot"])
            #expect(command.first?.from == "operator")
            #expect(await collect(1, from: other, within: 0.5).isEmpty)

            // A device reaching beyond its own topics is refused, and its session stays open.
            await expectRefusal("forbidden") { try await device.subscribe("devices/+/telemetry") }
            await expectRefusal("forbidden") { try await device.publish("devices/device-42/telemetry", json: "1") }
            await expectRefusal("forbidden") { try await device.subscribe("devices/device-42/commands/#") }
            // The explicit deny wins over the operator's wildcard grant.
            await expectRefusal("forbidden") { try await operatorSession.publish("devices/vault/commands/open", json: "1") }
            await expectRefusal("invalid_topic") { try await device.subscribe("devices/demo-device/commands/#/x") }
            try await device.publish("devices/demo-device/telemetry", json: "2")
            #expect(await collect(1, from: operatorSession).first?.text == "2")

            let denied = try gw.auditRecords().filter { $0.event == "message_denied" }
            #expect(denied.count == 5)
            #expect(denied.contains { $0.identity == "demo-device" && $0.topic == "devices/+/telemetry" && $0.reason == "forbidden" })
            #expect(denied.contains { $0.identity == "operator" && $0.topic == "devices/vault/commands/open" })
        }
    }

    @Test("The sender's identity is set by the gateway; a client cannot forge it")
    func senderCannotBeForged() async throws {
        try await withGateway { gw in
            let listener = try await gw.broker(gw.operatorCredential)
            try await listener.subscribe("devices/+/telemetry")
            let device = try await gw.broker(gw.device)
            // A 'from' field is not part of a publish: refused outright.
            try await device.connection.send(text: #"{"type":"publish","topic":"devices/demo-device/telemetry","from":"operator","payload":1,"id":"x"}"#)
            // A payload may mention any name: it is data, and the envelope still names the real sender.
            try await device.publish("devices/demo-device/telemetry", json: #"{"from":"operator"}"#)
            let received = await collect(1, from: listener)
            #expect(received.first?.from == "demo-device")
            #expect(received.first?.text == #"{"from":"operator"}"#)
            let denied = try #require(await gw.auditRecord { $0.event == "message_denied" })
            #expect(denied.reason == "invalid_message")
        }
    }

    @Test("Binary payloads travel in the binary envelope, byte for byte")
    func binaryEnvelope() async throws {
        try await withGateway { gw in
            let subscriber = try await gw.broker(gw.device)
            try await subscriber.subscribe("fanout/blob")
            let publisher = try await gw.broker(gw.spiffeDevice)
            let blob = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            try await publisher.publish("fanout/blob", binary: blob)
            let received = try #require(await collect(1, from: subscriber).first)
            #expect(received.payload == .binary(blob))
            #expect(received.from == "device-42")
        }
    }

    @Test("Limits: open sessions (429), subscriptions, messages per second, message size, violations")
    func limits() async throws {
        try await withGateway { gw in
            let session = try await gw.broker(gw.limited)
            // A second session for the same identity is refused at the upgrade.
            let second = try await gw.connect(gw.limited, path: "/v1/messages")
            #expect(second.status == 429)
            #expect(try #require(await gw.auditRecord { $0.reason == "session_limit" }).status == 429)

            try await session.subscribe("load/a")
            try await session.subscribe("load/b")
            await expectRefusal("subscription_limit") { try await session.subscribe("load/c") }

            // Five messages a second: a burst of twenty is partly refused, and the session stays open. Queued at
            // once, without waiting for acks or writes, so that a loaded machine cannot spread the burst out.
            for n in 0..<20 {
                session.connection.enqueue(
                    binary: false, data: ByteBuffer(string: #"{"type":"publish","topic":"load/x","payload":\#(n)}"#))
            }
            let refused = await withTaskGroup(of: Int?.self) { group in
                group.addTask {
                    var count = 0
                    for await error in session.errors where error.code == "rate_limited" {
                        count += 1
                        if count == 10 { break }
                    }
                    return count
                }
                group.addTask {
                    try? await Task.sleep(for: .seconds(10))
                    return nil
                }
                let first = await group.next() ?? nil
                group.cancelAll()
                return first ?? 0
            }
            #expect(refused >= 10)
            #expect(session.connection.isActive)
            #expect(try #require(await gw.auditRecord { $0.reason == "rate_limited" }).identity == "limited")

            // Three violations close the session with 1008.
            for _ in 0..<3 { try await session.publishWithoutAck("elsewhere", json: "1") }
            await session.connection.closed()
            let closed = try #require(await gw.auditRecord { $0.event == "session_closed" && $0.identity == "limited" })
            #expect(closed.closeCode == 1008)
            #expect(closed.reason == "too_many_violations")

            // The slot is free again; an oversized message closes with 1009.
            let third = try await gw.broker(gw.limited)
            try await third.connection.send(text: #"{"type":"publish","topic":"load/x","payload":""# + String(repeating: "x", count: 2000) + #""}"#)
            await third.connection.closed()
            let tooLarge = try #require(await gw.auditRecord { $0.event == "session_closed" && $0.closeCode == 1009 })
            #expect(tooLarge.reason == "message_too_large")
        }
    }

    @Test("on_rate_limit: close ends the session with 1008")
    func rateLimitClose() async throws {
        try await withGateway { gw in
            let session = try await gw.broker(gw.strict)
            // Publish until the gateway closes the session: at 2 messages a second it must, however slowly this runs.
            for n in 0..<1000 where session.connection.isActive { try? await session.publishWithoutAck("load/x", json: "\(n)") }
            await session.connection.closed()
            let closed = try #require(await gw.auditRecord { $0.event == "session_closed" })
            #expect(closed.closeCode == 1008 && closed.reason == "rate_limited")
        }
    }

    @Test("A subscriber that stops reading is closed with 1013 while the gateway's memory stays bounded")
    func slowConsumer() async throws {
        try await withGateway(adjust: {
            $0.maxOutboundBytes = 256 * 1024
            // The subscriber reads nothing, so it answers no ping either: on a busy machine the default heartbeat
            // (20 s, then 20 s to answer) could close it before the flood filled its socket.
            $0.pingInterval = 3600
        }) { gw in
            let slow = try await gw.broker(gw.device)
            try await slow.subscribe("fanout/flood")
            try await slow.connection.setReading(false)
            let publisher = try await gw.broker(gw.spiffeDevice)
            let chunk = "\"" + String(repeating: "x", count: 8 * 1024) + "\""
            var sent = 0
            while sent < 4000, try await gw.auditRecord(timeout: 0, where: { $0.reason == "slow_consumer" }) == nil {
                for _ in 0..<50 { try await publisher.publishWithoutAck("fanout/flood", json: chunk) }
                sent += 50
            }
            let record = try #require(await gw.auditRecord { $0.reason == "slow_consumer" })
            #expect(record.event == "session_slow_consumer")
            #expect(sent < 4000, "the slow subscriber was never closed")
            // 4000 × 8 KiB would be 32 MiB queued; the gateway's own count of what it held for the client never
            // passed the bound. (The test process's RSS is no measure: tests running alongside allocate too.)
            let queued = try #require(record.detail?.split(separator: " ").first.flatMap { Int($0) }, "\(record.detail ?? "")")
            #expect(queued <= 256 * 1024)
            try await slow.connection.setReading(true)
            await slow.connection.closed()
            let closed = try #require(await gw.auditRecord { $0.event == "session_closed" && $0.reason == "slow_consumer" })
            #expect(closed.closeCode == 1013)
        }
    }

    @Test("A peer that does not answer pings is closed and audited; one that answers stays")
    func heartbeatTimeout() async throws {
        // Pings every 0.2 s, but 3 s to answer: the live peer must not miss its deadline on a loaded machine.
        try await withGateway(adjust: { $0.pingInterval = 0.2; $0.pingTimeout = 3 }) { gw in
            let silent = try #require(try await GatewayClient.connect(
                port: gw.port, path: "/v1/messages", tls: gw.tls(gw.device), answerPings: false).connection)
            let alive = try await gw.broker(gw.spiffeDevice)
            await silent.closed()
            let closed = try #require(await gw.auditRecord { $0.event == "session_closed" && $0.reason == "heartbeat_timeout" })
            #expect(closed.closeCode == 1001)
            #expect(closed.identity == "demo-device")
            // The silent peer lasted at least the timeout; the live one has answered a dozen pings since it opened.
            #expect(alive.connection.isActive)
            try await alive.subscribe("fanout/still-here")
        }
    }
}

extension WebSocketConnection {
    /// Waits for the connection to close, failing the test after `seconds` instead of hanging.
    func closed(within seconds: Double = 120, sourceLocation: SourceLocation = #_sourceLocation) async {
        let deadline = Date().addingTimeInterval(seconds)
        while isActive && Date() < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        #expect(!isActive, "the connection is still open after \(seconds) s", sourceLocation: sourceLocation)
    }
}

