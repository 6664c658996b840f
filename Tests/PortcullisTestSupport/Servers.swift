import Foundation

/// nats-server (Debian's `nats-server`) on a loopback port. By default with two users: `gateway` may publish and
/// subscribe under `portcullis.>`, `device` may do nothing (what docs/cluster.md asks of a NATS account); or with
/// NKey users, or in operator mode (``Authorization``). Stopped with ``stop()``; ``restart()`` starts it again on
/// the same port.
public final class NATSServer: @unchecked Sendable {
    public static let gatewayPassword = "gateway-secret"
    public static let devicePassword = "device-secret"

    /// Who may sign in.
    public enum Authorization: Sendable {
        /// The users `gateway` and `device`, with passwords.
        case passwords
        /// NKey users (their public keys), each allowed to publish and subscribe under `portcullis.>`.
        case nkeys([String])
        /// Operator mode: the chain's accounts preloaded in a memory resolver; users sign in with JWTs.
        case trustChain(NATSTrustChain)
    }

    public let directory: String
    public let port: Int
    private let maximumPayload: Int?
    private var process: ChildProcess?

    private init(directory: String, port: Int, maximumPayload: Int?, authorization: Authorization) throws {
        self.directory = directory
        self.port = port
        self.maximumPayload = maximumPayload
        try authorize(authorization)
    }

    /// Rewrites the configuration with `authorization`, for the next ``restart()``.
    public func authorize(_ authorization: Authorization) throws {
        let users: String
        switch authorization {
        case .passwords:
            users = """
                authorization {
                  users = [
                    {user: gateway, password: "\(Self.gatewayPassword)", permissions: {publish: "portcullis.>", subscribe: "portcullis.>"}}
                    {user: device, password: "\(Self.devicePassword)", permissions: {publish: {deny: ">"}, subscribe: {deny: ">"}}}
                  ]
                }
                """
        case .nkeys(let keys):
            let lines = keys.map { #"    {nkey: \#($0), permissions: {publish: "portcullis.>", subscribe: "portcullis.>"}}"# }
            users = "authorization {\n  users = [\n" + lines.joined(separator: "\n") + "\n  ]\n}"
        case .trustChain(let chain):
            users = try chain.serverConfiguration(directory: directory)
        }
        try """
            listen: "127.0.0.1:\(port)"
            \(maximumPayload.map { "max_payload: \($0)" } ?? "")
            \(users)

            """.write(toFile: "\(directory)/nats.conf", atomically: true, encoding: .utf8)
    }

    /// Starts nats-server on a free port, its configuration and log in `directory`; `maximumPayload` sets its
    /// `max_payload`, `authorization` who may sign in.
    public static func start(
        in directory: String, maximumPayload: Int? = nil, authorization: Authorization = .passwords
    ) async throws -> NATSServer {
        for _ in 1...3 {
            let server = try NATSServer(
                directory: directory, port: try freeLoopbackPort(), maximumPayload: maximumPayload,
                authorization: authorization)
            if try await server.restart() { return server }
        }
        throw StartFailure(description: "nats-server did not start; its log: \(directory)/nats.log")
    }

    /// Starts it (again, after ``stop()``) on its port; false when it did not listen there (the port was taken).
    @discardableResult
    public func restart() async throws -> Bool {
        guard let executable = installedProgram("nats-server") else {
            throw StartFailure(description: "nats-server is not installed; scripts/test installs it")
        }
        process = try await startListening(
            executable, ["-c", "\(directory)/nats.conf"], port: port, log: "\(directory)/nats.log")
        return process != nil
    }

    /// Writes a password file for `gateway`, for a gateway's `nats.password_file`.
    public func gatewayPasswordFile() throws -> String {
        let path = "\(directory)/nats-password"
        try "\(Self.gatewayPassword)\n".write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    public func stop() {
        if let process { stopProcess(process) }
    }
}

/// HAProxy (Debian's `haproxy`) in TCP mode on a free loopback port, in front of gateways on 127.0.0.1, sending
/// them PROXY protocol v2 headers from `source` (the address the gateways trust); stopped with ``stop()``.
///
/// `balance first` in the order given, with `option redispatch`: a new connection goes to the first gateway
/// that takes it, so a test knows where a device lands, and to the next one once that gateway is gone.
public struct HAProxy: Sendable {
    public let port: Int
    private let process: ChildProcess

    public static func start(in directory: String, source: String, gateways: [Int]) async throws -> HAProxy {
        guard let executable = installedProgram("haproxy") else {
            throw StartFailure(description: "haproxy is not installed; scripts/test installs it")
        }
        for _ in 1...3 {
            let port = try freeLoopbackPort()
            let servers = gateways.enumerated().map { index, gateway in
                "    server gateway\(index) 127.0.0.1:\(gateway) send-proxy-v2 maxconn 1000"
            }
            try """
                global
                    maxconn 4000
                defaults
                    mode tcp
                    timeout connect 10s
                    timeout client 600s
                    timeout server 600s
                    retries 3
                    option redispatch 1
                frontend devices
                    bind 127.0.0.1:\(port)
                    default_backend gateways
                backend gateways
                    balance first
                    source \(source)
                \(servers.joined(separator: "\n"))

                """.write(toFile: "\(directory)/haproxy.cfg", atomically: true, encoding: .utf8)
            // -db: in the foreground, not as a daemon: the process started is the one listening.
            if let process = try await startListening(
                executable, ["-db", "-f", "\(directory)/haproxy.cfg"], port: port, log: "\(directory)/haproxy.log")
            {
                return HAProxy(port: port, process: process)
            }
        }
        throw StartFailure(description: "haproxy did not start; its log: \(directory)/haproxy.log")
    }

    public func stop() {
        stopProcess(process)
    }
}
