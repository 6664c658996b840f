import Foundation
import PortcullisTestSupport
import Testing

/// A third-party program the interop tests drive (openssl, gnutls-cli, python3). A missing tool fails the
/// test: `scripts/test` (the test command, which CI runs) installs them all, so absence is a broken environment,
/// not a reason to skip.
struct ExternalTool {
    let path: String

    init(_ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        let found = directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
        path = try #require(found, "\(name) is not installed; scripts/test installs it", sourceLocation: sourceLocation)
    }

    struct Result {
        var status: Int32
        var output: String
        var error: String
        var all: String { output + error }
    }

    /// Runs the tool with `input` on standard input and kills it after `timeout` seconds. TLS clients leave at
    /// the end of their input, before the answer arrives, so with `input` stdin stays open until the tool has
    /// answered (an HTTP status line, or a TLS alert or error), has exited, or 60 s passed, however loaded the
    /// machine; then `holdInput` seconds more, for what follows the answer.
    func run(
        _ arguments: [String], input: String = "", holdInput: Double = 0.2, timeout: Double = 60,
        environment: [String: String]? = nil
    ) async throws -> Result {
        let process = ChildProcess()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let stdin = Pipe()
        let stdout = Pipe()
        let stderr = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        let out = PipeReader(stdout.fileHandleForReading)
        let err = PipeReader(stderr.fileHandleForReading)
        try? stdin.fileHandleForWriting.write(contentsOf: Data(input.utf8))
        if !input.isEmpty {
            let answered = Date().addingTimeInterval(60)
            func hasAnswered() -> Bool {
                let output = String(decoding: out.collected, as: UTF8.self)
                let error = String(decoding: err.collected, as: UTF8.self).lowercased()
                return output.contains("HTTP/1.") || error.contains("alert") || error.contains("error")
            }
            while process.isRunning, !hasAnswered(), Date() < answered { try await Task.sleep(for: .milliseconds(20)) }
        }
        try await Task.sleep(for: .milliseconds(Int(holdInput * 1000)))
        try? stdin.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        if process.isRunning {
            process.terminate()
            // Polled: waitUntilExit() can wait forever on a concurrency thread.
            var grace = Date().addingTimeInterval(5)
            while process.isRunning && Date() < grace { try await Task.sleep(for: .milliseconds(20)) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            grace = Date().addingTimeInterval(5)
            while process.isRunning && Date() < grace { try await Task.sleep(for: .milliseconds(20)) }
        }
        try await out.waitForEnd()
        try await err.waitForEnd()
        let output = String(decoding: out.collected, as: UTF8.self)
        let error = String(decoding: err.collected, as: UTF8.self)
        // Reading terminationStatus of a running process traps; report a process that would not die as -1.
        return Result(status: process.isRunning ? -1 : process.terminationStatus, output: output, error: error)
    }
}

/// A WebSocket opening handshake as a device would type it.
func upgradeRequest(path: String = "/v1/echo", origin: String? = nil, upgrade: Bool = true) -> String {
    var lines = ["GET \(path) HTTP/1.1", "Host: localhost"]
    if upgrade {
        lines += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                  "Sec-WebSocket-Version: 13"]
    }
    if let origin { lines.append("Origin: \(origin)") }
    return lines.joined(separator: "\r\n") + "\r\n\r\n"
}
