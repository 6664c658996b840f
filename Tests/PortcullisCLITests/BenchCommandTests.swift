import Foundation
import Testing

/// A JSON object printed by `portcullis bench ... --json` (the last line of its output).
func benchResult(_ output: String) throws -> [String: Any] {
    let line = try #require(output.split(separator: "\n").last, "no output")
    return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not JSON: \(output)")
}

/// A tool from PATH; a test that needs it fails (CI installs it) rather than skipping.
func tool(_ name: String) throws -> String {
    try #require(
        (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/usr/sbin").split(separator: ":").map { "\($0)/\(name)" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }, "\(name) is not installed; scripts/test installs it")
}

@Suite("portcullis bench")
struct BenchCommandTests {
    @Test("bench connect and idle measure a serve --dev gateway, with its CPU time and memory from /proc")
    func againstTheDevGateway() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }
        // The README's command: an IP address in the URL and no --server-name (no SNI is sent for an IP; the
        // dev server certificate names 127.0.0.1).
        let common = [
            "--url", "wss://127.0.0.1:\(port)/v1/echo",
            "--server-pid", "\(serve.process.processIdentifier)", "--json",
        ]

        let (status, output) = try await portcullis(
            ["bench", "connect", "--duration", "2s", "--warmup", "0.5s", "--concurrency", "2"] + common, in: directory)
        #expect(status == 0, "\(output)")
        let connect = try benchResult(output)
        #expect((connect["sessions"] as? Int ?? 0) > 0 && connect["failures"] as? Int == 0, "\(connect)")
        #expect((connect["server_cpu_seconds"] as? Double ?? 0) > 0)
        #expect((connect["latency_milliseconds"] as? [String: Any])?["p99"] != nil)

        let (idleStatus, idleOutput) = try await portcullis(["bench", "idle", "--sessions", "10", "--hold", "0s"] + common, in: directory)
        #expect(idleStatus == 0, "\(idleOutput)")
        let idle = try benchResult(idleOutput)
        #expect(idle["sessions"] as? Int == 10 && idle["server_ki_b_per_session"] != nil, "\(idle)")

        let (badStatus, badOutput) = try await portcullis(["bench", "connect", "--url", "https://127.0.0.1:1/"], in: directory)
        #expect(badStatus == 64)
        #expect(badOutput.contains("--url must be wss://HOST:PORT/PATH"), "\(badOutput)")
    }

    /// How the fleet test runs the gateway's heartbeat.
    enum Heartbeat: String, CaseIterable, CustomTestStringConvertible {
        /// Pings every second, answered within 5 s or the session is closed: a device that did not answer would
        /// be closed during the 12 s hold, and the script would fail.
        case everySecond
        /// Pings every 10 minutes, never during the run: a load generator that waited for the gateway's next
        /// frame (a ping) before it saw a subscription's acknowledgement or a command would stall until the
        /// test's deadline instead of passing on the pings of the first case.
        case never

        var arguments: [String] {
            switch self {
            case .everySecond: ["--hold", "12s", "--ping-interval", "1s", "--ping-timeout", "5s"]
            case .never: ["--hold", "2s", "--ping-interval", "10m"]
            }
        }

        var testDescription: String { rawValue }
    }

    @Test(
        "Benchmarks/fleet.py: devices with their own certificates hold, answer pings, get commands, and all resume after a storm",
        arguments: Heartbeat.allCases)
    func fleet(heartbeat: Heartbeat) async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let fleet = try RunningCommand(
            [repositoryRoot.appendingPathComponent("Benchmarks/fleet.py").path, "40"] + heartbeat.arguments
                + ["--subscriptions-per-device", "3", "--binary", try portcullisBinary()],
            in: directory, executable: try tool("python3"))
        let status = try await fleet.waitForExit(timeout: 600)
        #expect(status == 0, "\(fleet.output)")
        for line in [
            "40 devices connected and subscribed (120 subscriptions)", ", 0 failed", "closed by the gateway during the hold: 0",
            "event-loop lag over the whole run", "\n  ramp: ", "\n  hold: ", "\n  storm: ",
            "storm: 40 reconnected (40 resumed)", "then 40 of 40 commands delivered", "audit verify: ok",
        ] {
            #expect(fleet.output.contains(line), "\(fleet.output)")
        }
        let commands = try #require(fleet.output.split(separator: "\n").first { $0.hasPrefix("commands: ") })
        let counts = commands.dropFirst("commands: ".count).split(separator: " ").prefix(3)
        // 20 commands a second over the hold.
        #expect(counts.count == 3 && counts.first == counts.last && Int(counts.first ?? "") ?? 0 >= (heartbeat == .never ? 20 : 100), "\(commands)")
    }

    @Test("bench --protocol nats admits, publishes and receives through nats-server's WebSocket listener with mTLS")
    func againstNatsServer() async throws {
        let natsServer = try tool("nats-server")
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for arguments in [
            ["pki", "init"], ["pki", "issue", "server", "localhost", "--dns", "localhost", "--ip", "127.0.0.1"],
            ["pki", "issue", "client", "bench-device"],
        ] {
            let (status, output) = try await portcullis(arguments, in: directory)
            #expect(status == 0, "\(output)")
        }
        try """
            listen: "127.0.0.1:-1"
            websocket {
              listen: "127.0.0.1:-1"
              tls {
                cert_file: "pki/issued/localhost.chain.pem"
                key_file: "pki/private/localhost.key"
                ca_file: "pki/ca.crt"
                verify_and_map: true
              }
              allowed_origins: ["https://bench.example"]
              compression: false
            }
            authorization {
              users: [ { user: "CN=bench-device", permissions: { publish: "bench.>", subscribe: "bench.>" } } ]
            }
            """.write(toFile: "\(directory)/nats.conf", atomically: true, encoding: .utf8)
        let nats = try RunningCommand(["-c", "nats.conf"], in: directory, executable: natsServer)
        defer { nats.process.terminate() }
        #expect(try await nats.waitFor("Server is ready"), "\(nats.output)")
        let port = try #require(
            nats.output.split(separator: "\n").first { $0.contains("websocket clients on wss://") }?
                .split(separator: ":").last?.prefix { $0.isNumber })
        let common = [
            "--url", "wss://127.0.0.1:\(port)/", "--protocol", "nats", "--origin", "https://bench.example",
            "--server-name", "localhost", "--cert", "pki/issued/bench-device.chain.pem",
            "--key", "pki/private/bench-device.key", "--server-pid", "\(nats.process.processIdentifier)", "--json",
        ]

        let (status, output) = try await portcullis(
            ["bench", "connect", "--duration", "2s", "--warmup", "0.5s", "--concurrency", "2"] + common, in: directory)
        #expect(status == 0, "\(output)")
        let connect = try benchResult(output)
        #expect((connect["sessions"] as? Int ?? 0) > 0 && connect["failures"] as? Int == 0, "\(connect)")

        let (resumeStatus, resumeOutput) = try await portcullis(
            ["bench", "connect", "--resume", "--duration", "2s", "--warmup", "0.5s", "--concurrency", "2"] + common,
            in: directory)
        #expect(resumeStatus == 0, "\(resumeOutput)")
        let resumed = try benchResult(resumeOutput)
        // Only each client's first session is a full handshake (normally during the warm-up).
        let sessions = resumed["sessions"] as? Int ?? 0
        #expect(sessions > 0 && (resumed["resumed_sessions"] as? Int ?? 0) >= sessions - 2, "\(resumed)")

        let (pubStatus, pubOutput) = try await portcullis(
            ["bench", "pubsub", "--duration", "1s", "--warmup", "0.2s", "--rate", "300", "--subscribers", "2"] + common,
            in: directory)
        #expect(pubStatus == 0, "\(pubOutput)")
        let pubsub = try benchResult(pubOutput)
        let published = pubsub["published"] as? Int ?? 0
        #expect(published >= 200, "\(pubsub)")
        #expect((pubsub["delivered"] as? Int ?? 0) >= 2 * published - 20, "\(pubsub)")

        // The user's permissions are nats-server's to enforce: a subscription outside them is refused.
        let (deniedStatus, deniedOutput) = try await portcullis(
            ["bench", "pubsub", "--duration", "1s", "--topic", "other.topic"] + common, in: directory)
        #expect(deniedStatus != 0)
        #expect(deniedOutput.contains("Permissions Violation"), "\(deniedOutput)")

        // A server certificate (no clientAuth, no mapped user) is refused: every attempt counts as a failure.
        let serverCredential = common.map {
            $0.replacingOccurrences(of: "issued/bench-device", with: "issued/localhost")
                .replacingOccurrences(of: "private/bench-device", with: "private/localhost")
        }
        let (foreignStatus, foreignOutput) = try await portcullis(
            ["bench", "connect", "--duration", "1s", "--warmup", "0s"] + serverCredential, in: directory)
        #expect(foreignStatus == 0)
        let foreign = try benchResult(foreignOutput)
        #expect(foreign["sessions"] as? Int == 0 && (foreign["failures"] as? Int ?? 0) > 0, "\(foreign)")
    }
}
