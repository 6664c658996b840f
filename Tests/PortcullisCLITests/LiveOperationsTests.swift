import Foundation
import PortcullisTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A session on /v1/echo held by `portcullis connect` until killed, once it is open (it echoed a line): it
/// answers the gateway's pings, so it stays however long a loaded machine stretches the test (an openssl session
/// does not, and was closed by the ping timeout); what ends it is printed as `closed by the gateway: CODE REASON`.
func echoSession(port: String, in directory: String) async throws -> RunningCommand {
    let session = try RunningCommand(
        ["connect", "wss://localhost:\(port)/v1/echo", "--cert", "pki/issued/demo-device.crt", "--key", "pki/private/demo-device.key",
         "--ca", "pki/ca.crt", "--timeout", "300"],
        in: directory)
    try session.send("open\n")
    #expect(try await session.waitFor("open\n"), "\(session.output)")
    return session
}

/// The session held open by `openssl s_client` on /v1/echo until killed; its output shows the gateway's frames.
/// It answers nothing (pings, the close): for tests of a peer that does not.
func heldSession(port: String, in directory: String) throws -> RunningCommand {
    try RunningCommand(
        ["-c", opensslUpgrade(
            port: port, certificate: "pki/issued/demo-device.crt", key: "pki/private/demo-device.key", hold: "600")],
        in: directory, executable: "/bin/bash")
}

/// Audit records of `event`, as JSON objects, read with `portcullis audit query`.
func auditRecords(_ event: String, in directory: String) async throws -> [[String: Any]] {
    try jsonLines(try await portcullis(["audit", "query", "--event", event, "--jsonl"], in: directory).output)
}

/// The admin listener's base URL from serve's output.
func adminURL(_ serve: RunningCommand) throws -> String {
    let output = serve.output
    let start = try #require(output.range(of: "http://127.0.0.1:") ?? output.range(of: "https://127.0.0.1:"), "\(output)")
    return String(output[start.lowerBound...].prefix { !$0.isWhitespace && $0 != ";" }).replacingOccurrences(of: "/metrics,", with: "")
        .replacingOccurrences(of: "/metrics", with: "")
}

@Suite("Live operations: reload, rotation, admin listener")
struct LiveOperationsTests {
    @Test("serve --dev picks up pki/crl.pem when the first revocation creates it, and ends the revoked session")
    func devPicksUpFirstCRL() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }
        #expect(!FileManager.default.fileExists(atPath: "\(directory)/pki/crl.pem"))
        let session = try await echoSession(port: port, in: directory)
        defer { session.process.terminate() }

        #expect(try await portcullis(["pki", "revoke", "demo-device"], in: directory).status == 0)
        // The close frame (1008) carries the reason; openssl prints the frame's bytes.
        #expect(try await session.waitFor("certificate_revoked", timeout: 60), "\(session.output)\n\(serve.output)")
        #expect(serve.output.contains("reloaded: CRL: newly revoked"), "\(serve.output)")
        let reloads = try await auditRecords("reload", in: directory)
        #expect(reloads.contains { ($0["detail"] as? String)?.contains("file change: pki/crl.pem") == true }, "\(reloads)")
        let ended = try #require(try await auditRecords("session_terminated", in: directory).first)
        #expect(ended["reason"] as? String == "certificate_revoked")
        #expect(ended["identity"] as? String == "demo-device")
    }

    @Test("SIGHUP reloads: a broken policy file is refused naming file and line, the running policies stay")
    func sighup() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startConfiguredGateway(
            in: directory, extra: "reload: {watch_interval: off}\n", arguments: ["--admin-listen", "off"])
        defer { serve.process.terminate() }
        let session = try await echoSession(port: port, in: directory)
        defer { session.process.terminate() }

        try "rules:\n  - name: typo\n    identities: [demo-device]\n    routez: [/v1/echo]\n".write(
            toFile: "\(directory)/policies/typo.yaml", atomically: true, encoding: .utf8)
        kill(serve.process.processIdentifier, SIGHUP)
        #expect(try await serve.waitFor("reload rejected"), "\(serve.output)")
        #expect(serve.output.contains("policies/typo.yaml:4"), "\(serve.output)")
        let failed = try #require(try await auditRecords("reload_failed", in: directory).first)
        #expect((failed["detail"] as? String)?.hasPrefix("SIGHUP: ") == true)
        #expect((failed["detail"] as? String)?.contains("policies/typo.yaml:4") == true)
        #expect(serve.process.isRunning)
        #expect(!session.output.contains("no_matching_rule"), "the held session was disturbed: \(session.output)")

        // Fixed: the rule that granted demo-device is replaced by one that does not, and SIGHUP applies it.
        try FileManager.default.removeItem(atPath: "\(directory)/policies/typo.yaml")
        let policy = try String(contentsOfFile: "\(directory)/policies/example.yaml", encoding: .utf8)
        try policy.replacingOccurrences(of: "demo-device", with: "someone-else")
            .write(toFile: "\(directory)/policies/example.yaml", atomically: true, encoding: .utf8)
        kill(serve.process.processIdentifier, SIGHUP)
        #expect(try await session.waitFor("no_matching_rule", timeout: 60), "\(session.output)\n\(serve.output)")
        let applied = try await auditRecords("reload", in: directory)
        #expect(applied.contains { ($0["detail"] as? String)?.contains("SIGHUP: policies: changed example.yaml") == true }, "\(applied)")
        kill(serve.process.processIdentifier, SIGTERM)
        #expect(try await serve.waitForExit() == 0)
    }

    @Test("Editing the configuration file's allowed_origins is picked up by the watcher and audited as what changed")
    func configurationFileWatched() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, _) = try await startConfiguredGateway(
            in: directory, extra: "allowed_origins: [\"https://console.example.com\"]\nreload: {watch_interval: 100ms, debounce: 100ms}\n")
        defer { serve.process.terminate() }
        let file = "\(directory)/gateway.yaml"
        let text = try String(contentsOfFile: file, encoding: .utf8)
        try text.replacingOccurrences(of: "https://console.example.com", with: "https://ops.example.com")
            .write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try await eventually(every: .milliseconds(250)) {
            try await auditRecords("reload", in: directory).contains {
                ($0["detail"] as? String)?.contains(#"allowed origins: ["https://console.example.com"] → ["https://ops.example.com"]"#) == true
            }
        }, "\(serve.output)")
        let reload = try #require(try await auditRecords("reload", in: directory).last)
        #expect((reload["detail"] as? String)?.hasPrefix("file change: gateway.yaml") == true, "\(reload)")
    }

    /// Opens sessions one after the other and keeps long-lived ones talking until `stop` exists, then prints a JSON
    /// summary: handshakes that worked and failed, long-lived sessions dropped, and the server serials seen.
    static let rotationDriver = #"""
        import asyncio, json, os, ssl, sys, time
        import websockets

        port, ca, cert, key, stop = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
        url = f"wss://localhost:{port}/v1/echo"
        result = {"handshakes": 0, "failures": [], "dropped": [], "messages": 0, "serials": []}

        def context():
            tls = ssl.create_default_context(cafile=ca)
            tls.load_cert_chain(cert, key)
            return tls

        async def long_lived(n):
            try:
                async with websockets.connect(url, ssl=context(), open_timeout=300) as ws:
                    while not os.path.exists(stop):
                        await ws.send(f"long-lived {n}")
                        assert await ws.recv() == f"long-lived {n}"
                        result["messages"] += 1
                        await asyncio.sleep(0.02)
            except Exception as error:
                result["dropped"].append(f"{n}: {type(error).__name__}: {error}")

        async def loop():
            while not os.path.exists(stop):
                try:
                    # A new context each time: no session ticket, a full handshake against the current certificate.
                    async with websockets.connect(url, ssl=context(), open_timeout=300) as ws:
                        serial = "%x" % int(ws.transport.get_extra_info("ssl_object").getpeercert()["serialNumber"], 16)
                        if not result["serials"] or result["serials"][-1] != serial:
                            result["serials"].append(serial)
                        await ws.send("hello")
                        await ws.recv()
                    result["handshakes"] += 1
                    if result["handshakes"] == 20:
                        print("warmed up", flush=True)
                except Exception as error:
                    result["failures"].append(f"{type(error).__name__}: {error}")
                # Paced, so that the test suite running beside it keeps its share of the two cores.
                await asyncio.sleep(0.03)

        async def main():
            await asyncio.gather(*[long_lived(n) for n in range(5)], loop())
            print(json.dumps(result), flush=True)

        asyncio.run(main())
        """#

    @Test(
        "Zero-downtime rotation of the server certificate: no failed handshake, no dropped session, new serial seen",
        arguments: ["renew", "watch --renew"])
    func zeroDowntimeRotation(renewal: String) async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A server certificate due for renewal at once, so that `pki watch --renew` renews it.
        try FileManager.default.createDirectory(atPath: "\(directory)/pki", withIntermediateDirectories: true)
        try "server:\n  days: 30\n  renew_at: 0.0001\nclient:\n  days: 90\n  renew_at: 0.6667\n".write(
            toFile: "\(directory)/pki/profiles.yaml", atomically: true, encoding: .utf8)
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }
        try Self.rotationDriver.write(toFile: "\(directory)/driver.py", atomically: true, encoding: .utf8)
        let driver = try RunningCommand(
            ["driver.py", port, "pki/ca.crt", "pki/issued/demo-device.crt", "pki/private/demo-device.key", "stop"],
            in: directory, executable: try tool("python3"))
        defer { driver.process.terminate() }
        #expect(try await driver.waitFor("warmed up", timeout: 120), "\(driver.output)")

        let (status, output) = try await portcullis(["pki"] + renewal.split(separator: " ").map(String.init)
            + (renewal == "renew" ? ["server", "--json"] : ["--once"]), in: directory)
        #expect(status == 0, "\(output)")
        let (_, listed) = try await portcullis(["pki", "list", "--json"], in: directory)
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(listed.utf8)) as? [[String: Any]])
        let server = try #require(entries.last {
            $0["name"] as? String == "server" && !["superseded", "revoked"].contains($0["status"] as? String ?? "")
        }, "\(listed)")
        let newSerial = try #require(server["serial"] as? String)
        #expect(try await eventually(every: .milliseconds(250)) {
            try await auditRecords("reload", in: directory).contains {
                ($0["detail"] as? String)?.contains("→ \(newSerial)") == true
            }
        }, "\(serve.output)")
        // Sessions keep opening for a while under the new certificate.
        try await Task.sleep(for: .seconds(2))
        #expect(FileManager.default.createFile(atPath: "\(directory)/stop", contents: nil))
        #expect(try await driver.waitForExit(timeout: 120) == 0, "\(driver.output)")
        let line = try #require(driver.output.split(separator: "\n").last)
        let result = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect((result["failures"] as? [String])?.isEmpty == true, "\(result)")
        #expect((result["dropped"] as? [String])?.isEmpty == true, "\(result)")
        #expect((result["handshakes"] as? Int ?? 0) > 25, "\(result)")
        #expect((result["messages"] as? Int ?? 0) > 100, "\(result)")
        let serials = try #require(result["serials"] as? [String])
        #expect(serials.count == 2, "\(serials)")
        #expect(serials.last == String(newSerial.drop { $0 == "0" }), "\(serials) vs \(newSerial)")
    }

    @Test("The admin listener: /healthz, /readyz, and /metrics that promtool accepts, with the session and refusal seen")
    func adminMetrics() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }
        let admin = try adminURL(serve)
        let session = try await echoSession(port: port, in: directory)
        defer { session.process.terminate() }
        // A refusal: the operator certificate on a path no route serves (404 unknown_route).
        _ = try await upgrade("demo-operator", path: "/v1/nowhere", port: port, in: directory)

        let curl = try tool("curl")
        #expect(try await shell("\(curl) -s \(admin)/healthz", in: directory) == "ok\n")
        #expect(try await shell("\(curl) -s -w ' %{http_code}' \(admin)/readyz", in: directory) == "ready\n 200")
        #expect(try await shell("\(curl) -s -o /dev/null -w '%{http_code}' \(admin)/nope", in: directory) == "404")
        let metrics = try await shell("\(curl) -s \(admin)/metrics", in: directory)
        try metrics.write(toFile: "\(directory)/metrics.txt", atomically: true, encoding: .utf8)
        let check = try await shell("\(try tool("promtool")) check metrics < metrics.txt 2>&1; echo \"exit $?\"", in: directory)
        #expect(check.hasSuffix("exit 0\n"), "\(check)\n\(metrics)")
        for series in [
            #"portcullis_sessions_open{route="/v1/echo"} 1.0"#,
            #"portcullis_refusals_total{reason="unknown_route"} 1"#,
            #"portcullis_tls_handshakes_total{result="full"} 2"#,
            #"portcullis_tls_handshake_duration_seconds_count 2"#,
            #"portcullis_reloads_total{result="rejected"} 0"#,
            #"portcullis_client_certificates_in_use 1.0"#,
            #"portcullis_certificate_expiry_seconds{kind="server",subject="CN=server""#,
            #"portcullis_certificate_expiry_seconds{kind="client",subject="demo-device""#,
            "portcullis_audit_queue_depth ",
            // The event loops have been probed since the listener started.
            "portcullis_event_loop_lag_seconds_count ",
            "portcullis_event_loop_lag_max_seconds ",
        ] {
            #expect(metrics.contains(series), "\(series) missing from\n\(metrics)")
        }
    }

    @Test("With admin.client_ca the admin listener speaks TLS and wants a client certificate of that CA")
    func adminClientCertificate() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, _) = try await startConfiguredGateway(
            in: directory, clients: ["admin"], extra: "admin: {listen: 127.0.0.1:0, client_ca: pki/ca.crt}\n", arguments: [])
        defer { serve.process.terminate() }
        #expect(serve.output.contains("admin on https://"), "\(serve.output)")
        let admin = try adminURL(serve)
        let curl = try tool("curl")
        let withCertificate = try await shell(
            "\(curl) -s --cacert pki/ca.crt --cert pki/issued/admin.crt --key pki/private/admin.key \(admin)/healthz",
            in: directory)
        #expect(withCertificate == "ok\n", "\(serve.output)")
        let without = try await shell("\(curl) -s -o /dev/null -w '%{http_code}' --cacert pki/ca.crt \(admin)/healthz", in: directory)
        #expect(without == "000", "answered without a client certificate: \(without)")
    }
}
