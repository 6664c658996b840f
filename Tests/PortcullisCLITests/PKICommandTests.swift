import Foundation
import PortcullisTestSupport
import Testing

/// Runs `portcullis ARGS` to completion in `directory`; standard output and error together. The blocking
/// read runs on a Dispatch thread, so parallel runs stay parallel.
func portcullis(_ arguments: [String], in directory: String) async throws -> (status: Int32?, output: String) {
    let process = ChildProcess()
    process.executableURL = URL(fileURLWithPath: try portcullisBinary())
    process.arguments = arguments
    process.currentDirectoryURL = URL(fileURLWithPath: directory)
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    return await withCheckedContinuation { continuation in
        DispatchQueue.global().async {
            let data = readToEnd(pipe.fileHandleForReading)
            process.waitUntilExit()
            continuation.resume(returning: (process.terminationStatus, String(decoding: data, as: UTF8.self)))
        }
    }
}

func auditLines(_ directory: String) throws -> [[String: Any]] {
    try String(contentsOfFile: "\(directory)/audit/audit.jsonl", encoding: .utf8).split(separator: "\n").compactMap {
        try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
    }
}

@Suite("portcullis pki")
struct PKICommandTests {
    @Test("Eight parallel 'pki issue client' runs get eight distinct serials and one consistent inventory")
    func parallelIssue() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try await portcullis(["pki", "init"], in: directory).status == 0)
        let results = try await withThrowingTaskGroup(of: (Int32?, String).self) { group in
            for index in 0..<8 {
                group.addTask { try await portcullis(["pki", "issue", "client", "device-\(index)", "--json"], in: directory) }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.allSatisfy { $0.0 == 0 }, "\(results.map(\.1))")
        let inventory = try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: "\(directory)/pki/inventory.json"))) as! [String: Any]
        let entries = inventory["entries"] as! [[String: Any]]
        #expect(entries.count == 8)
        let serials = Set(entries.map { $0["serial"] as! String })
        #expect(serials.count == 8)
        for entry in entries {
            let name = entry["name"] as! String
            let shown = try await shell("openssl x509 -noout -serial -in pki/issued/\(name).crt", in: directory)
            #expect(shown.lowercased().contains((entry["serial"] as! String)), "\(name)")
        }
        let audit = try auditLines(directory)
        #expect(audit.filter { $0["operation"] as? String == "issue" }.count == 8)
        #expect(Set(audit.compactMap { $0["seq"] as? Int }).count == audit.count)  // one shared sequence
        #expect(audit.filter { $0["event"] as? String == "pki_operation" }.allSatisfy { $0["user"] as? String != nil })
        // Eight writers at once still make one unbroken chain.
        let verified = try await portcullis(["audit", "verify"], in: directory)
        #expect(verified.status == 0)
        #expect(verified.output.hasPrefix("OK, \(audit.count) records, chain intact up to checkpoint"))
    }

    @Test("list, inspect and expiry speak JSON for tools and exit as documented")
    func reporting() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try await portcullis(["pki", "init", "--intermediate"], in: directory)
        _ = try await portcullis(["pki", "issue", "client", "short-lived", "--days", "3"], in: directory)
        _ = try await portcullis(["pki", "issue", "server", "gw", "--dns", "gw.example.test"], in: directory)

        let expiring = try await portcullis(["pki", "expiry", "--within", "30d"], in: directory)
        #expect(expiring.status == 1)
        #expect(expiring.output.contains("short-lived"))
        #expect(!expiring.output.contains("gw "))
        let none = try await portcullis(["pki", "expiry", "--within", "1d"], in: directory)
        #expect(none.status == 0)

        let list = try await portcullis(["pki", "list", "--json", "--status", "expiring"], in: directory)
        let rows = try JSONSerialization.jsonObject(with: Data(list.output.utf8)) as! [[String: Any]]
        #expect(rows.map { $0["name"] as! String } == ["short-lived"])
        #expect(rows.first?["status"] as? String == "expiring")

        let inspect = try await portcullis(["pki", "inspect", "gw"], in: directory)
        #expect(inspect.output.contains("usage:       serverAuth"))
        #expect(inspect.output.contains("SANs:        DNS:gw.example.test"))
        #expect(inspect.output.contains("issuer:      CN=Portcullis Fleet CA Issuing CA"))
        let file = try await portcullis(["pki", "inspect", "pki/issued/short-lived.crt", "--json"], in: directory)
        let view = try JSONSerialization.jsonObject(with: Data(file.output.utf8)) as! [String: Any]
        #expect(view["extended_key_usage"] as? [String] == ["clientAuth"])
        #expect(view["status"] as? String == "expiring")

        let missing = try await portcullis(["pki", "list"], in: "/")
        #expect(missing.status == 2)
        #expect(missing.output.split(separator: "\n").count == 1)
    }

    @Test("watch --once --renew renews what is due and leaves the rest")
    func watchRenews() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try await portcullis(["pki", "init"], in: directory)
        // Renewal due almost at once: one day's lifetime, renewal point at a millionth of it.
        try "server:\n  days: 1\n  renew_at: 0.00001\nclient:\n  days: 1\n  renew_at: 0.00001\n"
            .write(toFile: "\(directory)/pki/profiles.yaml", atomically: true, encoding: .utf8)
        _ = try await portcullis(["pki", "issue", "server", "gw", "--dns", "localhost"], in: directory)
        _ = try await portcullis(["pki", "issue", "client", "auto", "--auto-renew"], in: directory)
        _ = try await portcullis(["pki", "issue", "client", "manual"], in: directory)
        try await Task.sleep(for: .seconds(1))
        let serialBefore = try await shell("openssl x509 -noout -serial -in pki/issued/gw.crt", in: directory)
        let pass = try await portcullis(["pki", "watch", "--once", "--renew"], in: directory)
        #expect(pass.status == 0, "\(pass.output)")
        #expect(pass.output.contains("renewed 'gw'"))
        #expect(pass.output.contains("renewed 'auto'"))
        #expect(pass.output.contains("due for renewal: 'manual'"))
        let serialAfter = try await shell("openssl x509 -noout -serial -in pki/issued/gw.crt", in: directory)
        #expect(serialBefore != serialAfter)
        let verify = try await shell("openssl verify -purpose sslserver -CAfile pki/ca.crt pki/issued/gw.crt", in: directory)
        #expect(verify.contains("OK"))
        #expect(try auditLines(directory).contains { $0["operation"] as? String == "renew" && $0["name"] as? String == "gw" })
    }

    @Test("Refusals print one line, exit 2 and write nothing")
    func refusals() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try await portcullis(["pki", "init"], in: directory)
        let again = try await portcullis(["pki", "init"], in: directory)
        #expect(again.status == 2 && again.output.contains("already has a CA"))
        let before = try String(contentsOfFile: "\(directory)/pki/inventory.json", encoding: .utf8)
        for arguments in [
            ["pki", "issue", "server", "gw", "--ip", "999.0.0.1"], ["pki", "issue", "client", "x", "--uri", "nope"],
            ["pki", "renew", "ghost"], ["pki", "revoke", "ghost"], ["pki", "sign", "missing.csr", "--name", "x"],
        ] {
            let result = try await portcullis(arguments, in: directory)
            #expect(result.status == 2, "\(arguments)")
            #expect(result.output.hasPrefix("portcullis: ") && result.output.split(separator: "\n").count == 1, "\(result.output)")
        }
        let usage = try await portcullis(["pki", "issue", "client", "x", "--days", "0"], in: directory)
        #expect(usage.status != 0 && usage.status != 2)
        #expect(try String(contentsOfFile: "\(directory)/pki/inventory.json", encoding: .utf8) == before)
    }
}
