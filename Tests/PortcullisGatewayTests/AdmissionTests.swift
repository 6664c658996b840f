import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import PortcullisAudit
import PortcullisClient
@testable import PortcullisGateway
import Testing

/// Admission end to end with the project's own NIO client: each refusal is checked on the wire and in the
/// audit log with its reason code.
@Suite("Admission through a real gateway")
struct AdmissionTests {
    @Test("A valid certificate from an allowed Origin is upgraded, echoed, and audited open and closed")
    func validCertificateAndOriginAreAdmitted() async throws {
        try await withGateway { gw in
            let outcome = try await gw.connect(gw.device, origins: ["https://console.example.test"])
            let connection = try #require(outcome.connection)
            try await connection.send(text: "hello")
            #expect(await connection.receive() == .text("hello"))
            try await connection.send(binary: [0, 1, 2, 255])
            #expect(await connection.receive() == .binary([0, 1, 2, 255]))
            await connection.close(code: 1000)

            let opened = try #require(await gw.auditRecord { $0.event == "session_opened" })
            #expect(opened.decision == "allow")
            #expect(opened.identity == "demo-device")
            #expect(opened.rule == "devices-echo")
            #expect(opened.origin == "https://console.example.test")
            #expect(opened.path == "/v1/echo")
            #expect(opened.serial == hex(gw.deviceCertificate.serialNumber.bytes))
            #expect(opened.fingerprint?.count == 64)
            #expect(opened.peer?.hasPrefix("127.0.0.1:") == true)
            let closed = try #require(await gw.auditRecord { $0.event == "session_closed" })
            #expect(closed.closeCode == 1000)
            #expect(closed.origin == "https://console.example.test" && closed.identity == "demo-device")
            #expect(closed.session == opened.session)
            #expect(closed.messagesIn == 2 && closed.messagesOut == 2)
            #expect(closed.bytesIn == 9 && closed.bytesOut == 9)
            #expect(closed.durationMs != nil)
        }
    }

    @Test("A SAN URI maps to an identity through the mapping rule")
    func sanURIMapsToIdentity() async throws {
        try await withGateway { gw in
            let outcome = try await gw.connect(gw.spiffeDevice)
            #expect(outcome.status == 101)
            let opened = try #require(await gw.auditRecord { $0.event == "session_opened" })
            #expect(opened.identity == "device-42")
            #expect(opened.sans == ["spiffe://example.test/device/42"])
            await outcome.connection?.close()
        }
    }

    @Test(
        "Certificates that fail verification are refused in the TLS handshake with a precise reason",
        arguments: [
            ("none", "no_client_certificate"),
            ("foreign", "certificate_untrusted"),
            ("expired", "certificate_expired"),
            ("noClientAuth", "certificate_missing_client_auth"),
            ("revoked", "certificate_revoked"),
        ])
    func badCertificatesAreRefusedDuringTLS(which: String, reason: String) async throws {
        try await withGateway { gw in
            let credential: TestPKI.Credential? = switch which {
            case "foreign": gw.foreign
            case "expired": gw.expired
            case "noClientAuth": gw.noClientAuth
            case "revoked": gw.revoked
            default: nil
            }
            // TLS 1.3 clients finish their side before the server checks the certificate, so the refusal shows
            // as an alert or a closed connection instead of any HTTP answer.
            await #expect(throws: (any Error).self) {
                _ = try await gw.connect(credential)
            }
            let record = try #require(await gw.auditRecord { $0.event == "tls_refused" })
            #expect(record.reason == reason)
            #expect(record.decision == "deny")
            #expect(record.detail?.isEmpty == false)
            if which != "none" { #expect(record.serial != nil && record.subject != nil) }
            #expect(try gw.auditRecords().contains { $0.event == "session_opened" } == false)
        }
    }

    @Test(
        "HTTP-stage refusals answer the right status and a short reason, and are audited",
        arguments: [
            ("console", ["https://evil.example"], "/v1/echo", 403, "origin_not_allowed"),
            ("device", ["https://other.example.test"], "/v1/echo", 403, "origin_not_allowed"),
            ("console", [], "/v1/echo", 403, "origin_required"),
            ("stranger", [], "/v1/echo", 403, "no_matching_rule"),
            ("device", [], "/v1/nowhere", 404, "unknown_route"),
            ("device", ["https://console.example.test", "https://console.example.test"], "/v1/echo", 400,
             "multiple_origin_headers"),
        ])
    func httpRefusals(who: String, origins: [String], path: String, status: Int, reason: String) async throws {
        try await withGateway { gw in
            let credential = switch who {
            case "console": gw.console
            case "stranger": gw.stranger
            default: gw.device
            }
            let outcome = try await gw.connect(credential, path: path, origins: origins)
            guard case .refused(let answered, let headers, let body) = outcome else {
                Issue.record("expected a refusal, got an upgrade")
                return
            }
            #expect(answered == status)
            #expect(!body.isEmpty && body.count < 80)
            #expect(!body.contains("/tmp") && !body.contains("policies"))
            #expect(headers.contains { $0.0.lowercased() == "connection" && $0.1 == "close" })
            let record = try #require(await gw.auditRecord { $0.event == "http_refused" })
            #expect(record.reason == reason)
            #expect(record.status == status)
            #expect(record.path == path)
        }
    }

    @Test("A device reconnecting with the same certificate is verified from the cache, still with its facts")
    func reconnectingDeviceIsVerifiedFromTheCache() async throws {
        try await withGateway { gw in
            #expect(gw.gateway.runtime.verifiedChains.count == 0)
            for _ in 0..<3 {
                let outcome = try await gw.connect(gw.device)
                #expect(outcome.status == 101)
                await outcome.connection?.close()
            }
            #expect(gw.gateway.runtime.verifiedChains.count == 1)
            // A refused certificate is never remembered.
            await #expect(throws: (any Error).self) { _ = try await gw.connect(gw.expired) }
            _ = try #require(await gw.auditRecord { $0.event == "tls_refused" })
            #expect(gw.gateway.runtime.verifiedChains.count == 1)
            let opened = try gw.auditRecords().filter { $0.event == "session_opened" }
            #expect(opened.count == 3)
            #expect(Set(opened.map(\.fingerprint)).count == 1)
            #expect(opened.allSatisfy { $0.identity == "demo-device" && $0.serial == hex(gw.deviceCertificate.serialNumber.bytes) })
        }
    }

    @Test("A device without an Origin header is admitted where its rule allows it")
    func missingOriginAllowedForDevices() async throws {
        try await withGateway { gw in
            let outcome = try await gw.connect(gw.device)
            let connection = try #require(outcome.connection)
            try await connection.send(text: "no origin")
            #expect(await connection.receive() == .text("no origin"))
            await connection.close()
            let opened = try #require(await gw.auditRecord { $0.event == "session_opened" })
            #expect(opened.origin == nil)
            #expect(opened.rule == "devices-echo")
        }
    }

    @Test(
        "Malformed upgrade requests are refused before any policy is consulted",
        arguments: [
            ("GET", [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13")], 400,
             "invalid_websocket_key"),
            ("GET", [], 426, "upgrade_required"),
            ("POST", [("Upgrade", "websocket"), ("Connection", "Upgrade")], 405, "method_not_allowed"),
            ("GET", [("Upgrade", "websocket")], 400, "invalid_upgrade_request"),
            ("GET", [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "8")], 426,
             "unsupported_websocket_version"),
            ("GET", [("X-Padding", String(repeating: "a", count: 9000))], 431, "headers_too_large"),
            // Over the HTTP parser's own limit too (80 KiB by default, which answered 400 before the gateway set it
            // to max_header_bytes): still 431.
            ("GET", (0..<120).map { ("X-Padding-\($0)", String(repeating: "a", count: 1000)) }, 431, "headers_too_large"),
        ])
    func malformedRequests(method: String, headers: [(String, String)], status: Int, reason: String) async throws {
        try await withGateway { gw in
            var head = HTTPRequestHead(version: .http1_1, method: HTTPMethod(rawValue: method), uri: "/v1/echo")
            head.headers.add(name: "Host", value: "localhost")
            for (name, value) in headers { head.headers.add(name: name, value: value) }
            if reason == "unsupported_websocket_version" || reason == "invalid_upgrade_request" {
                head.headers.add(name: "Sec-WebSocket-Key", value: "dGhlIHNhbXBsZSBub25jZQ==")
            }
            if reason == "invalid_upgrade_request" { head.headers.add(name: "Sec-WebSocket-Version", value: "13") }
            let outcome = try await GatewayClient.send(request: head, port: gw.port, tls: gw.tls(gw.device))
            #expect(outcome.status == status)
            if case .refused(_, let answeredHeaders, _) = outcome, status == 426, reason == "upgrade_required" {
                #expect(answeredHeaders.contains { $0.0 == "Upgrade" && $0.1 == "websocket" })
            }
            let record = try #require(await gw.auditRecord { $0.event == "http_refused" })
            #expect(record.reason == reason)
            #expect(record.identity == nil)
        }
    }

    @Test("An otherwise valid upgrade without a Host header is refused with 400 (RFC 9112 §3.2)")
    func missingHost() async throws {
        try await withGateway { gw in
            var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/echo")
            for (name, value) in [
                ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
            ] {
                head.headers.add(name: name, value: value)
            }
            let outcome = try await GatewayClient.send(request: head, port: gw.port, tls: gw.tls(gw.device))
            #expect(outcome.status == 400)
            if case .refused(_, _, let body) = outcome { #expect(body.contains("Host")) }
            let record = try #require(await gw.auditRecord { $0.event == "http_refused" })
            #expect(record.reason == "invalid_host_header")
            #expect(record.status == 400)
        }
    }

    @Test("A client that stalls before TLS or before the upgrade is cut off at the handshake deadline")
    func stalledClientsAreDisconnected() async throws {
        // 30 s: the second client's TLS handshake must end before it, and a full run beside two builds on 2 cores
        // stretched one past the default 10 s. Both clients stall at once, so the test waits for the deadline once.
        try await withGateway(handshakeTimeout: 30) { gw in
            // Stalls before sending anything: the TLS handshake never starts.
            let silent = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connect(host: "127.0.0.1", port: gw.port).get()
            // Completes TLS, then never sends the upgrade request.
            let stalled = try await openTLSOnly(gw)
            try await silent.closeFuture.get()
            try await stalled.closeFuture.get()
            let refusals = try await gw.auditRecords(atLeast: 2) { $0.reason == "handshake_timeout" }
            #expect(refusals.map(\.event).sorted() == ["http_refused", "tls_refused"])
            let second = try #require(refusals.first { $0.event == "http_refused" })
            #expect(second.serial != nil)
        }
    }
}

/// A TLS connection to the gateway that sends nothing after the handshake.
func openTLSOnly(_ gw: TestGateway) async throws -> any Channel {
    var configuration = TLSConfiguration.makeClientConfiguration()
    configuration.trustRoots = .file(gw.pki.caPath)
    configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(gw.device.certificate).map { .certificate($0) }
    configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: gw.device.key, format: .pem))
    let context = try NIOSSLContext(configuration: configuration)
    return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    NIOSSLClientHandler(context: context, serverHostname: "localhost"))
            }
        }
        .connect(host: "127.0.0.1", port: gw.port).get()
}

func hex<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
    bytes.map { String(format: "%02x", $0) }.joined()
}
