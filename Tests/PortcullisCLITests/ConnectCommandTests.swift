import Foundation
import PortcullisTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `portcullis connect ...` through bash (so that standard input can be given or held open), with its exit status
/// and its output and errors together.
func connectCommand(_ arguments: String, input: String = "", in directory: String) async throws -> (status: Int32?, output: String) {
    let binary = try portcullisBinary()
    let output = try await shell(
        "printf '\(input)' | '\(binary)' connect \(arguments) 2>&1; echo \"exit=$?\"", in: directory, timeout: 180)
    let lines = output.split(separator: "\n", omittingEmptySubsequences: false)
    let status = lines.last { $0.hasPrefix("exit=") }.flatMap { Int32($0.dropFirst(5)) }
    return (status, output)
}

@Suite("portcullis connect")
struct ConnectCommandTests {
    static let device = "--cert pki/issued/demo-device.crt --key pki/private/demo-device.key --ca pki/ca.crt"
    static let operatorCredentials = "--cert pki/issued/demo-operator.crt --key pki/private/demo-operator.key --ca pki/ca.crt"

    @Test("Lines of standard input are echoed back as text messages, plain and --json; end of input exits 0")
    func lines() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }
        let url = "wss://localhost:\(port)/v1/echo"

        let plain = try await connectCommand("\(url) \(Self.device)", input: "hello\\nworld\\n", in: directory)
        #expect(plain.status == 0, "\(plain.output)")
        #expect(plain.output.hasPrefix("hello\nworld\n"), "\(plain.output)")

        let json = try await connectCommand("\(url) \(Self.device) --json", input: "hello\\n", in: directory)
        #expect(json.status == 0, "\(json.output)")
        #expect(json.output.contains(#"{"text":"hello","type":"text"}"#), "\(json.output)")
    }

    @Test("sub prints a delivery with the verified sender; pub is acknowledged, or refused by the broker with exit 6")
    func publishSubscribe() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }
        let url = "wss://localhost:\(port)/v1/messages"
        let binary = try portcullisBinary()
        let subscriber = try RunningCommand(
            ["-c", "exec '\(binary)' connect sub \(url) 'devices/+/telemetry' \(Self.operatorCredentials) --json"],
            in: directory, executable: "/bin/bash")
        defer { subscriber.process.terminate() }
        #expect(try await subscriber.waitFor("subscribed to devices/+/telemetry"), "\(subscriber.output)")

        let published = try await connectCommand(#"pub \#(url) devices/demo-device/telemetry '{"t":21.5}' \#(Self.device)"#, in: directory)
        #expect(published.status == 0, "\(published.output)")
        #expect(published.output.contains("published to devices/demo-device/telemetry"))
        #expect(
            try await subscriber.waitFor(#"{"from":"demo-device","payload":{"t":21.5},"topic":"devices/demo-device/telemetry"}"#),
            "\(subscriber.output)")

        // Text that is not JSON goes as a JSON string; a topic the policy does not grant is the broker's refusal.
        let refused = try await connectCommand("pub \(url) devices/other/telemetry hello \(Self.device)", in: directory)
        #expect(refused.status == 6, "\(refused.output)")
        #expect(refused.output.contains("refused: forbidden"), "\(refused.output)")
    }

    @Test("A subscriber outlives its --timeout once subscribed, and ends quietly with 141 when its reader has gone")
    func subscriberLifetime() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }
        let url = "wss://localhost:\(port)/v1/messages"
        let binary = try portcullisBinary()
        // Its messages go to fd 3 (the test's view); what it prints goes to `head`, which ends after one line.
        let subscriber = try RunningCommand(
            [
                "-c",
                "{ '\(binary)' connect sub \(url) 'devices/+/telemetry' \(Self.operatorCredentials) --timeout 1 2>&3 | head -n 1; echo \"status=${PIPESTATUS[0]}\"; } 3>&1",
            ],
            in: directory, executable: "/bin/bash")
        defer { subscriber.process.terminate() }
        #expect(try await subscriber.waitFor("subscribed to devices/+/telemetry"), "\(subscriber.output)")
        // Past the acknowledgement deadline: the subscriber must still be there (it once ended here, exit 2).
        try await Task.sleep(for: .seconds(2.5))
        var count = 0
        let deadline = Date().addingTimeInterval(120)
        while !subscriber.output.contains("status="), Date() < deadline {
            count += 1
            let published = try await connectCommand(
                #"pub \#(url) devices/demo-device/telemetry '{"n":\#(count)}' \#(Self.device)"#, in: directory)
            #expect(published.status == 0, "\(published.output)")
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(subscriber.output.contains(#"devices/demo-device/telemetry demo-device {"n":1}"#), "\(subscriber.output)")
        #expect(subscriber.output.contains("status=141"), "\(subscriber.output)")
        #expect(!subscriber.output.contains("Fatal error") && !subscriber.output.contains("acknowledgement"), "\(subscriber.output)")
    }

    @Test("Refusals exit by class: HTTP 404 (4), nothing listening or answering (2), the gateway's TLS alert (3), an untrusted gateway (3)")
    func refusals() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }

        let noRoute = try await connectCommand("wss://localhost:\(port)/v1/nothing \(Self.device)", in: directory)
        #expect(noRoute.status == 4, "\(noRoute.output)")
        #expect(noRoute.output.contains("refused: HTTP 404"), "\(noRoute.output)")

        let closedPort = try freeLoopbackPort()
        let unreachable = try await connectCommand("wss://127.0.0.1:\(closedPort)/v1/echo \(Self.device)", in: directory)
        #expect(unreachable.status == 2, "\(unreachable.output)")
        #expect(unreachable.output.contains("cannot connect to 127.0.0.1:\(closedPort)"), "\(unreachable.output)")

        // A server that takes the connection and never answers: --timeout ends the wait.
        let silent = try SilentListener()
        let unanswered = try await connectCommand("wss://127.0.0.1:\(silent.port)/v1/echo \(Self.device) --timeout 2", in: directory)
        #expect(unanswered.status == 2, "\(unanswered.output)")
        #expect(unanswered.output.contains("no answer"), "\(unanswered.output)")

        // The server's own certificate is for serverAuth only: the gateway refuses it in the handshake.
        let serverAsClient = try await connectCommand(
            "wss://localhost:\(port)/v1/echo --cert pki/issued/server.crt --key pki/private/server.key --ca pki/ca.crt", in: directory)
        #expect(serverAsClient.status == 3, "\(serverAsClient.output)")
        #expect(serverAsClient.output.contains("certificate_unknown (46)"), "\(serverAsClient.output)")

        // A CA bundle that does not hold the dev CA: the gateway's certificate is refused here.
        try FileManager.default.copyItem(atPath: "\(directory)/pki/issued/demo-device.crt", toPath: "\(directory)/other-ca.pem")
        let untrusted = try await connectCommand(
            "wss://localhost:\(port)/v1/echo --cert pki/issued/demo-device.crt --key pki/private/demo-device.key --ca other-ca.pem",
            in: directory)
        #expect(untrusted.status == 3, "\(untrusted.output)")
        #expect(untrusted.output.contains("does not verify against --ca"), "\(untrusted.output)")
    }

    @Test("A session the gateway ends (the device revoked) exits 5 with the close code and reason")
    func closedByGateway() async throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (serve, port) = try await startDevGateway(in: directory)
        defer { serve.process.terminate() }
        let session = try RunningCommand(
            ["connect", "wss://localhost:\(port)/v1/echo"] + Self.device.split(separator: " ").map(String.init), in: directory)
        defer { session.process.terminate() }
        try session.send("ready\n")
        #expect(try await session.waitFor("ready"), "\(session.output)")
        #expect(try await portcullis(["pki", "revoke", "demo-device"], in: directory).status == 0)
        #expect(try await session.waitFor("closed by the gateway: 1008 certificate_revoked"), "\(session.output)\n\(serve.output)")
        #expect(try await session.waitForExit(timeout: 120) == 5, "\(session.output)")
    }
}

/// A loopback listener that accepts connections into its backlog and never answers; closed when released.
final class SilentListener {
    let port: Int
    private let descriptor: Int32

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(descriptor, $0, length) == 0 && listen(descriptor, 16) == 0 && getsockname(descriptor, $0, &length) == 0
            }
        }
        guard bound else {
            close(descriptor)
            throw StartFailure(description: "silent listener: errno \(errno)")
        }
        self.descriptor = descriptor
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    deinit { close(descriptor) }
}
