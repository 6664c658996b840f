import Foundation
import PortcullisTestSupport
import Testing

/// `docs/deploy/portcullis.service` as systemd reads it: `systemd-analyze verify` (syntax, every setting known,
/// the command executable) and `systemd-analyze security --offline` (what the sandbox leaves exposed).
@Suite("The systemd unit in docs/deploy")
struct DeployUnitTests {
    /// The unit with `ExecStart` pointing at the built binary (verify checks that the command exists).
    static func unitWithBuiltBinary(in directory: String) throws -> String {
        let unit = try String(contentsOf: repositoryRoot.appendingPathComponent("docs/deploy/portcullis.service"), encoding: .utf8)
        #expect(unit.contains("ExecStart=/usr/local/bin/portcullis serve --config /etc/portcullis/gateway.yaml"))
        let path = "\(directory)/portcullis.service"
        try unit.replacingOccurrences(of: "/usr/local/bin/portcullis", with: try portcullisBinary())
            .write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test("systemd-analyze verify accepts it; the sandbox is strict, the only capability binds port 443, SIGHUP reloads")
    func verifies() async throws {
        let analyze = try tool("systemd-analyze")
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let unit = try Self.unitWithBuiltBinary(in: directory)
        let verify = try await shell("'\(analyze)' verify '\(unit)' 2>&1; echo \"exit=$?\"", in: directory, timeout: 120)
        #expect(verify == "exit=0\n", "systemd-analyze verify: \(verify)")

        let settings = Set(try String(contentsOfFile: unit, encoding: .utf8).split(separator: "\n").map(String.init))
        for required in [
            "ProtectSystem=strict", "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE", "User=portcullis", "ExecReload=/bin/kill -HUP $MAINPID",
        ] {
            #expect(settings.contains(required), "missing \(required)")
        }
    }

    @Test("systemd-analyze security --offline rates its exposure OK or better (at most 2.0 of 10)")
    func exposure() async throws {
        let analyze = try tool("systemd-analyze")
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let unit = try Self.unitWithBuiltBinary(in: directory)
        let report = try await shell("'\(analyze)' security --offline=true --no-pager '\(unit)' 2>&1", in: directory, timeout: 120)
        // "→ Overall exposure level for portcullis.service: 1.6 OK 🙂"
        let overall = try #require(report.split(separator: "\n").first { $0.contains("Overall exposure level") }, "\(report)")
        let score = try #require(overall.split(separator: " ").compactMap { Double($0) }.first, "\(overall)")
        #expect(score <= 2.0, "\(overall)")
    }
}
