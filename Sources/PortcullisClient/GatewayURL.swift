import Foundation

/// A gateway's `wss://HOST[:PORT]/PATH` address, as a device's tools take it.
public struct GatewayURL: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// The request target: path and query (`/v1/messages`).
    public var path: String

    public var description: String {
        "wss://\(host.contains(":") ? "[\(host)]" : host):\(port)\(path)"
    }

    /// Why a URL was not taken.
    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    /// Reads `text`: the scheme must be `wss` (the gateway speaks TLS only), the port 1–65535 (443 when absent).
    public init(parsing text: String) throws {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased() else {
            throw Invalid(description: "'\(text)' is not a URL; expected wss://HOST[:PORT]/PATH")
        }
        guard scheme == "wss" else {
            throw Invalid(description: "'\(text)': the scheme must be wss:// (the gateway accepts TLS connections only)")
        }
        guard var host = components.host, !host.isEmpty else { throw Invalid(description: "'\(text)' names no host") }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let port = components.port ?? 443
        guard (1...65_535).contains(port) else { throw Invalid(description: "'\(text)': the port must be 1-65535") }
        let path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
        self.host = host
        self.port = port
        self.path = path + (components.percentEncodedQuery.map { "?\($0)" } ?? "")
    }
}
