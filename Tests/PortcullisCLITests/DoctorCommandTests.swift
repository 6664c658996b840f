import Foundation
import PortcullisTestSupport
import Testing

/// `portcullis doctor` against a real gateway (`serve --dev`) in each way a device's first connection fails, and
/// against a TLS server that is not Portcullis.
@Suite("portcullis doctor")
struct DoctorCommandTests {
    static let device = ["--cert", "pki/issued/demo-device.crt", "--key", "pki/private/demo-device.key", "--ca", "pki/ca.crt"]

    /// The line of `step` in doctor's output.
    static func line(_ step: String, in output: String) -> String {
        output.split(separator: "\n").first { $0.contains("] \(step):") }.map(String.init) ?? ""
    }

    @Test("Every step passes for the demo device: exit 0, TLS details, the CA the gateway names, the clock, a ping")
    func passes() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }
        let (status, output) = try await portcullis(["doctor", "wss://localhost:\(port)/v1/echo"] + Self.device, in: directory)
        #expect(status == 0, "\(output)")
        for step in ["name resolution", "TCP connect", "TLS", "server certificate", "client certificate request", "your certificate",
            "gateway's verdict", "upgrade", "clock", "ping"]
        {
            #expect(Self.line(step, in: output).hasPrefix("[ok]"), "\(step): \(output)")
        }
        #expect(Self.line("TLS", in: output).contains("TLSv1.3"), "\(output)")
        #expect(Self.line("client certificate request", in: output).contains("CN=Portcullis Development CA"), "\(output)")
        #expect(output.hasSuffix("every step passed\n"), "\(output)")
    }

    @Test("Local findings: the wrong key, a serverAuth-only certificate; a certificate of a CA the gateway does not trust")
    func localFindings() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }
        let other = "\(directory)/other"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        #expect(try await portcullis(["pki", "init"], in: other).status == 0)
        #expect(try await portcullis(["pki", "issue", "client", "stranger"], in: other).status == 0)
        let url = "wss://localhost:\(port)/v1/echo"

        let cases: [(arguments: [String], expected: String)] = [
            (["--cert", "pki/issued/demo-device.crt", "--key", "pki/private/demo-operator.key", "--ca", "pki/ca.crt"],
             "is not this certificate's key"),
            (["--cert", "pki/issued/server.crt", "--key", "pki/private/server.key", "--ca", "pki/ca.crt"],
             "is not for client authentication"),
        ]
        for (arguments, expected) in cases {
            let (status, output) = try await portcullis(["doctor", url] + arguments, in: directory)
            #expect(status == 1, "\(output)")
            let step = Self.line("your certificate", in: output)
            #expect(step.hasPrefix("[FAIL]") && step.contains(expected), "\(output)")
            #expect(output.contains("→ "), "advice: \(output)")
            #expect(Self.line("gateway's verdict", in: output).isEmpty, "it stops at the first failure: \(output)")
        }

        // A CA the gateway does not name: a warning here, and the gateway's alert says the rest in plain words.
        let (status, output) = try await portcullis(
            ["doctor", url, "--cert", "other/pki/issued/stranger.crt", "--key", "other/pki/private/stranger.key", "--ca", "pki/ca.crt"],
            in: directory)
        #expect(status == 1, "\(output)")
        #expect(Self.line("your certificate", in: output).hasPrefix("[warn]"), "\(output)")
        let verdict = Self.line("gateway's verdict", in: output)
        #expect(verdict.hasPrefix("[FAIL]") && verdict.contains("the gateway does not trust the CA that issued your certificate"), "\(output)")
    }

    @Test("The network and the gateway's certificate: unresolvable, nothing listening, no TLS answer, another CA, another name")
    func networkAndServer() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }
        let other = "\(directory)/other"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        #expect(try await portcullis(["pki", "init"], in: other).status == 0)
        let closedPort = try freeLoopbackPort()
        let silent = try SilentListener()
        let cases: [(arguments: [String], step: String, expected: String)] = [
            (["wss://127.0.0.1:\(silent.port)/v1/echo", "--timeout", "2"] + Self.device, "TLS", "no answer within 2 s"),
            (["wss://nothing.invalid/v1/echo"] + Self.device, "name resolution", "nothing.invalid"),
            (["wss://127.0.0.1:\(closedPort)/v1/echo"] + Self.device, "TCP connect", "Connection refused"),
            (["wss://localhost:\(port)/v1/echo", "--cert", "pki/issued/demo-device.crt", "--key", "pki/private/demo-device.key",
              "--ca", "other/pki/ca.crt"], "server certificate", "against other/pki/ca.crt"),
            (["wss://127.0.0.1:\(port)/v1/echo", "--server-name", "gateway.example.com"] + Self.device, "server certificate",
             "does not name gateway.example.com"),
        ]
        for (arguments, step, expected) in cases {
            let (status, output) = try await portcullis(["doctor"] + arguments, in: directory)
            #expect(status == 1, "\(output)")
            let line = Self.line(step, in: output)
            #expect(line.hasPrefix("[FAIL]") && line.contains(expected), "\(step): \(output)")
        }
    }

    @Test("The gateway's refusals: a revoked certificate (the alert in plain words), a 404 route, a refused Origin")
    func gatewayRefusals() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }

        let noRoute = try await portcullis(["doctor", "wss://localhost:\(port)/v1/nothing"] + Self.device, in: directory)
        #expect(noRoute.status == 1)
        #expect(Self.line("upgrade", in: noRoute.output).contains("404"), "\(noRoute.output)")

        let origin = try await portcullis(
            ["doctor", "wss://localhost:\(port)/v1/echo", "--origin", "https://evil.example"] + Self.device, in: directory)
        #expect(origin.status == 1)
        #expect(Self.line("upgrade", in: origin.output).contains("403"), "\(origin.output)")
        #expect(origin.output.contains("the Origin is not allowed"), "\(origin.output)")

        #expect(try await portcullis(["pki", "revoke", "demo-device"], in: directory).status == 0)
        #expect(try await serve.waitFor("reloaded: CRL: newly revoked"), "\(serve.output)")
        let revoked = try await portcullis(["doctor", "wss://localhost:\(port)/v1/echo"] + Self.device, in: directory)
        #expect(revoked.status == 1, "\(revoked.output)")
        let verdict = Self.line("gateway's verdict", in: revoked.output)
        #expect(verdict.hasPrefix("[FAIL]") && verdict.contains("certificate_unknown (46)"), "\(revoked.output)")
        #expect(revoked.output.contains("most likely revoked"), "\(revoked.output)")
        #expect(revoked.output.contains("portcullis audit query --event tls_refused --serial"), "\(revoked.output)")
    }

    @Test("A TLS server that is not Portcullis (openssl s_server, no client certificate asked): stops at the request step")
    func notPortcullis() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try await portcullis(["pki", "init"], in: directory).status == 0)
        #expect(try await portcullis(["pki", "issue", "server", "localhost", "--dns", "localhost"], in: directory).status == 0)
        #expect(try await portcullis(["pki", "issue", "client", "demo-device"], in: directory).status == 0)
        let openssl = try tool("openssl")
        var server: ChildProcess?
        var port = 0
        for _ in 0..<5 where server == nil {
            port = try freeLoopbackPort()
            server = try await startListening(
                openssl,
                ["s_server", "-accept", "127.0.0.1:\(port)", "-cert", "\(directory)/pki/issued/localhost.crt",
                 "-key", "\(directory)/pki/private/localhost.key", "-www", "-quiet"],
                port: port, log: "\(directory)/s_server.log")
        }
        let running = try #require(server, "openssl s_server did not start")
        defer { stopProcess(running) }
        let (status, output) = try await portcullis(["doctor", "wss://localhost:\(port)/v1/echo"] + Self.device, in: directory)
        #expect(status == 1, "\(output)")
        #expect(Self.line("server certificate", in: output).hasPrefix("[ok]"), "\(output)")
        let request = Self.line("client certificate request", in: output)
        #expect(request.hasPrefix("[FAIL]") && request.contains("did not ask for a client certificate"), "\(output)")
        #expect(output.contains("this is not a Portcullis gateway"), "\(output)")
    }
}
