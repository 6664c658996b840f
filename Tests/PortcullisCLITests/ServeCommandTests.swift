import Foundation
import PortcullisTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The built binary, next to the test bundle.
func portcullisBinary() throws -> String {
    let bundleDirectory = URL(fileURLWithPath: ProcessInfo.processInfo.arguments[0]).deletingLastPathComponent()
    let candidates = [
        bundleDirectory.appendingPathComponent("portcullis").path,
        bundleDirectory.deletingLastPathComponent().appendingPathComponent("portcullis").path,
    ]
    return try #require(candidates.first { FileManager.default.isExecutableFile(atPath: $0) }, "portcullis binary not built")
}

var repositoryRoot: URL {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
}

/// A `portcullis` process started in a directory, its output gathered as it comes. Its standard input is a pipe
/// held open for as long as this object lives (``send(_:)`` writes to it): a command that reads its input waits
/// there instead of seeing the end of the test runner's.
final class RunningCommand: @unchecked Sendable {
    let process = ChildProcess()
    private let pipe = Pipe()
    private let input = Pipe()
    private var reader: PipeReader?

    init(_ arguments: [String], in directory: String, executable: String? = nil, environment: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: try executable ?? portcullisBinary())
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardInput = input
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        reader = PipeReader(pipe.fileHandleForReading)
    }

    /// Writes `text` to the command's standard input.
    func send(_ text: String) throws {
        try input.fileHandleForWriting.write(contentsOf: Data(text.utf8))
    }

    var output: String { String(decoding: reader?.collected ?? Data(), as: UTF8.self) }

    /// Waits for `text` to appear in the output (or the process to end).
    func waitFor(_ text: String, timeout: Double = 120) async throws -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if output.contains(text) { return true }
            if !process.isRunning { return output.contains(text) }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    func waitForExit(timeout: Double = 120) async throws -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        if process.isRunning {
            process.terminate()
            return nil
        }
        // Whatever the reader has not taken yet is still in the pipe.
        try await reader?.waitForEnd()
        return process.terminationStatus
    }
}

func shell(_ command: String, in directory: String, timeout: Double = 120) async throws -> String {
    let process = ChildProcess()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = ["-c", command]
    process.currentDirectoryURL = URL(fileURLWithPath: directory)
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    try process.run()
    let deadline = Date().addingTimeInterval(timeout)
    while process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
    if process.isRunning { process.terminate() }
    return String(decoding: readToEnd(pipe.fileHandleForReading), as: UTF8.self)
}

/// The shell pipeline that sends one WebSocket upgrade request for `path` through `openssl s_client` with a
/// client certificate; stderr joins stdout. openssl leaves at the end of its input, so the input stays open until
/// the gateway has answered (a status line, or a TLS alert or error: up to 60 s, however loaded the machine),
/// then `hold` seconds more.
func opensslUpgrade(path: String = "/v1/echo", port: String, certificate: String, key: String, hold: String) -> String {
    "out=$(mktemp); (printf 'GET \(path) HTTP/1.1\\r\\nHost: localhost\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
        + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n'; i=0; "
        + "until grep -qE '^HTTP/1\\.[01] |alert|error|errno' \"$out\" || [ $i -ge 1200 ]; do sleep 0.05; i=$((i+1)); done; "
        + "sleep \(hold)) | openssl s_client -quiet -no_ign_eof -connect 127.0.0.1:\(port) -servername localhost "
        + "-CAfile pki/ca.crt -cert \(certificate) -key \(key) 2>&1 | tee \"$out\"; rm -f \"$out\""
}

func scratchDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "portcullis-cli-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// `serve --dev` on an ephemeral port in `directory` (given the repository's policies first), once its banner
/// is out, and the port it listens on.
func startDevGateway(in directory: String) async throws -> (serve: RunningCommand, port: String) {
    if !FileManager.default.fileExists(atPath: "\(directory)/policies") {
        try FileManager.default.copyItem(
            atPath: repositoryRoot.appendingPathComponent("policies").path, toPath: "\(directory)/policies")
    }
    let serve = try RunningCommand(["serve", "--dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], in: directory)
    #expect(try await serve.waitFor("Stop with Ctrl-C."), "\(serve.output)")
    let port = try #require(serve.output.split(separator: "\n").first { $0.contains("listening on wss://") }?
        .split(separator: ":").dropFirst(2).first?.prefix { $0.isNumber })
    return (serve, String(port))
}

/// `serve --config gateway.yaml` in `directory`, with a fresh PKI (a `localhost` server certificate and the
/// `clients`), the repository's policies, an echo route and `extra` configuration lines, once it is listening.
/// A `launcher` (a command and its arguments, such as `prlimit`) runs the binary.
func startConfiguredGateway(
    in directory: String, clients: [String] = ["demo-device"], extra: String, arguments: [String] = ["--admin-listen", "127.0.0.1:0"],
    launcher: [String] = []
) async throws -> (serve: RunningCommand, port: String) {
    let pki = [["pki", "init"], ["pki", "issue", "server", "localhost", "--dns", "localhost", "--ip", "127.0.0.1"]]
    for command in pki + clients.map({ ["pki", "issue", "client", $0] }) {
        #expect(try await portcullis(command, in: directory).status == 0)
    }
    try FileManager.default.copyItem(
        atPath: repositoryRoot.appendingPathComponent("policies").path, toPath: "\(directory)/policies")
    try """
        listen: 127.0.0.1:0
        tls: {certificate: pki/issued/localhost.crt, key: pki/private/localhost.key, client_ca: pki/ca.crt}
        routes: [{path: /v1/echo, kind: echo}]

        """.appending(extra).write(toFile: "\(directory)/gateway.yaml", atomically: true, encoding: .utf8)
    let command = ["serve", "--config", "gateway.yaml"] + arguments
    let serve = try launcher.isEmpty
        ? RunningCommand(command, in: directory)
        : RunningCommand(Array(launcher.dropFirst()) + [try portcullisBinary()] + command, in: directory, executable: launcher[0])
    #expect(try await serve.waitFor("audit log in"), "\(serve.output)")
    let port = try #require(listeningPort(serve.output), "\(serve.output)")
    return (serve, port)
}

/// The port `serve --config` says it listens on (`portcullis: listening on HOST:PORT; …`).
func listeningPort(_ output: String) -> String? {
    output.split(separator: "\n").first { $0.contains("listening on") }?
        .split(separator: ";").first?.split(separator: ":").last.map(String.init)
}

@Suite("portcullis serve")
struct ServeCommandTests {
    @Test("serve --dev creates the PKI, prints commands that work as printed, and drains on SIGTERM")
    func devModeEndToEnd() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.copyItem(
            atPath: repositoryRoot.appendingPathComponent("policies").path, toPath: "\(directory)/policies")
        let serve = try RunningCommand(["serve", "--dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], in: directory)
        #expect(try await serve.waitFor("Stop with Ctrl-C."), "\(serve.output)")
        #expect(serve.output.contains("created a development CA and issued server, demo-device, demo-operator"))
        for key in ["ca", "server", "demo-device"] {
            let mode = try FileManager.default.attributesOfItem(atPath: "\(directory)/pki/private/\(key).key")[.posixPermissions] as? NSNumber
            #expect(mode?.intValue == 0o600)
        }

        // The banner's openssl command, run exactly as printed.
        let lines = serve.output.split(separator: "\n").map(String.init)
        let openssl = try #require(lines.first { $0.contains("| openssl s_client") })
        let upgraded = try await shell(openssl.trimmingCharacters(in: .whitespaces), in: directory)
        #expect(upgraded.contains("HTTP/1.1 101 Switching Protocols"), "\(upgraded)")

        // The banner's Python command, from `python3 -c '` to the closing `'`.
        let start = try #require(serve.output.range(of: "python3 -c '"))
        let end = try #require(serve.output.range(of: "asyncio.run(main())'", range: start.upperBound..<serve.output.endIndex))
        let python = String(serve.output[start.lowerBound..<end.upperBound])
        let echoed = try await shell(python, in: directory)
        #expect(echoed.contains("hello from demo-device"), "\(echoed)")

        // The README's walkthrough: the operator subscribes, the device publishes.
        let port = try #require(serve.output.split(separator: "\n").first { $0.contains("listening on wss://") }?
            .split(separator: ":").dropFirst(2).first?.prefix { $0.isNumber })
        let environment = "PORTCULLIS_URL=wss://localhost:\(port)/v1/messages"
        let root = repositoryRoot.path
        let python3 = try #require(
            (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":").map { "\($0)/python3" }
                .first { FileManager.default.isExecutableFile(atPath: $0) }, "python3 is not installed; scripts/test installs it")
        let subscriber = try RunningCommand(
            ["\(root)/docs/examples/operator_subscribe.py", "3"], in: directory, executable: python3,
            environment: ["PORTCULLIS_URL": "wss://localhost:\(port)/v1/messages"])
        // Publish only once the operator's subscription is acknowledged.
        #expect(try await subscriber.waitFor(#"operator: {"type":"ack","id":"sub-1"}"#), "\(subscriber.output)")
        let published = try await shell("\(environment) python3 \(root)/docs/examples/device_publish.py", in: directory)
        #expect(published.contains(#"{"type":"ack","id":"pub-2"}"#), "\(published)")
        #expect(published.contains(#""code":"forbidden""#))
        #expect(try await subscriber.waitForExit() == 0)
        #expect(subscriber.output.contains(#"devices/demo-device/telemetry from demo-device: {"seq": 2, "celsius": 20.2}"#), "\(subscriber.output)")

        serve.process.terminate()  // SIGTERM
        #expect(try await serve.waitForExit() == 0)
        let audit = try String(contentsOfFile: "\(directory)/audit/audit.jsonl", encoding: .utf8)
        #expect(audit.contains("\"event\":\"session_opened\""))
        #expect(audit.contains("\"event\":\"gateway_stopped\""))

        // A second run reuses the PKI.
        let again = try RunningCommand(["serve", "--dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], in: directory)
        #expect(try await again.waitFor("Stop with Ctrl-C."))
        #expect(again.output.contains("reusing the existing PKI"))
        again.process.terminate()
        #expect(try await again.waitForExit() == 0)
    }

    @Test("Under a low open-file limit the gateway refuses at accept (open_files) with descriptors to spare, never on EMFILE")
    func openFileLimit() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // 160 descriptors, 128 of them kept back: room for 32 connections, far below max_connections' 10,000.
        let (serve, port) = try await startConfiguredGateway(
            in: directory,
            extra: "handshake_timeout: 10m\nlimits: {per_address: {connections: off, new_per_second: off}, refusal_audit_interval: off}\n",
            launcher: [try tool("prlimit"), "--nofile=160:160"])
        #expect(serve.output.contains("the open-file limit allows 32 connections, fewer than limits.max_connections (10000)"), "\(serve.output)")
        let audit = AuditTail(path: "\(directory)/audit/audit.jsonl")
        var sockets: [Int32] = []
        defer { for socket in sockets { close(socket) } }
        for _ in 0..<40 { sockets.append(try openTCP(port: Int(port)!)) }
        let refusal = await audit.record(timeout: 60) { $0["event"] as? String == "connection_refused" }
        #expect(refusal?["reason"] as? String == "open_files", "\(String(describing: refusal))")
        #expect((refusal?["detail"] as? String)?.contains("the process's open-file limit (160)") == true)
        // Refused without TLS: the gateway closes the socket, and a read sees the end of the stream.
        var refusedClosed = 0
        for socket in sockets {
            var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
            setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var byte: UInt8 = 0
            if recv(socket, &byte, 1, 0) == 0 { refusedClosed += 1 }
        }
        #expect(refusedClosed >= 1 && refusedClosed <= 8, "32 of the 40 fit; \(refusedClosed) were closed")
        for socket in sockets { close(socket) }
        sockets = []
        // With room again, a device is served: nothing failed on EMFILE on the way.
        let served = try await shell(
            "openssl s_client -connect 127.0.0.1:\(port) -servername localhost -CAfile pki/ca.crt "
                + "-cert pki/issued/demo-device.crt -key pki/private/demo-device.key </dev/null", in: directory)
        #expect(served.contains("Verify return code: 0"), "\(served)")
        #expect(!serve.output.contains("Too many open files"), "\(serve.output)")
        serve.process.terminate()
        #expect(try await serve.waitForExit() == 0, "\(serve.output)")
    }

    @Test("SIGTERM with drain_timeout: a client that never answers the close is cut off at the deadline, exit 0")
    func drainDeadline() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Without the drain deadline the gateway would wait close_timeout, 10 minutes, for the close reply.
        let (serve, port) = try await startConfiguredGateway(in: directory, extra: "drain_timeout: 500ms\nclose_timeout: 10m\n")
        // openssl upgrades, then holds the connection without ever answering the gateway's close frame.
        let client = try heldSession(port: port, in: directory)
        defer { client.process.terminate() }
        #expect(try await client.waitFor("101 Switching Protocols"), "\(client.output)")

        let stopping = Date()
        serve.process.terminate()
        #expect(try await serve.waitForExit() == 0)
        // The 500 ms deadline ended it, not the 10-minute close_timeout (a generous bound: the machine may be busy).
        #expect(Date().timeIntervalSince(stopping) < 300, "\(serve.output)")
        #expect(serve.output.contains("drain deadline reached: closing 1 connection(s) still open"), "\(serve.output)")
        let (_, stopped) = try await portcullis(["audit", "query", "--event", "gateway_stopped", "--jsonl"], in: directory)
        #expect(stopped.contains("drained 1 connection(s); 1 still open at the 0.5 seconds deadline were closed"), "\(stopped)")
    }

    @Test("The production example listens on 443; without the privilege the start fails saying how to fix it")
    func privilegedPort() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for arguments in [["pki", "init"], ["pki", "issue", "server", "server", "--dns", "localhost", "--ip", "127.0.0.1"], ["pki", "crl"]] {
            #expect(try await portcullis(arguments, in: directory).status == 0)
        }
        try FileManager.default.copyItem(
            atPath: repositoryRoot.appendingPathComponent("policies").path, toPath: "\(directory)/policies")
        try FileManager.default.copyItem(
            atPath: repositoryRoot.appendingPathComponent("portcullis.example.yaml").path, toPath: "\(directory)/portcullis.yaml")
        // The example as shipped, on loopback; only the audit directory moves out of /var/log.
        var arguments = ["serve", "--config", "portcullis.yaml", "--listen", "127.0.0.1:443", "--audit-dir", "audit", "--admin-listen", "127.0.0.1:0"]
        var executable: String? = nil
        if geteuid() == 0 {
            // root may bind 443: run as nobody, as a gateway without the capability would.
            _ = try await shell("chown -R nobody \(directory)", in: directory)
            arguments = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", try portcullisBinary()] + arguments
            executable = try tool("setpriv")
        }
        let serve = try RunningCommand(arguments, in: directory, executable: executable)
        #expect(try await serve.waitForExit() == 1)
        #expect(serve.output.contains("cannot listen on 127.0.0.1:443: permission denied"), "\(serve.output)")
        #expect(serve.output.contains("setcap 'cap_net_bind_service=+ep'"), "\(serve.output)")
    }

    @Test("An invalid configuration is refused at start with every problem and its line")
    func invalidConfiguration() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try """
            listen: 127.0.0.1:8443
            tls:
              certificate: server.crt
            routes:
              - path: /v1/echo
                kind: mirror
            handshake_timout: 10s
            """.write(toFile: "\(directory)/gateway.yaml", atomically: true, encoding: .utf8)
        let serve = try RunningCommand(["serve", "--config", "gateway.yaml", "--admin-listen", "127.0.0.1:0"], in: directory)
        #expect(try await serve.waitForExit() == 1)
        #expect(serve.output.contains("gateway.yaml:2: tls needs 'key'"), "\(serve.output)")
        #expect(serve.output.contains("gateway.yaml:6: unknown route kind 'mirror'"))
        #expect(serve.output.contains("gateway.yaml:7: unknown key 'handshake_timout'"))
    }

    @Test("Unreadable files and a bad policy stop the start with a message naming them")
    func startupFailures() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: "\(directory)/policies", withIntermediateDirectories: true)
        try "rules:\n  - name: x\n    identities: [a]\n    routes: [/v1/echo]\n    bogus: 1\n"
            .write(toFile: "\(directory)/policies/bad.yaml", atomically: true, encoding: .utf8)
        let serve = try RunningCommand(["serve", "--dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], in: directory)
        #expect(try await serve.waitForExit() == 1)
        #expect(serve.output.contains("policies/bad.yaml:5: unknown key 'bogus'"), "\(serve.output)")

        let missing = try RunningCommand(["serve", "--dev", "--policies", "nowhere"], in: directory)
        #expect(try await missing.waitForExit() == 1)
        #expect(missing.output.contains("nowhere: policies directory not found"), "\(missing.output)")

        // One start lists every problem: the bad policy and the missing TLS files together.
        try """
            listen: 127.0.0.1:0
            tls: {certificate: missing.crt, key: missing.key, client_ca: missing-ca.crt}
            routes: [{path: /v1/echo, kind: echo}]
            """.write(toFile: "\(directory)/gateway.yaml", atomically: true, encoding: .utf8)
        let everything = try RunningCommand(["serve", "--config", "gateway.yaml", "--admin-listen", "127.0.0.1:0"], in: directory)
        #expect(try await everything.waitForExit() == 1)
        #expect(everything.output.contains("policies/bad.yaml:5: unknown key 'bogus'"), "\(everything.output)")
        #expect(everything.output.contains("missing-ca.crt: no such file"))
        #expect(everything.output.contains("missing.crt: cannot read the server certificate chain"))

        let usage = try RunningCommand(["serve"], in: directory)
        #expect(try await usage.waitForExit() != 0)
        #expect(usage.output.contains("--config FILE, or --dev"))
    }
}

/// A plain TCP connection to a loopback port; the caller closes it.
func openTCP(port: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard fd >= 0, connected == 0 else {
        close(fd)
        throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "connect: \(String(cString: strerror(errno)))"])
    }
    return fd
}
