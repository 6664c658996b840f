import Foundation
import NIOCore
import NIOPosix
import PortcullisConfig
import PortcullisTestSupport
import Testing

/// RFC 6455 / RFC 7692 conformance: Autobahn|Testsuite's fuzzingclient runs every one of its cases against a
/// real gateway. The suite cannot present a client certificate, so stunnel in client mode presents the
/// device's and carries the suite's plain connections to the gateway over mutual TLS:
///
///     wstest (ws://127.0.0.1:P) → stunnel (device certificate) → gateway → /v1/echo, or /v1/upstream → echo backend
///
/// `scripts/test` installs both (stunnel4 from Debian; the suite, which is Python 2 code, in a user base of its
/// own). A case fails the test unless both its `behavior` and its `behaviorClose` are OK, NON-STRICT or
/// INFORMATIONAL; UNIMPLEMENTED fails too. The suite's reports are written to
/// a temporary directory, kept there when the test fails.
@Suite("Autobahn|Testsuite conformance")
struct AutobahnTests {
    /// A part of the suite, as its spec selects cases, and how many cases that part has (autobahntestsuite
    /// 25.10.1): a run that reports fewer stopped early.
    struct Part: Sendable, CustomStringConvertible {
        var cases: [String]
        var excluded: [String] = []
        var count: Int
        var description: String { cases.joined(separator: ",") + (excluded.isEmpty ? "" : " without " + excluded.joined(separator: ",")) }
    }

    /// Cases 12.* and 13.* (permessage-deflate: 1,000 messages of up to 128 KiB each, every case) take the suite
    /// itself about 20 minutes, against any server: its Python 2 client compresses and inflates every message.
    /// They run as two parts of their own, beside the rest, so that the two cores share the work.
    static let compression = ["12.*", "13.*"]
    /// RFC 6455: framing, pings, reserved bits and opcodes, fragmentation, UTF-8, close handshake, limits.
    static let framing = Part(cases: ["*"], excluded: compression, count: 301)
    static let compressedPayloads = Part(cases: ["12.*"], count: 90)
    static let compressionNegotiation = Part(cases: ["13.*"], count: 126)

    /// The whole run may take this long before wstest is killed: several times what a part takes here (the
    /// longest, 13.*, takes about 13 minutes on two cores beside the rest of the tests).
    static let runDeadline: Double = 40 * 60

    /// Large enough for the suite's biggest messages (9.1.6 and 9.2.6 are 16 MiB), and an outbound bound that
    /// can hold one of them being echoed; permessage-deflate on, for cases 12.* and 13.*.
    static func limits(_ configuration: inout GatewayConfiguration) {
        configuration.maxMessageBytes = 16 << 20
        configuration.maxOutboundBytes = 64 << 20
        configuration.compression = .perMessageDeflate
    }

    @Test("Every Autobahn|Testsuite case passes against /v1/echo", arguments: [framing, compressedPayloads, compressionNegotiation])
    func echo(part: Part) async throws {
        try await withGateway(adjust: Self.limits) { gw in
            try await Self.run(part, agent: "portcullis-echo", path: "/v1/echo", on: gw)
        }
    }

    /// A plain WebSocket echo server with no limits of its own (and no compression), so that what the suite sees
    /// is the gateway's relay.
    static let echoBackend = #"""
        import asyncio, json
        from websockets.asyncio.server import serve

        async def echo(ws):
            async for message in ws:
                await ws.send(message)

        async def main():
            async with serve(echo, "127.0.0.1", 0, max_size=None, compression=None, ping_interval=None) as server:
                print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
                await asyncio.Future()

        asyncio.run(main())
        """#

    /// Compression is negotiated between the client and the gateway and runs in the same protocol layer on every
    /// route (the backend leg is uncompressed), so 12.* and 13.* run against /v1/echo only; here every other
    /// case goes through the relay.
    @Test("Every Autobahn|Testsuite case but compression's passes through an upstream route to an echo backend")
    func upstream() async throws {
        let scratch = NSTemporaryDirectory() + "portcullis-autobahn-backend-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let backend = try PythonBackend(directory: scratch, script: Self.echoBackend)
        defer { backend.stop() }
        let port = try #require(try await backend.line(with: "port")?["port"] as? Int, "the echo backend did not start")
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout, adjust: {
            Self.limits(&$0)
            $0.routes.append(.init(path: "/v1/upstream", kind: .upstream, upstream: .init(url: "ws://127.0.0.1:\(port)/")))
        }) { gw in
            try await Self.run(Self.framing, agent: "portcullis-upstream", path: "/v1/upstream", on: gw)
        }
    }

    /// Runs the fuzzingclient through stunnel against `path` and records a failure naming every case that did
    /// not pass.
    static func run(_ part: Part, agent: String, path: String, on gw: TestGateway) async throws {
        let wstest = try AutobahnSuite.wstest()
        let scratch = NSTemporaryDirectory() + "portcullis-autobahn-\(agent)-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        var keep = false
        defer { if !keep { try? FileManager.default.removeItem(atPath: scratch) } }

        let stunnel = try await Stunnel.start(
            directory: scratch, forwardingTo: gw.port, credential: gw.device, trustRoots: gw.pki.caPath)
        defer { stunnel.stop() }

        let reports = "\(scratch)/reports"
        let spec: [String: Any] = [
            "outdir": reports,
            "servers": [["agent": agent, "url": "ws://127.0.0.1:\(stunnel.port)\(path)"]],
            "cases": part.cases,
            "exclude-cases": part.excluded,
            "exclude-agent-cases": [String: Any](),
            // The fuzzingclient gives each case's opening handshake 5 s by default: with dozens of gateways
            // under test on two cores, a TLS handshake, admission and (upstream) a backend's answer can take
            // longer, and the case then failed for the machine's load rather than for conformance.
            "options": ["openHandshakeTimeout": 120],
        ]
        let specPath = "\(scratch)/spec.json"
        try JSONSerialization.data(withJSONObject: spec, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            .write(to: URL(fileURLWithPath: specPath))

        let started = Date()
        let result = try await wstest.run(
            ["-m", "fuzzingclient", "-s", specPath], holdInput: 0, timeout: runDeadline,
            environment: AutobahnSuite.environment)
        let elapsed = Int(Date().timeIntervalSince(started))
        let tail = result.all.split(separator: "\n").suffix(20).joined(separator: "\n")

        let index = "\(reports)/index.json"
        guard let data = FileManager.default.contents(atPath: index),
            let agents = try? JSONSerialization.jsonObject(with: data) as? [String: [String: [String: Any]]],
            let cases = agents[agent]
        else {
            keep = true
            Issue.record("wstest wrote no report for \(agent) (exit \(result.status) after \(elapsed) s); kept \(scratch):\n\(tail)")
            return
        }
        let outcomes = cases.map { id, report in
            AutobahnOutcome(
                id: id, behavior: report["behavior"] as? String ?? "?", behaviorClose: report["behaviorClose"] as? String ?? "?")
        }.sorted { $0.order.lexicographicallyPrecedes($1.order) }

        let allRan = outcomes.count == part.count
        // A count, not the array: the expectation's message names the cases; its expansion need not repeat all 517.
        let failingCases = outcomes.filter { !$0.passes }.count
        keep = result.status != 0 || !allRan || failingCases > 0
        #expect(result.status == 0, "wstest exited \(result.status) after \(elapsed) s:\n\(tail)")
        #expect(allRan, "\(agent) \(part): \(outcomes.count) of \(part.count) cases ran:\n\(tail)")
        #expect(failingCases == 0, "\(AutobahnOutcome.summary(of: outcomes, agent: "\(agent) \(part)", path: path))\nreports: \(reports)")
    }
}

/// One case's verdict from the suite's `index.json`.
struct AutobahnOutcome {
    let id: String
    let behavior: String
    let behaviorClose: String

    static let passing: Set<String> = ["OK", "NON-STRICT", "INFORMATIONAL"]

    var passes: Bool { Self.passing.contains(behavior) && Self.passing.contains(behaviorClose) }
    /// "9.1.10" sorts after "9.1.9".
    var order: [Int] { id.split(separator: ".").map { Int($0) ?? 0 } }

    /// Counts per behaviour, then every failing case grouped by what failed.
    static func summary(of outcomes: [AutobahnOutcome], agent: String, path: String) -> String {
        func counts(_ key: KeyPath<AutobahnOutcome, String>) -> String {
            Dictionary(grouping: outcomes, by: { $0[keyPath: key] })
                .map { "\($0.key) \($0.value.count)" }.sorted().joined(separator: ", ")
        }
        let failing = outcomes.filter { !$0.passes }
        var lines = [
            "\(agent) (\(path)): \(failing.count) of \(outcomes.count) cases fail",
            "behavior: \(counts(\.behavior))",
            "behaviorClose: \(counts(\.behaviorClose))",
        ]
        // A case whose behavior fails is listed under it; one whose behavior passes, under its behaviorClose.
        let groups = Dictionary(grouping: failing) {
            passing.contains($0.behavior) ? "behaviorClose \($0.behaviorClose)" : "behavior \($0.behavior)"
        }
        for (group, cases) in groups.sorted(by: { $0.key < $1.key }) {
            lines.append("\(group) (\(cases.count)): " + cases.map(\.id).joined(separator: ", "))
        }
        return lines.joined(separator: "\n")
    }
}

/// Where `scripts/test` installs Autobahn|Testsuite: a Python 2 user base of its own.
enum AutobahnSuite {
    static var home: String {
        let environment = ProcessInfo.processInfo.environment
        if let home = environment["PORTCULLIS_AUTOBAHN_HOME"], !home.isEmpty { return home }
        let cache = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory() + "/.cache"
        return "\(cache)/portcullis/autobahn"
    }

    /// wstest finds its modules through the user site of its base.
    static var environment: [String: String] { ["PYTHONUSERBASE": home, "PYTHONNOUSERSITE": ""] }

    /// The suite's command; a missing one fails the test (never skips it).
    static func wstest(sourceLocation: SourceLocation = #_sourceLocation) throws -> ExternalTool {
        let path = "\(home)/bin/wstest"
        try #require(
            FileManager.default.isExecutableFile(atPath: path),
            "Autobahn|Testsuite is not installed (no \(path)); scripts/test installs it", sourceLocation: sourceLocation)
        return ExternalTool(executable: path)
    }
}

extension ExternalTool {
    /// A tool at a known path rather than on PATH.
    init(executable path: String) {
        self.path = path
    }
}

/// stunnel in client mode on an ephemeral loopback port: it takes plain TCP and connects to the gateway over TLS
/// with a client certificate, verifying the gateway's against the test CA.
final class Stunnel: @unchecked Sendable {
    let port: Int
    private let process: ChildProcess
    private let log: PipeReader

    private init(port: Int, process: ChildProcess, log: PipeReader) {
        self.port = port
        self.process = process
        self.log = log
    }

    /// Starts stunnel and returns once its port accepts connections. The port is one the kernel just handed out;
    /// if something takes it before stunnel binds it, stunnel exits and another is tried.
    static func start(
        directory: String, forwardingTo gatewayPort: Int, credential: TestPKI.Credential, trustRoots: String
    ) async throws -> Stunnel {
        let executable = try ExternalTool("stunnel4").path
        var failures: [String] = []
        for attempt in 1...3 {
            let port = try freeLoopbackPort()
            let configuration = "\(directory)/stunnel-\(attempt).conf"
            try """
                foreground = yes
                syslog = no
                debug = warning
                pid = \(directory)/stunnel-\(attempt).pid

                [gateway]
                client = yes
                accept = 127.0.0.1:\(port)
                connect = 127.0.0.1:\(gatewayPort)
                sni = localhost
                cert = \(credential.certificate)
                key = \(credential.key)
                CAfile = \(trustRoots)
                verifyChain = yes
                checkHost = localhost

                """.write(toFile: configuration, atomically: true, encoding: .utf8)
            let process = ChildProcess()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = [configuration]
            let stderr = Pipe()
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = stderr
            process.standardError = stderr
            try process.run()
            let stunnel = Stunnel(port: port, process: process, log: PipeReader(stderr.fileHandleForReading))
            // Generous: at the suite's start stunnel can wait seconds for a core.
            let deadline = Date().addingTimeInterval(120)
            while process.isRunning && Date() < deadline {
                if listens(pid: process.processIdentifier, port: port) { return stunnel }
                try await Task.sleep(for: .milliseconds(50))
            }
            stunnel.stop()
            failures.append("port \(port): \(String(decoding: stunnel.log.collected, as: UTF8.self))")
        }
        throw StartFailure(description: "stunnel did not start:\n" + failures.joined(separator: "\n"))
    }

    /// Stops stunnel (``stopProcess(_:)``).
    func stop() {
        stopProcess(process)
    }
}
