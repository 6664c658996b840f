import Foundation
import PortcullisConfig
import PortcullisTestSupport
import Testing

@testable import PortcullisGateway

/// The gateways' sign-in to NATS with client certificates, as docs/cluster.md configures it: a nats-server that
/// requires TLS, verifies client certificates against the gateways' CA and maps each certificate to a user
/// (`verify_and_map`); the NATS side has a PKI of its own, apart from the devices'.
@Suite("Mutual TLS to NATS (verify_and_map)", .serialized)
struct NATSMutualTLSTests {
    /// nats-server with TLS required and `CN=nats-gateway` the only user, granted the prefix.
    struct SecureNATS {
        let pki: TestPKI
        let port: Int
        let process: ChildProcess
        let directory: String

        static func start() async throws -> SecureNATS {
            let pki = try TestPKI()
            let directory = pki.directory
            guard let executable = installedProgram("nats-server") else {
                throw StartFailure(description: "nats-server is not installed; scripts/test installs it")
            }
            for _ in 1...3 {
                let port = try freeLoopbackPort()
                try """
                    listen: "127.0.0.1:\(port)"
                    tls {
                      cert_file: "\(pki.pki.certificatePath("server"))"
                      key_file: "\(pki.pki.keyPath("server"))"
                      ca_file: "\(pki.caPath)"
                      verify_and_map: true
                      timeout: 60
                    }
                    authorization {
                      users = [
                        {user: "CN=nats-gateway", permissions: {publish: "portcullis.>", subscribe: "portcullis.>"}}
                      ]
                    }

                    """.write(toFile: "\(directory)/nats.conf", atomically: true, encoding: .utf8)
                if let process = try await startListening(
                    executable, ["-c", "\(directory)/nats.conf"], port: port, log: "\(directory)/nats.log")
                {
                    return SecureNATS(pki: pki, port: port, process: process, directory: directory)
                }
            }
            throw StartFailure(description: "nats-server did not start; its log: \(directory)/nats.log")
        }

        /// The `nats:` section of a gateway signing in with `certificate` (nil: none), trusting `ca`.
        func settings(certificate: TestPKI.Credential?, ca: String? = nil) -> (inout GatewayConfiguration) -> Void {
            let url = "tls://127.0.0.1:\(port)"
            let ca = ca ?? pki.caPath
            return { configuration in
                var settings = GatewayConfiguration.NATS(url: url)!
                settings.ca = ca
                settings.certificate = certificate?.certificate
                settings.key = certificate?.key
                configuration.nats = settings
            }
        }

        func stop() {
            stopProcess(process)
            pki.remove()
        }
    }

    /// Waits up to 60 s for the gateway's not-ready reason to satisfy `predicate`; the last reason seen.
    static func reason(of gw: TestGateway, _ predicate: (String) -> Bool) async throws -> String? {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if let reason = gw.gateway.notReadyReason, predicate(reason) { return reason }
            try await Task.sleep(for: .milliseconds(20))
        }
        return gw.gateway.notReadyReason
    }

    @Test("Gateways with a certificate nats-server maps to the gateways' user sign in over TLS, and messages cross")
    func mappedCertificates() async throws {
        let nats = try await SecureNATS.start()
        defer { nats.stop() }
        let (credential, _) = try nats.pki.client("nats-gateway")
        try await withGateway(adjust: nats.settings(certificate: credential)) { a in
            try await withGateway(adjust: nats.settings(certificate: credential)) { b in
                try await ClusterCredentialsTests.expectCrossing(a, b)
            }
        }
    }

    @Test("A certificate replaced in place is read at reload: the next attempt signs in with it")
    func replacedCertificate() async throws {
        let nats = try await SecureNATS.start()
        defer { nats.stop() }
        let (unmapped, _) = try nats.pki.client("intruder")
        let (mapped, _) = try nats.pki.client("nats-gateway")
        try await withGateway(adjust: nats.settings(certificate: unmapped)) { gw in
            #expect(try await Self.reason(of: gw) { $0.contains("Authorization Violation") } != nil)
            // What a rotation does: the new certificate and key written over the old files.
            for (from, to) in [(mapped.certificate, unmapped.certificate), (mapped.key, unmapped.key)] {
                try FileManager.default.removeItem(atPath: to)
                try FileManager.default.copyItem(atPath: from, toPath: to)
            }
            let outcome = await gw.gateway.reload(trigger: "test")
            #expect(outcome.lines == ["NATS credentials renewed, used from the next connection to NATS"], "\(outcome.lines)")
            #expect(try await ClusterTests.ready(gw, within: 120) == nil, "\(gw.gateway.notReadyReason ?? "")")
        }
    }

    @Test("A certificate nats-server does not map, no certificate, or a NATS server the CA does not vouch for: not ready, with the reason")
    func refusedSignIns() async throws {
        let nats = try await SecureNATS.start()
        defer { nats.stop() }
        let (unmapped, _) = try nats.pki.client("intruder")
        try await withGateway(adjust: nats.settings(certificate: unmapped)) { gw in
            let reason = try await Self.reason(of: gw) { $0.contains("Authorization Violation") }
            #expect(
                reason == "NATS is unreachable: NATS refused the sign-in (Authorization Violation): check nats.user and password_file, or that nats-server maps the gateway's certificate to a user",
                "\(String(describing: reason))")
            #expect(!ClusterTests.metrics(gw).contains("portcullis_nats_connection_failures_total 0"))
        }
        try await withGateway(adjust: nats.settings(certificate: nil)) { gw in
            // nats-server ends the handshake of a client without a certificate with an alert.
            let reason = try await Self.reason(of: gw) { $0.contains("alert") }
            #expect(
                reason?.hasPrefix("NATS is unreachable: NATS refused TLS (alert ") == true
                    && reason?.contains("nats-server did not accept the gateway's certificate") == true,
                "\(String(describing: reason))")
            #expect(ClusterTests.metrics(gw).contains("portcullis_nats_connected 0"))
        }
        // The gateway's own CA in `ca`: nats-server's certificate does not verify, and the gateway says so.
        try await withGateway(adjust: { _ in }) { probe in
            let (credential, _) = try nats.pki.client("nats-gateway")
            try await withGateway(adjust: nats.settings(certificate: credential, ca: probe.pki.caPath)) { gw in
                let reason = try await Self.reason(of: gw) { $0.contains("certificate") }
                #expect(
                    reason == "NATS is unreachable: NATS's certificate does not verify against nats.tls.ca",
                    "\(String(describing: reason))")
            }
        }
    }
}

@Suite("Why the connection to NATS failed, in plain words")
struct NATSFailureReasonTests {
    @Test("TLS alerts are named with what to check; library source locations are dropped")
    func tlsFailures() {
        let alert = "sslError([Error: 268436498 error:10000412:SSL routines:OPENSSL_internal:SSLV3_ALERT_BAD_CERTIFICATE at /x/tls_record.cc:491])"
        #expect(NATSFailureReason.alertName(in: alert) == "bad_certificate")
        #expect(NATSFailureReason.alertName(in: "TLSV1_ALERT_UNKNOWN_CA") == "unknown_ca")
        #expect(NATSFailureReason.alertName(in: "CERTIFICATE_VERIFY_FAILED") == nil)
        #expect(NATSFailureReason.withoutSourceLocation("a:B at /x/y.cc:1]) tail") == "a:B]) tail")
        #expect(NATSFailureReason.withoutSourceLocation("no location") == "no location")
        #expect(NATSFailureReason.server("Authorization Violation").contains("check nats.user and password_file"))
        #expect(NATSFailureReason.server("Maximum Connections Exceeded") == "NATS said: Maximum Connections Exceeded")
    }
}

@Suite("NATS failures in the log, throttled")
struct LogThrottleTests {
    @Test("One line, then none for 10 s, then one again")
    func throttle() {
        var throttle = ClusterLink.LogThrottle()
        let start = Date()
        let answers = [0, 9.9, 10, 10.5].map { throttle.allows(now: start.addingTimeInterval($0)) }
        #expect(answers == [true, false, true, false])
    }
}
