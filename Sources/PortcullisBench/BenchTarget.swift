import Foundation
import PortcullisClient

/// Which messaging protocol runs inside the WebSocket: Portcullis's own (`docs/protocol.md`), or NATS's text
/// protocol, so that the same scenarios can be run against nats-server.
public enum WireProtocol: String, Sendable, CaseIterable, Codable {
    case portcullis
    case nats
}

/// Where a benchmark connects and as whom: the server's `wss://` URL, the client certificate, the CA that signs
/// the server's certificate, the `Origin` to send, and the protocol spoken after the upgrade.
public struct BenchTarget: Sendable {
    public var host: String
    public var port: Int
    public var path: String
    public var origin: String?
    public var tls: GatewayClient.TLSOptions
    public var wire: WireProtocol
    /// The server's process, to read its CPU time and memory from /proc; nil when it is not on this machine.
    public var serverPID: Int32?

    public struct InvalidTarget: Error, CustomStringConvertible {
        public var description: String
    }

    /// - Parameter url: `wss://HOST:PORT/PATH`.
    public init(
        url: String, certificate: String, key: String, ca: String, origin: String?, serverName: String?,
        wire: WireProtocol, serverPID: Int32?
    ) throws {
        guard let components = URLComponents(string: url), components.scheme == "wss", let host = components.host,
            let port = components.port
        else {
            throw InvalidTarget(description: "--url must be wss://HOST:PORT/PATH, not '\(url)'")
        }
        for (flag, path) in [("--cert", certificate), ("--key", key), ("--ca", ca)]
        where !FileManager.default.isReadableFile(atPath: path) {
            throw InvalidTarget(description: "\(flag) \(path): no readable file there")
        }
        self.host = host
        self.port = port
        self.path = components.path.isEmpty ? "/" : components.path
        self.origin = origin
        self.wire = wire
        self.serverPID = serverPID
        self.tls = try GatewayClient.TLSOptions(
            certificateChain: certificate, privateKey: key, trustRoots: ca, serverName: serverName ?? host
        ).prepared()
    }
}
