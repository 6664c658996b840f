import Foundation
import NIOCore
import NIOPosix
import PortcullisAudit
import PortcullisConfig
import PortcullisTestSupport
import Testing

@testable import PortcullisGateway

@Suite("Connection limits (pure)")
struct ConnectionLimiterTests {
    /// `limiter.admit`, outside #expect (which cannot call a mutating member).
    func admit(
        _ limiter: inout ConnectionLimiter, _ address: String, _ limits: GatewayConfiguration.ConnectionLimits, now: Double
    ) -> ConnectionLimiter.Refusal? {
        limiter.admit(address, limits: limits, now: now)
    }

    func limits(total: Int? = nil, perAddress: Int? = nil, rate: Int? = nil) -> GatewayConfiguration.ConnectionLimits {
        var limits = GatewayConfiguration.ConnectionLimits()
        (limits.maxConnections, limits.perAddressConnections, limits.perAddressNewPerSecond) = (total, perAddress, rate)
        return limits
    }

    @Test("The global cap, the per-address cap and the per-address rate each refuse with their own reason")
    func refusals() {
        var limiter = ConnectionLimiter()
        let capped = limits(total: 3, perAddress: 2)
        #expect(admit(&limiter, "10.0.0.1", capped, now: 0) == nil)
        #expect(admit(&limiter, "10.0.0.1", capped, now: 0) == nil)
        #expect(admit(&limiter, "10.0.0.1", capped, now: 0) == .perAddressConnections)
        #expect(admit(&limiter, "10.0.0.2", capped, now: 0) == nil)
        #expect(admit(&limiter, "10.0.0.3", capped, now: 0) == .maxConnections)
        #expect(limiter.open == 3)
        limiter.release("10.0.0.1", now: 0)
        #expect(admit(&limiter, "10.0.0.3", capped, now: 0) == nil)

        var rated = ConnectionLimiter()
        let rate = limits(rate: 5)
        for _ in 0..<5 { #expect(admit(&rated, "10.0.0.9", rate, now: 0) == nil) }
        #expect(admit(&rated, "10.0.0.9", rate, now: 0) == .perAddressRate)
        #expect(admit(&rated, "10.0.0.8", rate, now: 0) == nil, "another address has its own budget")
        #expect(admit(&rated, "10.0.0.9", rate, now: 0.21) == nil, "a fifth of a second refills one")
    }

    @Test("A load balancer's connection counts in all at accept, and against its client once the PROXY header names it")
    func attributedLater() {
        var limiter = ConnectionLimiter()
        let capped = limits(total: 3, perAddress: 1)
        #expect(limiter.admit(nil, limits: capped, now: 0) == nil)
        #expect(limiter.admit(nil, limits: capped, now: 0) == nil)
        #expect(limiter.open == 2 && limiter.trackedAddresses == 0)
        #expect(limiter.attribute("192.0.2.7", limits: capped, now: 0) == nil)
        #expect(limiter.attribute("192.0.2.7", limits: capped, now: 0) == .perAddressConnections, "one per client")
        #expect(admit(&limiter, "192.0.2.8", capped, now: 0) == nil)
        #expect(limiter.admit(nil, limits: capped, now: 0) == .maxConnections, "the total counts every connection")
        limiter.release(nil, now: 0)
        limiter.release("192.0.2.7", now: 0)
        #expect(limiter.open == 1 && limiter.trackedAddresses == 1)
        #expect(limiter.attribute("192.0.2.7", limits: capped, now: 0) == nil, "released, the client may come again")
    }

    @Test("The open-file limit caps connections below max_connections, with descriptors kept back; upstream takes two")
    func openFileCapacity() {
        let budget = OpenFileBudget(limit: 20_000)
        #expect(budget.connections(descriptorsPerConnection: 1) == 19_872)
        #expect(budget.connections(descriptorsPerConnection: 2) == 9_936)
        #expect(OpenFileBudget(limit: 100).connections(descriptorsPerConnection: 1) == 0)

        var limiter = ConnectionLimiter()
        let generous = limits(total: 10)
        #expect(limiter.admit("10.0.0.1", limits: generous, capacity: 2, now: 0) == nil)
        #expect(limiter.admit("10.0.0.2", limits: generous, capacity: 2, now: 0) == nil)
        #expect(limiter.admit("10.0.0.3", limits: generous, capacity: 2, now: 0) == .openFiles)
        #expect(limiter.admit("10.0.0.3", limits: limits(total: 2), capacity: 2, now: 0) == .maxConnections,
            "the configured cap is named first when both are reached")
        #expect(limiter.admit("10.0.0.3", limits: limits(), capacity: 2, now: 0) == .openFiles, "max_connections off")
    }

    @Test("Closing and reconnecting does not refill the rate budget; an idle address is forgotten once refilled")
    func budgetOutlivesConnections() {
        var limiter = ConnectionLimiter()
        let rate = limits(rate: 2)
        #expect(admit(&limiter, "a", rate, now: 0) == nil)
        #expect(admit(&limiter, "a", rate, now: 0) == nil)
        limiter.release("a", now: 0)
        limiter.release("a", now: 0)
        #expect(admit(&limiter, "a", rate, now: 0.1) == .perAddressRate)
        #expect(limiter.trackedAddresses == 1)
        _ = limiter.admit("b", limits: limits(), now: 5)
        #expect(limiter.trackedAddresses == 1, "only b: a's entry went once its budget was full again")
    }
}

@Suite("Aggregated refusals (pure)")
struct RefusalAggregatorTests {
    /// `aggregator.note`, outside #expect (which cannot call a mutating member).
    func note(_ aggregator: inout RefusalAggregator, _ address: String, _ reason: String, _ fingerprint: String? = nil) -> Bool {
        aggregator.note(address: address, reason: reason, fingerprint: fingerprint, event: "tls_refused")
    }

    @Test("The first refusal of an address, reason and certificate is written; the rest are counted; the interval drains")
    func aggregation() {
        var aggregator = RefusalAggregator()
        #expect(note(&aggregator, "10.0.0.1", "not_tls"))
        for _ in 0..<99 { #expect(!note(&aggregator, "10.0.0.1", "not_tls")) }
        #expect(note(&aggregator, "10.0.0.1", "certificate_revoked", "aa"))
        #expect(note(&aggregator, "10.0.0.1", "certificate_revoked", "bb"))
        let summaries = aggregator.drain()
        #expect(summaries == [.init(key: .init(address: "10.0.0.1", reason: "not_tls"), event: "tls_refused", count: 99)])
        #expect(aggregator.drain().isEmpty)
        #expect(note(&aggregator, "10.0.0.1", "not_tls"))
    }

    @Test("Beyond 1,000 keys an interval, refusals are counted per reason under '*': the records an interval writes are bounded")
    func boundedKeys() {
        var aggregator = RefusalAggregator()
        var written = 0
        for index in 0..<50_000 {
            if aggregator.note(address: "10.\(index / 65536).\(index / 256 % 256).\(index % 256)", reason: "not_tls",
                               fingerprint: nil, event: "tls_refused") {
                written += 1
            }
        }
        #expect(written == RefusalAggregator.maximumKeys + 1)
        let summaries = aggregator.drain()
        #expect(summaries.count == 1)
        #expect(summaries.first?.key.address == "*" && summaries.first?.count == 50_000 - RefusalAggregator.maximumKeys - 1)
    }
}

@Suite("Connection limits at the gateway")
struct ConnectionLimitGatewayTests {
    /// A plain TCP connection to the gateway (no TLS).
    func connect(_ gw: TestGateway) async throws -> any Channel {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: gw.port).get()
    }

    @Test("Past limits.max_connections a connection is closed at accept, before TLS, counted and audited")
    func maxConnections() async throws {
        try await withGateway(adjust: {
            $0.limits.maxConnections = 2
            // The two plain TCP connections never start TLS: on a loaded machine the default 10 s handshake
            // deadline could close them before the test does.
            $0.handshakeTimeout = 600
        }) { gw in
            let first = try await connect(gw)
            let second = try await connect(gw)
            let third = try await connect(gw)
            // The gateway closes it without a byte: no handshake is spent on it.
            try await third.closeFuture.get()
            let refusal = try #require(await gw.auditRecord { $0.event == "connection_refused" })
            #expect(refusal.reason == "max_connections")
            #expect(refusal.detail?.contains("limits.max_connections") == true)
            #expect(refusal.peer?.hasPrefix("127.0.0.1:") == true)
            let metrics = String(decoding: gw.gateway.metricsExposition(), as: UTF8.self)
            #expect(metrics.contains(#"portcullis_refusals_total{reason="max_connections"} 1"#), "\(metrics)")
            #expect(metrics.contains("portcullis_connections_open 2"), "\(metrics)")
            try await first.close()
            // Once one closes, a real client is served again.
            var admitted = false
            // Generous: a handshake on a saturated machine can take tens of seconds, and each try is one.
            let deadline = Date().addingTimeInterval(300)
            while !admitted, Date() < deadline {
                if case .upgraded(let session) = try await gw.connect(gw.device) {
                    admitted = true
                    await session.close()
                } else {
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            #expect(admitted)
            try await second.close()
        }
    }

    @Test("Past limits.per_address.connections, and over its new_per_second, one address is refused; others are not")
    func perAddress() async throws {
        // Plain TCP connections that never start TLS: the handshake deadline must not close them first.
        try await withGateway(adjust: {
            $0.limits.perAddressConnections = 1
            $0.handshakeTimeout = 600
        }) { gw in
            let held = try await connect(gw)
            let refused = try await connect(gw)
            try await refused.closeFuture.get()
            #expect(try await gw.auditRecord { $0.reason == "per_address_connections" } != nil)
            #expect(held.isActive, "the connection within the limit was closed")
            try await held.close()
        }
        try await withGateway(adjust: {
            $0.limits.perAddressNewPerSecond = 1
            $0.handshakeTimeout = 600
        }) { gw in
            // 20 connections at once would take 19 s to pass at 1 a second: some are refused however slow the
            // machine (made one after another, each could take a second on a saturated one).
            let channels = try await withThrowingTaskGroup(of: (any Channel).self) { group in
                for _ in 0..<20 { group.addTask { try await connect(gw) } }
                return try await group.reduce(into: [any Channel]()) { $0.append($1) }
            }
            let refusal = try #require(await gw.auditRecord { $0.event == "connection_refused" })
            #expect(refusal.reason == "per_address_rate")
            for channel in channels { try? await channel.close() }
        }
    }

    @Test("A flood of refused handshakes writes one record per address and reason, and one with the count")
    func aggregatedAudit() async throws {
        let gw = try await TestGateway.start(adjust: { $0.limits.refusalAuditInterval = 600 })
        for _ in 0..<10 {
            let channel = try await connect(gw)
            var request = channel.allocator.buffer(capacity: 64)
            request.writeString("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try await channel.writeAndFlush(request)
            try await channel.closeFuture.get()
        }
        // Every refusal is counted at once; only the first is written, the rest when the interval ends or at shutdown
        // (the shutdown below shows that no other record was pending).
        let counted = #"portcullis_refusals_total{reason="not_tls"} 10"#
        #expect(try await gw.auditRecord { $0.event == "tls_refused" } != nil)
        #expect(try await eventually { String(decoding: gw.gateway.metricsExposition(), as: UTF8.self).contains(counted) })
        #expect(try gw.auditRecords().filter { $0.event == "tls_refused" }.count == 1)
        await gw.gateway.shutdown()
        let records = try gw.auditRecords().filter { $0.event == "tls_refused" }
        #expect(records.count == 2)
        #expect(records.first?.reason == "not_tls" && records.first?.count == nil)
        #expect(records.last?.reason == "not_tls" && records.last?.count == 9 && records.last?.peer == "127.0.0.1")
        await gw.stop()
    }
}
