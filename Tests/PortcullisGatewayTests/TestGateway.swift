import Foundation
import Logging
import NIOCore
import NIOPosix
import PortcullisAudit
import PortcullisClient
import PortcullisConfig
import PortcullisGateway
import PortcullisPKI
import Testing
import X509

/// The handshake deadline of test gateways with an upstream route, or driven by third-party clients. Its
/// connection to the backend starts as a Swift task, and in the test process the concurrency pool (one thread per
/// core) is shared with every test running at once: CPU-bound ones held it long enough in a full run on 2 cores
/// for the default 30 s to pass. An openssl s_client handshake overran 30 s the same way (a `handshake_timeout`
/// where `certificate_revoked` was expected).
let upstreamHandshakeTimeout: Double = 300

/// The policy the integration tests run under.
let testPolicy = """
    identity_mapping:
      - source: san_uri
        match: "spiffe://example.test/device/*"
        identity: "device-{*}"
      - source: cn

    rules:
      - name: devices-echo
        identities: [demo-device, device-42, expired-device, no-client-auth, revoked-device, foreign-device]
        routes: [/v1/echo, /v1/upstream]
        origins: ["https://console.example.test"]
        allow_missing_origin: true
      - name: console-echo
        identities: [console-user]
        routes: [/v1/echo]
        origins: ["https://console.example.test"]
      - name: devices-messages
        identities: [demo-device, device-42]
        routes: [/v1/messages]
        allow_missing_origin: true
        publish: ["devices/{identity}/telemetry"]
        subscribe: ["devices/{identity}/commands/#"]
      - name: operator-messages
        identities: [operator]
        routes: [/v1/messages]
        allow_missing_origin: true
        publish: ["devices/+/commands/#"]
        subscribe: ["devices/+/telemetry"]
      - name: operator-no-vault
        effect: deny
        identities: [operator]
        routes: [/v1/messages]
        publish: ["devices/vault/#"]
        subscribe: ["devices/vault/#"]
      - name: everyone-fanout
        identities: ["*"]
        routes: [/v1/messages]
        allow_missing_origin: true
        publish: ["fanout/#"]
        subscribe: ["fanout/#"]
      - name: limited
        identities: [limited]
        routes: [/v1/messages]
        allow_missing_origin: true
        publish: ["load/#"]
        subscribe: ["load/#"]
        limits: {sessions: 1, messages_per_second: 5, subscriptions: 2, max_message_bytes: 1024, max_violations: 3}
      - name: strict
        identities: [strict]
        routes: [/v1/messages]
        allow_missing_origin: true
        publish: ["load/#"]
        limits: {messages_per_second: 2, on_rate_limit: close}
    """

/// A real gateway on 127.0.0.1, an ephemeral port, with a PKI, policies and audit log in a temporary directory.
final class TestGateway: @unchecked Sendable {
    let pki: TestPKI
    let gateway: Gateway
    let port: Int
    let device: TestPKI.Credential
    let deviceCertificate: Certificate
    let console: TestPKI.Credential
    let stranger: TestPKI.Credential
    let expired: TestPKI.Credential
    let noClientAuth: TestPKI.Credential
    let revoked: TestPKI.Credential
    let foreign: TestPKI.Credential
    let spiffeDevice: TestPKI.Credential
    let operatorCredential: TestPKI.Credential
    let limited: TestPKI.Credential
    let strict: TestPKI.Credential
    var auditPath: String { gateway.auditLog.path }

    /// The handshake deadline is generous by default (``upstreamHandshakeTimeout``): the whole suite shares two
    /// cores, and beside a build a test's handshakes in sequence outlasted 30 s. Tests of the deadline itself
    /// pass a short one.
    static func start(
        handshakeTimeout: Double = upstreamHandshakeTimeout, minimumTLS: GatewayConfiguration.TLSVersion = .v1_2,
        adjust: (inout GatewayConfiguration) -> Void = { _ in }
    ) async throws -> TestGateway {
        try await TestGateway(handshakeTimeout: handshakeTimeout, minimumTLS: minimumTLS, adjust: adjust)
    }

    private init(
        handshakeTimeout: Double, minimumTLS: GatewayConfiguration.TLSVersion, adjust: (inout GatewayConfiguration) -> Void
    ) async throws {
        pki = try TestPKI()
        (device, deviceCertificate) = try pki.client("demo-device")
        (console, _) = try pki.client("console-user")
        (stranger, _) = try pki.client("stranger")
        (spiffeDevice, _) = try pki.client("spiffe-device", profile: .client(uris: ["spiffe://example.test/device/42"]))
        (expired, _) = try pki.client(
            "expired-device", notValidBefore: Date().addingTimeInterval(-10 * 86400),
            notValidAfter: Date().addingTimeInterval(-86400))
        (noClientAuth, _) = try pki.client("no-client-auth", profile: .server(dnsNames: ["no-client-auth"], ipAddresses: []))
        let revokedCertificate: Certificate
        (revoked, revokedCertificate) = try pki.client("revoked-device")
        (foreign, _) = try pki.client("foreign-device", by: try TestPKI.foreignAuthority())
        (operatorCredential, _) = try pki.client("operator")
        (limited, _) = try pki.client("limited")
        (strict, _) = try pki.client("strict")
        try pki.revoke([revokedCertificate])

        let policies = "\(pki.directory)/policies"
        try FileManager.default.createDirectory(atPath: policies, withIntermediateDirectories: true)
        try testPolicy.write(toFile: "\(policies)/test.yaml", atomically: true, encoding: .utf8)
        var configuration = GatewayConfiguration(
            listenHost: "127.0.0.1", listenPort: 0,
            tls: GatewayConfiguration.tls(fromPKI: pki.pki.path, minimumVersion: minimumTLS),
            allowedOrigins: ["https://console.example.test", "https://other.example.test"],
            routes: [.init(path: "/v1/echo", kind: .echo), .init(path: "/v1/messages", kind: .broker)],
            policiesDirectory: policies,
            auditDirectory: "\(pki.directory)/audit",
            handshakeTimeout: handshakeTimeout)
        configuration.maxMessageBytes = 64 * 1024
        // Every test client comes from 127.0.0.1, and many tests refuse it on purpose: the connection limits
        // and the aggregation of refusals have tests of their own.
        configuration.limits.perAddressConnections = nil
        configuration.limits.perAddressNewPerSecond = nil
        configuration.limits.refusalAuditInterval = 0
        adjust(&configuration)
        gateway = try Gateway(configuration: configuration, logger: Logger(label: "test"), threads: 1)
        port = try await gateway.start().port!
    }

    func tls(_ credential: TestPKI.Credential?) -> GatewayClient.TLSOptions {
        GatewayClient.TLSOptions(
            certificateChain: credential?.certificate, privateKey: credential?.key, trustRoots: pki.caPath)
    }

    /// Connects with our own client to `/v1/echo` (or `path`).
    func connect(
        _ credential: TestPKI.Credential?, path: String = "/v1/echo", origins: [String] = []
    ) async throws -> GatewayClient.Outcome {
        try await GatewayClient.connect(port: port, path: path, origins: origins, tls: tls(credential))
    }

    /// A publish/subscribe session on `/v1/messages`.
    func broker(_ credential: TestPKI.Credential) async throws -> BrokerSession {
        try await BrokerSession.connect(port: port, tls: tls(credential))
    }

    /// Waits (up to 120 s: a loaded machine is slow, never wrong) for an audit record matching `predicate`; records are written off the event loop.
    func auditRecord(
        timeout: Double = 120, where predicate: (AuditRecord) -> Bool
    ) async throws -> AuditRecord? {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            gateway.auditLog.flush()
            if let record = try AuditLog.read(path: auditPath).first(where: predicate) { return record }
            try await Task.sleep(for: .milliseconds(20))
        } while Date() < deadline
        return nil
    }

    /// Waits (up to 120 s) until at least `count` records match `predicate`, and returns every match: the
    /// gateway audits a TLS refusal when its handler sees the error, which can be after the client has exited.
    func auditRecords(
        atLeast count: Int, timeout: Double = 120, where predicate: (AuditRecord) -> Bool
    ) async throws -> [AuditRecord] {
        let deadline = Date().addingTimeInterval(timeout)
        var matching: [AuditRecord]
        repeat {
            matching = try auditRecords().filter(predicate)
            if matching.count >= count { break }
            try await Task.sleep(for: .milliseconds(20))
        } while Date() < deadline
        return matching
    }

    func auditRecords() throws -> [AuditRecord] {
        gateway.auditLog.flush()
        return try AuditLog.read(path: auditPath)
    }

    func stop() async {
        await gateway.shutdown()
        pki.remove()
    }
}

/// Runs `body` against a fresh gateway and always shuts it down.
func withGateway(
    handshakeTimeout: Double = upstreamHandshakeTimeout, minimumTLS: GatewayConfiguration.TLSVersion = .v1_2,
    adjust: (inout GatewayConfiguration) -> Void = { _ in },
    _ body: (TestGateway) async throws -> Void
) async throws {
    let gateway = try await TestGateway.start(handshakeTimeout: handshakeTimeout, minimumTLS: minimumTLS, adjust: adjust)
    do {
        try await body(gateway)
    } catch {
        await gateway.stop()
        throw error
    }
    await gateway.stop()
}
