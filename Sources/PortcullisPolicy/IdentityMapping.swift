/// Which certificate field an identity-mapping rule reads.
public enum IdentitySource: String, Sendable, CaseIterable {
    case commonName = "cn"
    case sanURI = "san_uri"
    case sanDNS = "san_dns"
    case fingerprint

    func values(in facts: CertificateFacts) -> [String] {
        switch self {
        case .commonName: facts.commonName.map { [$0] } ?? []
        case .sanURI: facts.sanURIs
        case .sanDNS: facts.sanDNSNames
        case .fingerprint: [facts.fingerprint]
        }
    }
}

/// One rule turning a certificate field into an identity name, such as "the CN is the identity" or
/// "`spiffe://example.test/device/*` maps to `device-{*}`".
public struct IdentityMappingRule: Sendable, Hashable {
    public var source: IdentitySource
    /// A glob over the field: `*` stands for one or more characters other than `/`. Nil matches any value.
    /// For `fingerprint` it is the pinned fingerprint, compared exactly.
    public var match: String?
    /// The identity name: `{value}` is the whole field, `{*}` what the `*` of `match` covered.
    public var identity: String
    public var groups: [String]
    /// Where the rule was written, for explanations (`policies/fleet.yaml:12`).
    public var location: String

    public init(source: IdentitySource, match: String? = nil, identity: String = "{value}", groups: [String] = [],
                location: String = "") {
        self.source = source
        self.match = match
        self.identity = identity
        self.groups = groups
        self.location = location
    }

    /// The identity name this rule gives the certificate, or nil when it does not apply.
    func apply(to facts: CertificateFacts) -> String? {
        for value in source.values(in: facts) {
            let captured: String?
            if let match {
                if source == .fingerprint {
                    captured = normalizedFingerprint(match) == value ? "" : nil
                } else {
                    captured = Glob(match).capture(value)
                }
            } else {
                captured = ""
            }
            guard let captured else { continue }
            let name =
                identity.contains("{")
                ? identity.replacingOccurrences(of: "{value}", with: value).replacingOccurrences(of: "{*}", with: captured)
                : identity
            if !name.isEmpty { return name }
        }
        return nil
    }
}

/// A glob with at most one capturing `*` (one or more characters, never `/`), enough for the fleet
/// naming schemes mapping rules need; written here because no mirrored library does this capture.
struct Glob {
    let prefix: Substring
    let suffix: Substring?

    init(_ pattern: String) {
        if let star = pattern.firstIndex(of: "*") {
            prefix = pattern[..<star]
            suffix = pattern[pattern.index(after: star)...]
        } else {
            prefix = pattern[...]
            suffix = nil
        }
    }

    func capture(_ value: String) -> String? {
        guard let suffix else { return value == prefix ? "" : nil }
        guard value.count > prefix.count + suffix.count, value.hasPrefix(prefix), value.hasSuffix(suffix) else {
            return nil
        }
        let middle = value.dropFirst(prefix.count).dropLast(suffix.count)
        return middle.contains("/") ? nil : String(middle)
    }
}
