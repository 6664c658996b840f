/// An allow-list of WebSocket `Origin` values (RFC 6454 serialised origins: `scheme://host[:port]`).
///
/// Entries are compared after normalisation (lowercase scheme and host, default port dropped). An entry may
/// start its host with `*.` to allow any subdomain (never the bare domain). The opaque origin `null`
/// matches only an entry that is literally `null`.
public struct OriginMatcher: Sendable, Hashable {
    public let entries: [String]
    private let exact: Set<String>
    private let subdomainSuffixes: [(scheme: String, suffix: String, port: String)]

    public init(_ entries: [String]) {
        self.entries = entries
        var exact: Set<String> = []
        var wildcards: [(String, String, String)] = []
        for entry in entries {
            if let origin = Self.normalize(entry, allowWildcard: true) {
                if origin.host.hasPrefix("*.") {
                    wildcards.append((origin.scheme, String(origin.host.dropFirst(1)), origin.port))
                } else {
                    exact.insert(origin.serialized)
                }
            } else if entry == "null" {
                exact.insert("null")
            }
        }
        self.exact = exact
        self.subdomainSuffixes = wildcards
    }

    public static func == (lhs: OriginMatcher, rhs: OriginMatcher) -> Bool { lhs.entries == rhs.entries }
    public func hash(into hasher: inout Hasher) { hasher.combine(entries) }

    /// Whether `origin` (the header's value) is on the list.
    public func allows(_ origin: String) -> Bool {
        if origin == "null" { return exact.contains("null") }
        guard let parsed = Self.normalize(origin, allowWildcard: false) else { return false }
        if exact.contains(parsed.serialized) { return true }
        return subdomainSuffixes.contains { entry in
            entry.scheme == parsed.scheme && entry.port == parsed.port && parsed.host.hasSuffix(entry.suffix)
                && parsed.host.count > entry.suffix.count
        }
    }

    /// Why an allow-list entry is unusable, or nil when it is fine; for configuration diagnostics.
    public static func problem(with entry: String) -> String? {
        if entry == "null" { return nil }
        return normalize(entry, allowWildcard: true) == nil
            ? "'\(entry)' is not an origin of the form scheme://host[:port] (no path, no trailing slash)" : nil
    }

    struct Parsed {
        var scheme: String
        var host: String
        var port: String
        var serialized: String { port.isEmpty ? "\(scheme)://\(host)" : "\(scheme)://\(host):\(port)" }
    }

    static func normalize(_ text: String, allowWildcard: Bool) -> Parsed? {
        guard let separator = text.range(of: "://") else { return nil }
        let scheme = text[..<separator.lowerBound].lowercased()
        guard !scheme.isEmpty, scheme.allSatisfy({ $0.isLetter || $0.isNumber || "+-.".contains($0) }) else {
            return nil
        }
        let authority = text[separator.upperBound...]
        guard !authority.isEmpty, !authority.contains(where: { "/?#@ ".contains($0) }) else { return nil }
        var host: Substring
        var port = ""
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = authority[...close]
            let rest = authority[authority.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { return nil }
                port = String(rest.dropFirst())
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            port = String(authority[authority.index(after: colon)...])
        } else {
            host = authority
        }
        if !port.isEmpty {
            guard port.allSatisfy(\.isNumber), let number = Int(port), (1...65535).contains(number) else { return nil }
            port = String(number)
        } else if authority.hasSuffix(":") {
            return nil
        }
        let lowerHost = host.lowercased()
        guard !lowerHost.isEmpty else { return nil }
        if lowerHost.contains("*") {
            guard allowWildcard, lowerHost.hasPrefix("*."), !lowerHost.dropFirst(2).contains("*"),
                lowerHost.count > 2
            else { return nil }
        }
        let defaultPorts = ["http": "80", "https": "443", "ws": "80", "wss": "443"]
        if defaultPorts[scheme] == port { port = "" }
        return Parsed(scheme: scheme, host: lowerHost, port: port)
    }
}
