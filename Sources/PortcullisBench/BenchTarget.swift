import Foundation
import NIOCore
import PortcullisClient
import Synchronization

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
    /// More processes of the same server (a cluster's other gateways, its NATS), counted in its CPU time.
    public var otherServerPIDs: [Int32] = []
    /// The addresses sessions connect from.
    public var sources = SourceAddresses(count: 1)

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

/// Loopback source addresses handed out in turn: `127.0.0.1`, `127.0.0.2`, … over `127.0.0.0/8`. One source
/// address reaches one server port from some 28,000 ephemeral ports, so a fleet of sessions needs several; a
/// gateway's per-address limits see them as different clients, as they would a fleet.
public final class SourceAddresses: Sendable {
    /// How many addresses are used; 1 lets the system choose, as any client does.
    public let count: Int
    private let next = Atomic<Int>(0)

    /// The most addresses handed out: 127.0.0.1 to 127.255.255.254, skipping every `.0` and `.255`.
    public static let maximum = 256 * 256 * 254

    public init(count: Int) {
        self.count = min(max(count, 1), Self.maximum)
    }

    /// The address for the next session, or nil when the system chooses.
    public func take() -> SocketAddress? {
        guard count > 1 else { return nil }
        let index = next.add(1, ordering: .relaxed).oldValue % count
        return try? SocketAddress(ipAddress: Self.address(index), port: 0)
    }

    /// The `index`th address (from 0): the last octet runs from 1 to 254.
    static func address(_ index: Int) -> String {
        let host = index % 254 + 1, rest = index / 254
        return "127.\(rest / 256 % 256).\(rest % 256).\(host)"
    }
}
