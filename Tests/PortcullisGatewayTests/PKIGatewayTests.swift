import Foundation
import Logging
import PortcullisAudit
import PortcullisConfig
import PortcullisGateway
import PortcullisPKI
import Testing

/// The PKI's output in front of the real gateway: a chain through an issuing CA, a device certificate signed
/// from an OpenSSL CSR, and its revocation taking effect at the next start.
@Suite("PKI-issued certificates at the gateway")
struct PKIGatewayTests {
    static func startGateway(pki: PKIDirectory, root: String) async throws -> Gateway {
        var configuration = GatewayConfiguration(
            listenHost: "127.0.0.1", listenPort: 0, tls: GatewayConfiguration.tls(fromPKI: pki.path),
            routes: [.init(path: "/v1/echo", kind: .echo)], policiesDirectory: "\(root)/policies",
            auditDirectory: "\(root)/audit")
        // openssl and gnutls-cli start as processes: on a loaded machine their handshakes outlast the default.
        configuration.handshakeTimeout = upstreamHandshakeTimeout
        let gateway = try Gateway(configuration: configuration, logger: Logger(label: "test"), threads: 1)
        try await gateway.start()
        return gateway
    }

    static func openssl(_ port: Int, pki: PKIDirectory, certificate: String, key: String, extra: [String] = []) async throws
        -> String
    {
        try await ExternalTool("openssl").run(
            ["s_client", "-connect", "127.0.0.1:\(port)", "-servername", "localhost", "-CAfile", pki.caCertificatePath,
             "-verify_return_error", "-quiet", "-no_ign_eof", "-cert", certificate, "-key", key] + extra,
            input: upgradeRequest()
        ).all
    }

    @Test("A device key that never left the device (OpenSSL CSR) is admitted through an issuing CA, then refused once revoked")
    func csrDeviceThroughIntermediateThenRevoked() async throws {
        let root = NSTemporaryDirectory() + "portcullis-pkigw-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: "\(root)/policies", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        try "identity_mapping:\n  - source: cn\nrules:\n  - {name: devices, identities: [csr-device, chain-device], routes: [/v1/echo], allow_missing_origin: true}\n"
            .write(toFile: "\(root)/policies/p.yaml", atomically: true, encoding: .utf8)
        let pki = PKIDirectory(path: "\(root)/pki")
        try pki.initialize(name: "Fleet CA", intermediate: true)
        try pki.issue(.init(name: "server", profile: .server(dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"])))
        try pki.issue(.init(name: "chain-device", profile: .client()))

        let made = try await ExternalTool("openssl").run(
            ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             "\(root)/device.key", "-subj", "/CN=csr-device", "-out", "\(root)/device.csr"], holdInput: 0)
        #expect(made.status == 0, "\(made.all)")
        try pki.sign(requestPEM: try String(contentsOfFile: "\(root)/device.csr", encoding: .utf8), name: "csr-device", profile: .client())

        let gateway = try await Self.startGateway(pki: pki, root: root)
        let port = try #require(gateway.port)
        // The gateway presents server + issuing CA; the client verifies up to the root.
        let admitted = try await Self.openssl(port, pki: pki, certificate: pki.certificatePath("csr-device"), key: "\(root)/device.key")
        #expect(admitted.contains("101 Switching Protocols"), "\(admitted)")
        // A device presenting its chain file (leaf + issuing CA) with GnuTLS.
        let gnutls = try await ExternalTool("gnutls-cli").run(
            ["--x509cafile", pki.caCertificatePath, "--x509certfile", pki.chainPath("chain-device"), "--x509keyfile",
             pki.keyPath("chain-device"), "-p", "\(port)", "127.0.0.1"], input: upgradeRequest())
        #expect(gnutls.output.contains("101 Switching Protocols"), "\(gnutls.all)")
        await gateway.shutdown()

        try pki.revoke(name: "csr-device", serial: nil, reason: .keyCompromise)
        let restarted = try await Self.startGateway(pki: pki, root: root)
        let refused = try await Self.openssl(try #require(restarted.port), pki: pki, certificate: pki.certificatePath("csr-device"), key: "\(root)/device.key")
        #expect(!refused.contains("101"), "\(refused)")
        let stillFine = try await Self.openssl(try #require(restarted.port), pki: pki, certificate: pki.chainPath("chain-device"), key: pki.keyPath("chain-device"))
        #expect(stillFine.contains("101 Switching Protocols"))
        restarted.auditLog.flush()
        let records = try AuditLog.read(path: restarted.auditLog.path)
        let refusal = try #require(records.last { $0.event == "tls_refused" })
        #expect(refusal.reason == "certificate_revoked")
        #expect(refusal.serial == (try pki.loadInventory().entries.first { $0.name == "csr-device" })?.serial)
        await restarted.shutdown()
    }
}
