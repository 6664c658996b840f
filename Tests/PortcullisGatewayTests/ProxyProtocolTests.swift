import Foundation
import NIOCore
import NIOPosix
import PortcullisAdmission
import PortcullisAudit
import PortcullisClient
import PortcullisConfig
import PortcullisTestSupport
import Testing

@testable import PortcullisGateway

/// PROXY protocol v2 at the gateway: raw headers from chosen loopback addresses (127.0.0.2 is the trusted
/// balancer; anything else is not), and HAProxy itself in front with `send-proxy-v2`.
@Suite("PROXY protocol behind a load balancer")
struct ProxyProtocolTests {
    static let balancer = "127.0.0.2"

    static func trustingBalancer(_ configuration: inout GatewayConfiguration) {
        configuration.proxyProtocol = .init(trusted: [try! AddressRange.parse(balancer).get()])
    }

    /// Connects from `source`, sends `bytes`, and waits (generously) for the gateway to close the connection.
    /// Returns whether it did.
    static func sendRaw(_ bytes: [UInt8], from source: String, to port: Int) async throws -> Bool {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(to: try SocketAddress(ipAddress: source, port: 0))
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(channel.allocator.buffer(bytes: bytes))
        let closed = try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await channel.closeFuture.get()
                return true
            }
            group.addTask {
                try await Task.sleep(for: .seconds(60))
                return false
            }
            let first = try await group.next() ?? false
            group.cancelAll()
            return first
        }
        if !closed { try? await channel.close() }
        return closed
    }

    static func header(_ source: [UInt8], port: UInt16, command: UInt8 = 1) -> [UInt8] {
        ProxyHeader.signature + [0x20 | command, 0x11, 0, 12] + source + [127, 0, 0, 1]
            + [UInt8(port >> 8), UInt8(port & 0xFF), 0x20, 0xFB]
    }

    @Test("Bad headers from the trusted balancer, and any header from elsewhere, are refused before TLS with their reason")
    func refusals() async throws {
        try await withGateway(adjust: Self.trustingBalancer) { gw in
            let cases: [(bytes: [UInt8], source: String, reason: String)] = [
                (ProxyHeader.signature + [0x21, 0x11, 0x08, 0x01], Self.balancer, "proxy_header_oversized"),
                (ProxyHeader.signature + [0x31, 0x11, 0, 12], Self.balancer, "proxy_header_malformed"),
                (Array("PROXY TCP4 192.0.2.7 127.0.0.1 5000 443\r\n".utf8), Self.balancer, "proxy_header_unsupported"),
                ([0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00], Self.balancer, "proxy_header_missing"),
                (Self.header([192, 0, 2, 7], port: 5000), "127.0.0.3", "proxy_header_untrusted"),
            ]
            for (bytes, source, reason) in cases {
                #expect(try await Self.sendRaw(bytes, from: source, to: gw.port), "\(reason): the gateway closes")
                let record = try #require(await gw.auditRecord { $0.reason == reason }, "\(reason) audited")
                #expect(record.event == "connection_refused" && record.decision == "deny")
                #expect(record.peer?.hasPrefix("\(source):") == true && record.proxy == nil, "\(record)")
            }
            let untrusted = try #require(await gw.auditRecord { $0.reason == "proxy_header_untrusted" })
            #expect(untrusted.detail?.contains("proxy_protocol.trusted (127.0.0.2)") == true, "\(untrusted.detail ?? "")")
            let metrics = String(decoding: gw.gateway.metricsExposition(), as: UTF8.self)
            for (_, _, reason) in cases {
                #expect(metrics.contains(#"portcullis_refusals_total{reason="\#(reason)"} 1"#), "\(reason)")
            }
            // A direct client (127.0.0.1, not a balancer) without a header is served as before.
            guard case .upgraded(let session) = try await gw.connect(gw.device) else {
                Issue.record("a direct device was not admitted")
                return
            }
            await session.close()
            let opened = try #require(await gw.auditRecord { $0.event == "session_opened" })
            #expect(opened.peer?.hasPrefix("127.0.0.1:") == true && opened.proxy == nil)
        }
    }

    @Test("A LOCAL header (a health check) is counted, and the connection goes on as the balancer's own")
    func localHeader() async throws {
        try await withGateway(adjust: Self.trustingBalancer) { gw in
            let local = ProxyHeader.signature + [0x20, 0x00, 0, 0]
            // Then bytes that are no TLS: the gateway refuses them as it would from anyone.
            #expect(try await Self.sendRaw(local + Array("GET / HTTP/1.1\r\n\r\n".utf8), from: Self.balancer, to: gw.port))
            let record = try #require(await gw.auditRecord { $0.event == "tls_refused" })
            #expect(record.peer?.hasPrefix("127.0.0.2:") == true && record.proxy == nil)
            let metrics = String(decoding: gw.gateway.metricsExposition(), as: UTF8.self)
            #expect(metrics.contains(#"portcullis_proxy_headers_total{command="LOCAL"} 1"#), "\(metrics)")
        }
    }

    @Test("Through HAProxy (send-proxy-v2) the carried client is the peer of every record, and its address is what per-address limits count")
    func throughHAProxy() async throws {
        try await withGateway(adjust: {
            Self.trustingBalancer(&$0)
            $0.limits.perAddressConnections = 1
        }) { gw in
            let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("haproxy-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            let haproxy = try await HAProxy.start(in: scratch, source: Self.balancer, gateways: [gw.port])
            defer { haproxy.stop() }

            func connect(from client: String) async throws -> GatewayClient.Outcome {
                try await GatewayClient.connect(
                    port: haproxy.port, path: "/v1/echo", tls: gw.tls(gw.device),
                    localAddress: try SocketAddress(ipAddress: client, port: 0))
            }
            guard case .upgraded(let session) = try await connect(from: "127.0.0.7") else {
                Issue.record("the device was not admitted through HAProxy")
                return
            }
            try await session.send(text: "through the balancer")
            let echoed = await session.receive()
            #expect(echoed.map { "\($0)" }?.contains("through the balancer") == true, "\(String(describing: echoed))")
            let opened = try #require(await gw.auditRecord { $0.event == "session_opened" })
            #expect(opened.peer?.hasPrefix("127.0.0.7:") == true, "\(opened.peer ?? "")")
            #expect(opened.proxy?.hasPrefix("127.0.0.2:") == true, "\(opened.proxy ?? "")")
            #expect(opened.identity == "demo-device")

            // One connection per client address: a second from 127.0.0.7 is refused, one from 127.0.0.8 is not,
            // though all three come from the balancer's one address.
            // Refused before TLS: the client sees the connection close during its handshake.
            let second = try? await connect(from: "127.0.0.7")
            if case .upgraded(let extra) = second {
                Issue.record("a second session from 127.0.0.7 was admitted")
                await extra.close()
            }
            let refusal = try #require(await gw.auditRecord { $0.reason == "per_address_connections" })
            #expect(refusal.peer?.hasPrefix("127.0.0.7:") == true && refusal.proxy?.hasPrefix("127.0.0.2:") == true)
            guard case .upgraded(let other) = try await connect(from: "127.0.0.8") else {
                Issue.record("another client address was refused")
                return
            }
            await other.close()
            await session.close()
            let closed = try #require(await gw.auditRecord { $0.event == "session_closed" })
            #expect(closed.peer?.hasPrefix("127.0.0.") == true && closed.proxy?.hasPrefix("127.0.0.2:") == true)
            let metrics = String(decoding: gw.gateway.metricsExposition(), as: UTF8.self)
            #expect(metrics.contains(#"portcullis_proxy_headers_total{command="PROXY"}"#), "\(metrics)")
        }
    }
}
