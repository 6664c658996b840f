import Foundation
import Testing

@Suite("portcullis policy")
struct PolicyCommandTests {
    /// A scratch directory holding a copy of the repository's policies.
    private func workspace() throws -> String {
        let directory = try scratchDirectory()
        try FileManager.default.copyItem(
            atPath: repositoryRoot.appendingPathComponent("policies").path, toPath: "\(directory)/policies")
        return directory
    }

    private func json(_ output: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any], "\(output)")
    }

    @Test("check warns that the example's SPIFFE and CN mappings both give device-42; --strict turns that into exit 2")
    func checkExample() async throws {
        let directory = try workspace()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let check = try await portcullis(["policy", "check"], in: directory)
        #expect(check.status == 0, "\(check.output)")
        #expect(check.output.contains(
            "policies/example.yaml:10: warning: identity mappings at policies/example.yaml:5 and policies/example.yaml:10 "
                + "can give the same identity to different certificates: 'device-42' from san_uri "
                + "'spiffe://example.test/device/42' and from cn 'device-42' [duplicate-identity]"),
            "\(check.output)")
        #expect(!check.output.contains("error:"))

        let strict = try await portcullis(["policy", "check", "--strict", "policies"], in: directory)
        #expect(strict.status == 2, "\(strict.output)")
        #expect(strict.output.contains("[duplicate-identity]"))
    }

    @Test("check reports what the gateway would refuse as file:line and exits 1; --json parses")
    func checkBroken() async throws {
        let directory = try workspace()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try """
            rules:
              - name: typo
                identities: [demo-device]
                routes: [/v1/echo]
                colour: blue
            """.write(toFile: "\(directory)/policies/zz-broken.yaml", atomically: true, encoding: .utf8)
        let check = try await portcullis(["policy", "check"], in: directory)
        #expect(check.status == 1, "\(check.output)")
        #expect(check.output.contains("policies/zz-broken.yaml:5: error: unknown key 'colour' in a rule"), "\(check.output)")

        let report = try json(try await portcullis(["policy", "check", "--json"], in: directory).output)
        #expect(report["status"] as? String == "errors")
        #expect(report["files"] as? [String] == ["example.yaml", "zz-broken.yaml"])
        let errors = try #require(report["errors"] as? [[String: Any]])
        #expect(errors.first?["file"] as? String == "policies/zz-broken.yaml")
        #expect(errors.first?["line"] as? Int == 5)

        try FileManager.default.removeItem(atPath: "\(directory)/policies/zz-broken.yaml")
        let clean = try json(try await portcullis(["policy", "check", "--json"], in: directory).output)
        #expect(clean["status"] as? String == "ok")
        let warnings = try #require(clean["warnings"] as? [[String: Any]])
        #expect(warnings.contains { $0["code"] as? String == "duplicate-identity" && $0["line"] as? Int == 10 })
    }

    @Test("explain names identity, mapping, rule, grants and limits of an admitted device, and the reason of a refusal")
    func explain() async throws {
        let directory = try workspace()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try await portcullis(["pki", "init"], in: directory).status == 0)
        let issued = try await portcullis(
            ["pki", "issue", "client", "unit-42", "--uri", "spiffe://example.test/device/42"], in: directory)
        #expect(issued.status == 0, "\(issued.output)")
        #expect(try await portcullis(["pki", "issue", "client", "sensor-9"], in: directory).status == 0)

        let admitted = try await portcullis(
            ["policy", "explain", "--cert", "pki/issued/unit-42.crt", "--publish", "devices/device-42/telemetry"],
            in: directory)
        #expect(admitted.status == 0, "\(admitted.output)")
        #expect(admitted.output.contains(
            "identity:    device-42 (groups: devices), from mapping policies/example.yaml:5: "
                + "san_uri 'spiffe://example.test/device/*' -> 'device-{*}'"), "\(admitted.output)")
        #expect(admitted.output.contains("decision:    ADMITTED by rule 'device-messages' (policies/example.yaml:23)"))
        #expect(admitted.output.contains("publish:     devices/device-42/telemetry"))
        #expect(admitted.output.contains("limits:      sessions 2, messages_per_second 50"))
        #expect(admitted.output.contains("publish devices/device-42/telemetry: allowed"))

        let forbidden = try await portcullis(
            ["policy", "explain", "--cert", "pki/issued/unit-42.crt", "--subscribe", "devices/#"], in: directory)
        #expect(forbidden.status == 1, "\(forbidden.output)")
        #expect(forbidden.output.contains("subscribe devices/#: FORBIDDEN: no grant covers a subscription to 'devices/#'"))

        let refused = try await portcullis(
            ["policy", "explain", "--cert", "pki/issued/sensor-9.crt", "--path", "/v1/echo", "--json"], in: directory)
        #expect(refused.status == 1, "\(refused.output)")
        let answer = try json(refused.output)
        #expect(answer["admitted"] as? Bool == false)
        #expect(answer["reason"] as? String == "no_matching_rule")
        #expect((answer["identity"] as? [String: Any])?["name"] as? String == "sensor-9")

        let origin = try json(try await portcullis(
            ["policy", "explain", "--cert", "pki/issued/unit-42.crt", "--origin", "https://evil.example", "--json"],
            in: directory).output)
        #expect(origin["reason"] as? String == "origin_not_allowed")

        let unreadable = try await portcullis(["policy", "explain", "--cert", "no-such.crt"], in: directory)
        #expect(unreadable.status == 2)
        let usage = try await portcullis(["policy", "explain", "--cert", "pki/issued/unit-42.crt", "--publish", "a/#"], in: directory)
        #expect(usage.status == 64, "\(usage.output)")
    }

    @Test("explain --diff shows a grant a policy change removes, and exits 0 when nothing changes")
    func explainDiff() async throws {
        let directory = try workspace()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try await portcullis(["pki", "init"], in: directory).status == 0)
        #expect(try await portcullis(["pki", "issue", "client", "demo-device"], in: directory).status == 0)
        try FileManager.default.copyItem(atPath: "\(directory)/policies", toPath: "\(directory)/proposed")
        let example = try String(contentsOfFile: "\(directory)/proposed/example.yaml", encoding: .utf8)
        let changed = example.replacingOccurrences(of: "    publish: [\"devices/{identity}/telemetry\"]\n", with: "")
        #expect(changed != example)
        try changed.write(toFile: "\(directory)/proposed/example.yaml", atomically: true, encoding: .utf8)

        let same = try await portcullis(
            ["policy", "explain", "--cert", "pki/issued/demo-device.crt", "--diff", "policies"], in: directory)
        #expect(same.status == 0, "\(same.output)")
        #expect(same.output.contains("no change for this certificate on /v1/messages"))

        let diff = try await portcullis(
            ["policy", "explain", "--cert", "pki/issued/demo-device.crt", "--publish", "devices/demo-device/telemetry",
             "--diff", "proposed"], in: directory)
        #expect(diff.status == 1, "\(diff.output)")
        #expect(diff.output.contains("- publish devices/demo-device/telemetry"), "\(diff.output)")
        #expect(diff.output.contains("~ publish devices/demo-device/telemetry: allowed -> forbidden"))
        #expect(!diff.output.contains("mapping"))

        let report = try json(try await portcullis(
            ["policy", "explain", "--cert", "pki/issued/demo-device.crt", "--diff", "proposed", "--json"], in: directory).output)
        let changes = try #require(report["changes"] as? [[String: Any]])
        #expect(changes.contains { $0["aspect"] as? String == "publish" && $0["before"] as? String == "devices/demo-device/telemetry" })
    }

    @Test("explain takes allowed_origins, routes and the policies directory from --config, and exits 2 on a bad one")
    func explainWithConfiguration() async throws {
        let directory = try workspace()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try await portcullis(["pki", "init"], in: directory).status == 0)
        #expect(try await portcullis(["pki", "issue", "client", "demo-device"], in: directory).status == 0)
        let configuration = """
            listen: 127.0.0.1:8443
            tls:
              certificate: pki/issued/server.crt
              key: pki/private/server.key
              client_ca: pki/ca.crt
            allowed_origins: [https://console.example.com]
            routes:
              - path: /v1/echo
                kind: echo
            policies: policies
            """
        try configuration.write(toFile: "\(directory)/gateway.yaml", atomically: true, encoding: .utf8)
        let explain = ["policy", "explain", "--config", "gateway.yaml", "--cert", "pki/issued/demo-device.crt", "--json"]

        // The only route is the echo route, which demo-device-echo grants.
        let admitted = try json(try await portcullis(explain, in: directory).output)
        #expect(admitted["route"] as? String == "/v1/echo")
        #expect(admitted["rule"] as? String == "demo-device-echo")
        // The rule allows the development console's origin, but this gateway's list does not.
        let origin = try json(try await portcullis(explain + ["--origin", "https://localhost:8443"], in: directory).output)
        #expect(origin["reason"] as? String == "origin_not_allowed")
        #expect(origin["rule"] == nil)
        let route = try json(try await portcullis(explain + ["--path", "/v1/messages"], in: directory).output)
        #expect(route["reason"] as? String == "unknown_route")

        try (configuration + "\ncolour: blue\n").write(toFile: "\(directory)/gateway.yaml", atomically: true, encoding: .utf8)
        let broken = try await portcullis(explain, in: directory)
        #expect(broken.status == 2)
        #expect(broken.output.contains("gateway.yaml:11:"), "\(broken.output)")
    }
}
