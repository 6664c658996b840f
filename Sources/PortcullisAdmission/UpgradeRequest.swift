import Foundation

/// The HTTP request that asks for the upgrade, as admission sees it: plain values, no NIO types, so the
/// decision is a pure function tested without sockets.
public struct UpgradeRequest: Sendable {
    public var method: String
    public var uri: String
    public var versionMajor: Int
    public var versionMinor: Int
    public var headers: [(name: String, value: String)]

    public init(method: String, uri: String, version: (Int, Int) = (1, 1), headers: [(name: String, value: String)]) {
        self.method = method
        self.uri = uri
        self.versionMajor = version.0
        self.versionMinor = version.1
        self.headers = headers
    }

    /// Every value of a header (case-insensitive name), one per field line.
    public func values(_ name: String) -> [String] {
        headers.filter { Self.equalIgnoringASCIICase($0.name, name) }.map(\.value)
    }

    /// Comma-separated tokens of every field line of a header, trimmed and lowercased.
    func tokens(_ name: String) -> [String] {
        values(name).flatMap { $0.split(separator: ",") }.map { token in
            let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
            return String(token.drop(while: isSpace).reversed().drop(while: isSpace).reversed()).lowercased()
        }
    }

    /// The subprotocols the client offers (`Sec-WebSocket-Protocol`, every field line), in its order of
    /// preference; names are case-sensitive.
    public var offeredSubprotocols: [String] {
        values("Sec-WebSocket-Protocol").flatMap { $0.split(separator: ",") }.map {
            $0.trimmingCharacters(in: .whitespaces)
        }.filter { !$0.isEmpty }
    }

    /// Header names are ASCII tokens (RFC 9110 §5.1); comparing them needs no locale-aware Foundation call,
    /// which showed in profiles of session setup.
    static func equalIgnoringASCIICase(_ a: String, _ b: String) -> Bool {
        a.utf8.count == b.utf8.count
            && zip(a.utf8, b.utf8).allSatisfy { x, y in
                x == y || (x | 0x20 == y | 0x20 && (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(x | 0x20))
            }
    }

    /// The resource name routes are matched on: the request target's path, without query or fragment.
    public var path: String { Self.path(ofTarget: uri) }

    /// The path of a request target in origin form (`/v1/echo?x`) or absolute form
    /// (`https://gateway.example/v1/echo`): RFC 6455 §4.2.1 allows an absolute http or https URI, and RFC 9112
    /// §3.2.2 has a server accept one. Its authority is ignored, as a server ignores `Host` then: the gateway does
    /// not route by host name. Anything else (`*`, `localhost:443`) is taken as it is, and matches no route.
    static func path(ofTarget target: String) -> String {
        var rest = Substring(target)
        for scheme in ["http://", "https://"] where rest.utf8.count > scheme.utf8.count {
            guard equalIgnoringASCIICase(String(rest.prefix(scheme.count)), scheme) else { continue }
            let afterScheme = rest.dropFirst(scheme.count)
            rest = afterScheme[(afterScheme.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? afterScheme.endIndex)...]
            // An absolute URI with an empty path names "/" (RFC 9110 §4.2.3).
            if rest.first != "/" { return "/" }
            break
        }
        return String(rest.prefix { $0 != "?" && $0 != "#" })
    }

    /// Size of the request head as sent: request line and header lines.
    var headSize: Int {
        method.utf8.count + uri.utf8.count + 12 + headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
    }
}

/// A refusal: what the client is told (status and a short reason) and what the audit log records.
public struct Refusal: Error, Sendable, Equatable {
    public var status: Int
    /// Stable machine-readable code, e.g. `origin_not_allowed`.
    public var reason: String
    /// Short plain-text reason for the client; never paths or internals.
    public var message: String
    /// The full reason, for the audit log only.
    public var detail: String
    public var rule: String?
    /// Extra response headers (`Allow`, `Upgrade`, `Sec-WebSocket-Version`).
    public var headers: [(String, String)] = []

    public static func == (lhs: Refusal, rhs: Refusal) -> Bool {
        lhs.status == rhs.status && lhs.reason == rhs.reason && lhs.rule == rhs.rule
    }
}
