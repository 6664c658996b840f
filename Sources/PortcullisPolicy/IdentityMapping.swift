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
    /// A glob over the field: `*` stands for one or more bytes other than `/`. Nil matches any value.
    /// For `fingerprint` it is the pinned fingerprint, compared exactly.
    public var match: String? { didSet { glob = match.map(Glob.init) } }
    /// The identity name: `{value}` is the whole field, `{*}` what the `*` of `match` covered. Substituted once:
    /// a field that contains `{*}` itself stays as it is.
    public var identity: String { didSet { template = Template(identity, variables: Self.variables) } }
    public var groups: [String]
    /// Where the rule was written, for explanations (`policies/fleet.yaml:12`).
    public var location: String
    private var glob: Glob?
    private var template: Template

    static let variables: Set<String> = ["value", "*"]

    public init(source: IdentitySource, match: String? = nil, identity: String = "{value}", groups: [String] = [],
                location: String = "") {
        self.source = source
        self.match = match
        self.identity = identity
        self.groups = groups
        self.location = location
        self.glob = match.map(Glob.init)
        self.template = Template(identity, variables: Self.variables)
    }

    /// The identity name this rule gives the certificate, or nil when it does not apply. A name that is not
    /// a valid identity name (``Identity/problem(withName:)``) is never given; `unusable` collects it.
    func apply(to facts: CertificateFacts, unusable: inout [String]) -> String? {
        for value in source.values(in: facts) {
            let captured: String?
            if let match {
                if source == .fingerprint {
                    captured = normalizedFingerprint(match) == value ? "" : nil
                } else {
                    captured = glob?.capture(value)
                }
            } else {
                captured = ""
            }
            guard let captured, let name = template.expand({ $0 == "value" ? value : captured }), !name.isEmpty
            else { continue }
            if let problem = Identity.problem(withName: name) {
                unusable.append("\(location.isEmpty ? "a mapping" : location) gives \(String(reflecting: name)): \(problem)")
                continue
            }
            return name
        }
        return nil
    }
}

/// A glob with at most one capturing `*` (one or more bytes, never `/`), enough for the fleet naming schemes
/// mapping rules need; written here because no mirrored library does this capture. It compares UTF-8 bytes,
/// as identities are compared, never canonically equivalent characters.
struct Glob: Sendable, Hashable {
    let prefix: [UInt8]
    let suffix: [UInt8]?

    init(_ pattern: String) {
        let bytes = Array(pattern.utf8)
        if let star = bytes.firstIndex(of: UInt8(ascii: "*")) {
            prefix = Array(bytes[..<star])
            suffix = Array(bytes[(star + 1)...])
        } else {
            prefix = bytes
            suffix = nil
        }
    }

    func capture(_ value: String) -> String? {
        let bytes = value.utf8
        guard let suffix else { return bytes.elementsEqual(prefix) ? "" : nil }
        guard bytes.count > prefix.count + suffix.count, bytes.starts(with: prefix),
            bytes.reversed().starts(with: suffix.reversed())
        else { return nil }
        let middle = bytes.dropFirst(prefix.count).dropLast(suffix.count)
        return middle.contains(UInt8(ascii: "/")) ? nil : String(decoding: middle, as: UTF8.self)
    }
}
