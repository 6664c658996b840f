import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One WebSocket upgrade of `name`'s certificate with openssl; its output.
func upgrade(_ name: String, path: String = "/v1/echo", port: String, in directory: String) async throws -> String {
    try await shell(
        opensslUpgrade(
            path: path, port: port, certificate: "pki/issued/\(name).crt", key: "pki/private/\(name).key", hold: "0.5"),
        in: directory)
}

/// Every line of `output` as a JSON object; a line that is not one fails the test.
func jsonLines(_ output: String) throws -> [[String: Any]] {
    try output.split(separator: "\n").map {
        try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any], "not JSON: \($0)")
    }
}

@Suite("portcullis audit")
struct AuditCommandTests {
    @Test("One timeline: query --serial shows a certificate's issue, session, revocation and refusal; formats, stats, filters")
    func timeline() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var (serve, port) = try await startDevGateway(in: directory)
        #expect(try await upgrade("demo-device", port: port, in: directory).contains("101 Switching Protocols"))
        serve.process.terminate()
        #expect(try await serve.waitForExit() == 0)

        let (revokeStatus, revoked) = try await portcullis(["pki", "revoke", "demo-device", "--json"], in: directory)
        #expect(revokeStatus == 0, "\(revoked)")
        let serial = try #require(
            (try JSONSerialization.jsonObject(with: Data(revoked.utf8)) as? [String: Any])?["serial"] as? String)
        (serve, port) = try await startDevGateway(in: directory)
        #expect(!(try await upgrade("demo-device", port: port, in: directory).contains("101 Switching Protocols")))
        #expect(try await upgrade("demo-operator", path: "/v1/messages", port: port, in: directory).contains("101 Switching Protocols"))
        serve.process.terminate()
        #expect(try await serve.waitForExit() == 0)

        let (status, history) = try await portcullis(["audit", "query", "--serial", serial.uppercased(), "--jsonl"], in: directory)
        #expect(status == 0, "\(history)")
        let events = try jsonLines(history).map { [$0["event"], $0["operation"] ?? $0["reason"]].compactMap { $0 as? String } }
        #expect(events == [
            ["pki_operation", "issue"], ["session_opened", "admitted"], ["session_closed"],
            ["pki_operation", "revoke"], ["tls_refused", "certificate_revoked"],
        ], "\(history)")

        let (_, table) = try await portcullis(["audit", "query", "--serial", serial], in: directory)
        let rows = table.split(separator: "\n")
        #expect(rows.first?.hasPrefix("SEQ  TIME") == true, "\(table)")
        #expect(rows.count == 6)
        #expect(rows.last?.contains("tls_refused") == true && rows.last?.contains("certificate_revoked") == true)
        let (_, array) = try await portcullis(["audit", "query", "--decision", "deny", "--json"], in: directory)
        let denied = try #require(try JSONSerialization.jsonObject(with: Data(array.utf8)) as? [[String: Any]], "\(array)")
        #expect(denied.map { $0["reason"] as? String } == ["certificate_revoked"])

        // Filters combine; relative and absolute times; a bad value is one line and exit 2.
        let (_, opened) = try await portcullis(
            ["audit", "query", "--since", "1h", "--event", "session_opened", "--peer", "127.0.0.1", "--path", "/v1/messages",
             "--identity", "demo-operator", "--jsonl"], in: directory)
        #expect(try jsonLines(opened).count == 1, "\(opened)")
        let (_, none) = try await portcullis(["audit", "query", "--until", "2020-01-01"], in: directory)
        #expect(none == "(no matching records)\n")
        let (badStatus, bad) = try await portcullis(["audit", "query", "--since", "yesterday"], in: directory)
        #expect(badStatus == 2)
        #expect(bad.contains("--since 'yesterday' is neither RFC 3339"), "\(bad)")
        // A bound centuries back is the start of time, not a trap converting it (this crashed the command).
        for farBack in ["1e20s", "1e300s"] {
            let (farStatus, far) = try await portcullis(["audit", "query", "--since", farBack, "--decision", "deny"], in: directory)
            #expect(farStatus == 0 && far.contains("certificate_revoked"), "--since \(farBack): \(far)")
        }
        let (infiniteStatus, _) = try await portcullis(["audit", "query", "--since", "1e308d"], in: directory)
        #expect(infiniteStatus == 2)
        let (watchStatus, watch) = try await portcullis(["pki", "watch", "--interval", "1e300d"], in: directory)
        #expect(watchStatus == 64 && watch.contains("--interval must be"), "\(watch)")
        let (missingStatus, missing) = try await portcullis(["audit", "verify", "--audit-dir", "nowhere"], in: directory)
        #expect(missingStatus == 2 && missing.contains("no audit log in nowhere"), "\(missing)")

        let (_, statsOutput) = try await portcullis(["audit", "stats", "--since", "24h", "--json"], in: directory)
        let stats = try #require(try JSONSerialization.jsonObject(with: Data(statsOutput.utf8)) as? [String: Any], "\(statsOutput)")
        #expect((stats["events"] as? [String: Int])?["session_opened"] == 2)
        #expect((stats["events"] as? [String: Int])?["gateway_started"] == 2)
        #expect((stats["reasons"] as? [String: Int])?["certificate_revoked"] == 1)
        #expect((stats["decisions"] as? [String: Int]) == ["allow": 2, "deny": 1])
        #expect((stats["refused_identities"] as? [String: Int]) == ["CN=demo-device": 1])
        #expect((stats["refused_peers"] as? [String: Int]) == ["127.0.0.1": 1])
        let (_, readable) = try await portcullis(["audit", "stats"], in: directory)
        #expect(readable.contains("Most refused identities:\n  CN=demo-device  1"), "\(readable)")

        // A rotation shows under both serials: the new certificate supersedes, the old one is superseded.
        let (_, rotated) = try await portcullis(["pki", "rotate", "demo-operator", "--json"], in: directory)
        let newSerial = try #require((try JSONSerialization.jsonObject(with: Data(rotated.utf8)) as? [String: Any])?["serial"] as? String)
        let (_, superseded) = try await portcullis(["audit", "query", "--serial", newSerial, "--jsonl"], in: directory)
        let handOver = try #require(try jsonLines(superseded).first)
        let oldSerial = try #require((handOver["detail"] as? String)?.split(separator: " ").last.map(String.init))
        let (_, oldHistory) = try await portcullis(["audit", "query", "--serial", oldSerial, "--jsonl"], in: directory)
        let oldEvents = try jsonLines(oldHistory).map { [$0["event"], $0["operation"] ?? $0["reason"]].compactMap { $0 as? String } }
        #expect(oldEvents == [["pki_operation", "issue"], ["session_opened", "admitted"], ["session_closed"], ["pki_operation", "supersede"]], "\(oldHistory)")

        let (verifyStatus, verified) = try await portcullis(["audit", "verify"], in: directory)
        #expect(verifyStatus == 0)
        #expect(verified.hasPrefix("OK, "), "\(verified)")
    }

    @Test("verify: OK with the checkpoint, FAIL with file, line and seq; hashes and signatures check with sha256sum and openssl")
    func verify() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for arguments in [["pki", "init"], ["pki", "issue", "client", "sensor-1"], ["pki", "issue", "client", "sensor-2"]] {
            let (status, output) = try await portcullis(arguments, in: directory)
            #expect(status == 0, "\(output)")
        }
        let (status, output) = try await portcullis(["audit", "verify"], in: directory)
        #expect(status == 0)
        // init, checkpoint, issue, checkpoint, issue, checkpoint: each command signs what it wrote.
        #expect(output.hasPrefix("OK, 6 records, chain intact up to checkpoint 6\n1 segment, last seq 6"), "\(output)")
        #expect(output.contains(", closed at "), "\(output)")
        // The pki commands closed the log: no age is expected of it.
        let (aged, agedOutput) = try await portcullis(["audit", "verify", "--max-age", "1ms"], in: directory)
        #expect(aged == 0, "\(agedOutput)")
        try FileManager.default.removeItem(atPath: "\(directory)/audit/checkpoint.json")
        let (missing, missingOutput) = try await portcullis(["audit", "verify"], in: directory)
        #expect(missing == 1)
        #expect(missingOutput.hasPrefix("FAIL: seq 6: checkpoint missing: "), "\(missingOutput)")
        _ = try await portcullis(["pki", "issue", "client", "sensor-3"], in: directory)

        // The documented recipes, with other tools than ours.
        let recomputed = try await shell(
            #"sed -n 3p audit/audit.jsonl | sed 's/,"hash":"[0-9a-f]*"}$/}/' | tr -d '\n' | sha256sum | cut -d' ' -f1"#,
            in: directory)
        let stored = try await shell(#"sed -n 3p audit/audit.jsonl | sed 's/.*"hash":"\([0-9a-f]*\)"}$/\1/'"#, in: directory)
        #expect(recomputed == stored && recomputed.count == 65, "\(recomputed) \(stored)")
        let signature = try await shell(
            #"jq -j '"portcullis-audit-checkpoint-v2:\(if .closed then "closed" else "latest" end):\(.seq):\(.time):\(.hash)"' "#
                + #"audit/checkpoint.json > message && "#
                + #"jq -r '.signature | ltrimstr("v2:")' audit/checkpoint.json | base64 -d > signature && "#
                + "openssl pkeyutl -verify -pubin -inkey audit/checkpoint-key.pub.pem -rawin -in message -sigfile signature",
            in: directory)
        #expect(signature.contains("Signature Verified Successfully"), "\(signature)")

        _ = try await shell(#"sed -i '3s/sensor-1/sensor-X/' audit/audit.jsonl"#, in: directory)
        let (failed, problem) = try await portcullis(["audit", "verify"], in: directory)
        #expect(failed == 1)
        #expect(problem.hasPrefix("FAIL: audit/audit.jsonl:3: seq 3: edited: the record does not match its hash"), "\(problem)")
    }

    @Test("tail shows the last records and -f follows new ones across a rotation")
    func tail() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for arguments in [["pki", "init"], ["pki", "issue", "client", "a"], ["pki", "issue", "client", "b"]] {
            #expect(try await portcullis(arguments, in: directory).status == 0)
        }
        let (_, last) = try await portcullis(["audit", "tail", "-n", "3", "--jsonl", "--event", "pki_operation"], in: directory)
        #expect(try jsonLines(last).map { $0["name"] as? String ?? $0["operation"] as? String } == ["init", "a", "b"])

        let follower = try RunningCommand(["audit", "tail", "-f", "-n", "0", "--jsonl", "--event", "pki_operation"], in: directory)
        defer { follower.process.terminate() }
        try await Task.sleep(for: .milliseconds(300))
        #expect(try await portcullis(["pki", "issue", "client", "c"], in: directory).status == 0)
        #expect(try await follower.waitFor(#""name":"c""#, timeout: 60), "\(follower.output)")
        // The active segment is closed as a writer rotates it; the next record lands in a new audit.jsonl.
        #expect(rename("\(directory)/audit/audit.jsonl", "\(directory)/audit/audit-00000000000000000001.jsonl") == 0)
        #expect(try await portcullis(["pki", "issue", "client", "d"], in: directory).status == 0)
        #expect(try await follower.waitFor(#""name":"d""#, timeout: 60), "\(follower.output)")
        #expect(!follower.output.contains(#""name":"a""#))
        // The writer found the chain's head in the closed segment and carried on.
        let (status, verified) = try await portcullis(["audit", "verify"], in: directory)
        #expect(status == 0 && verified.contains("2 segments"), "\(verified)")
    }

    @Test("kill -9 during heavy audit traffic: verify accepts what is on disk, the next start repairs and continues the chain")
    func crash() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        let load = try RunningCommand(
            ["bench", "connect", "--url", "wss://127.0.0.1:\(port)/v1/echo", "--duration", "20s", "--warmup", "0s",
             "--concurrency", "2"], in: directory)
        defer { load.process.terminate() }
        // Wait for the load to be well under way (a few hundred records), then kill the gateway without warning.
        // Two connections at a time keep the gateway's writer busy without starving tests running alongside.
        let segment = "\(directory)/audit/audit.jsonl"
        let deadline = Date().addingTimeInterval(20)
        while ((try? FileManager.default.attributesOfItem(atPath: segment)[.size] as? Int) ?? 0) < 150_000, Date() < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        kill(serve.process.processIdentifier, SIGKILL)
        _ = try await serve.waitForExit()
        load.process.terminate()

        let (status, output) = try await portcullis(["audit", "verify"], in: directory)
        #expect(status == 0, "\(output)")
        let records = try #require(Int(output.split(separator: " ")[1].filter(\.isNumber)), "\(output)")
        #expect(records > 200, "\(output)")
        let torn = output.contains("torn final line")

        let (again, _) = try await startDevGateway(in: directory)
        again.process.terminate()
        #expect(try await again.waitForExit() == 0)
        let (after, verified) = try await portcullis(["audit", "verify"], in: directory)
        #expect(after == 0, "\(verified)")
        #expect(!verified.contains("torn final line"))
        let (_, started) = try await portcullis(["audit", "query", "--event", "gateway_started", "--jsonl"], in: directory)
        #expect(try jsonLines(started).count == 2)
        let (_, repaired) = try await portcullis(["audit", "query", "--event", "audit_repaired", "--jsonl"], in: directory)
        #expect(try jsonLines(repaired).count == (torn ? 1 : 0), "\(repaired)")
    }

    @Test("pki report: never seen, two addresses at once, used after rotation, revoked but still trying; exit 1")
    func fleetReport() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var (serve, port) = try await startDevGateway(in: directory)
        #expect(try await portcullis(["pki", "issue", "client", "sensor-1"], in: directory).status == 0)
        // demo-operator from two loopback addresses at once (Linux routes all of 127/8 to lo).
        let both = try await shell(
            """
            python3 -c 'import asyncio, ssl, websockets
            async def main():
                tls = ssl.create_default_context(cafile="pki/ca.crt")
                tls.load_cert_chain("pki/issued/demo-operator.crt", "pki/private/demo-operator.key")
                a = await websockets.connect("wss://localhost:\(port)/v1/messages", ssl=tls, local_addr=("127.0.0.1", 0), open_timeout=300)
                b = await websockets.connect("wss://localhost:\(port)/v1/messages", ssl=tls, local_addr=("127.0.0.2", 0), open_timeout=300)
                # Both stay open a moment: the gateway may record the second opening on another event loop later.
                await asyncio.sleep(0.5); await a.close(); await b.close(); print("both open")
            asyncio.run(main())' 2>&1
            """, in: directory)
        #expect(both.contains("both open"), "\(both)")
        // The old demo-device certificate is kept and used after its rotation (the running gateway still trusts it).
        _ = try await shell("cp pki/issued/demo-device.crt old.crt && cp pki/private/demo-device.key old.key", in: directory)
        #expect(try await portcullis(["pki", "rotate", "demo-device"], in: directory).status == 0)
        let old = try await shell(
            opensslUpgrade(port: port, certificate: "old.crt", key: "old.key", hold: "0.5"), in: directory)
        #expect(old.contains("101 Switching Protocols"), "\(old)")
        serve.process.terminate()
        #expect(try await serve.waitForExit() == 0)
        #expect(try await portcullis(["pki", "revoke", "demo-operator"], in: directory).status == 0)
        (serve, port) = try await startDevGateway(in: directory)
        #expect(!(try await upgrade("demo-operator", path: "/v1/messages", port: port, in: directory)).contains("101"))
        serve.process.terminate()
        #expect(try await serve.waitForExit() == 0)

        let (status, text) = try await portcullis(["pki", "report"], in: directory)
        #expect(status == 1, "\(text)")
        let (_, json) = try await portcullis(["pki", "report", "--json"], in: directory)
        let report = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: [[String: Any]]], "\(json)")
        let names = { (key: String) in Set((report[key] ?? []).compactMap { $0["name"] as? String }) }
        #expect(names("never_seen") == ["sensor-1", "demo-device"], "\(json)")  // demo-device: its new certificate
        #expect(names("concurrent_peers") == ["demo-operator"], "\(json)")
        #expect((report["concurrent_peers"]?.first?["detail"] as? [String: String])?["hosts"] == "127.0.0.1,127.0.0.2")
        #expect(names("superseded_in_use") == ["demo-device"], "\(json)")
        #expect(names("revoked_attempts") == ["demo-operator"], "\(json)")
        #expect((report["revoked_attempts"]?.first?["detail"] as? [String: String])?["attempts"] == "1")
        #expect(text.contains("Revoked, still trying to connect (1):\n  demo-operator"), "\(text)")
    }
}
