import Foundation
import Testing

@Suite("portcullis --version and completions")
struct VersionTests {
    @Test("--version prints a semantic version and exits 0")
    func version() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (status, output) = try await portcullis(["--version"], in: directory)
        #expect(status == 0)
        #expect(output.wholeMatch(of: /\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?\n/) != nil, "\(output)")
    }

    @Test("Completion scripts for bash, zsh and fish name every subcommand")
    func completions() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for shell in ["bash", "zsh", "fish"] {
            let (status, output) = try await portcullis(["--generate-completion-script", shell], in: directory)
            #expect(status == 0, "\(shell): \(output.prefix(500))")
            for command in ["serve", "pki", "audit", "bench"] {
                #expect(output.contains(command), "\(shell) completion lacks \(command)")
            }
        }
    }
}
