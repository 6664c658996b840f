import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

/// nats-server (Debian's `nats-server`) on a loopback port, with two users: `gateway` may publish and subscribe
/// under `portcullis.>`, `device` may do nothing (what docs/cluster.md asks of a NATS account). Stopped with
/// ``stop()``; ``restart()`` starts it again on the same port.
final class NATSServer: @unchecked Sendable {
    static let gatewayPassword = "gateway-secret"
    static let devicePassword = "device-secret"

    let directory: String
    private(set) var port: Int
    private var process: Process?
    private let maximumPayload: Int?

    private init(directory: String, port: Int, maximumPayload: Int?) {
        self.directory = directory
        self.port = port
        self.maximumPayload = maximumPayload
    }

    /// Starts nats-server on a free port; `maximumPayload` sets its `max_payload`.
    static func start(in directory: String, maximumPayload: Int? = nil) async throws -> NATSServer {
        for _ in 1...3 {
            let server = NATSServer(directory: directory, port: try await Stunnel.freeLoopbackPort(), maximumPayload: maximumPayload)
            if try await server.launch() { return server }
        }
        throw Stunnel.StartFailure(description: "nats-server did not start; see \(directory)/nats.log")
    }

    /// Starts it again on its port (after ``stop()``); false when that port was taken meanwhile.
    func restart() async throws -> Bool {
        try await launch()
    }

    /// Writes a password file for `gateway`, for the gateway's `nats.password_file`.
    func gatewayPasswordFile() throws -> String {
        let path = "\(directory)/nats-password"
        try "\(Self.gatewayPassword)\n".write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    private func launch() async throws -> Bool {
        let executable = FileManager.default.isExecutableFile(atPath: "/usr/sbin/nats-server")
            ? "/usr/sbin/nats-server" : try ExternalTool("nats-server").path
        let configuration = "\(directory)/nats.conf"
        try """
            listen: "127.0.0.1:\(port)"
            \(maximumPayload.map { "max_payload: \($0)" } ?? "")
            authorization {
              users = [
                {user: gateway, password: "\(Self.gatewayPassword)", permissions: {publish: "portcullis.>", subscribe: "portcullis.>"}}
                {user: device, password: "\(Self.devicePassword)", permissions: {publish: {deny: ">"}, subscribe: {deny: ">"}}}
              ]
            }

            """.write(toFile: configuration, atomically: true, encoding: .utf8)
        let log = "\(directory)/nats.log"
        FileManager.default.createFile(atPath: log, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["-c", configuration]
        // A file, not a pipe: a pipe nobody reads would stop the server once full.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        handle.seekToEndOfFile()
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        try? handle.close()
        self.process = process
        let deadline = Date().addingTimeInterval(120)
        while process.isRunning && Date() < deadline {
            if Stunnel.listens(pid: process.processIdentifier, port: port) { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        stopProcess(process)
        return false
    }

    func stop() {
        if let process { stopProcess(process) }
    }
}

/// A bare NATS client for what a gateway must not accept: it sends `commands` after `CONNECT` as `user`, then a
/// `PING`, and returns what the server answered up to its `PONG` (or what came within 60 s).
func natsExchange(port: Int, user: String, password: String, commands: String) async throws -> String {
    let received = NIOLockedValueBox("")
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(TextCollector(received: received))
            }
        }
        .connect(host: "127.0.0.1", port: port).get()
    let connect = #"CONNECT {"verbose":false,"pedantic":false,"user":"\#(user)","pass":"\#(password)","headers":true,"protocol":1}"#
    try await channel.writeAndFlush(channel.allocator.buffer(string: connect + "\r\n" + commands + "PING\r\n"))
    let deadline = Date().addingTimeInterval(60)
    while Date() < deadline, !received.withLockedValue({ $0.contains("PONG") }), channel.isActive {
        try await Task.sleep(for: .milliseconds(20))
    }
    try? await channel.close()
    return received.withLockedValue { $0 }
}

private final class TextCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let received: NIOLockedValueBox<String>

    init(received: NIOLockedValueBox<String>) {
        self.received = received
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let text = String(buffer: unwrapInboundIn(data))
        received.withLockedValue { $0 += text }
    }
}
