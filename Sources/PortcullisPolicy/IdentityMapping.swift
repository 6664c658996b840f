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
    public var match: String? {
        didSet {
            glob = match.map(Glob.init)
            pinned = match.flatMap(normalizedFingerprint)
        }
    }
    /// The identity name: `{value}` is the whole field, `{*}` what the `*` of `match` covered. Substituted once:
    /// a field that contains `{*}` itself stays as it is.
    public var identity: String { didSet { template = Template(identity, variables: Self.variables) } }
    public var groups: [String]
    /// Where the rule was written, for explanations (`policies/fleet.yaml:12`).
    public var location: String
    private(set) var glob: Glob?
    /// `match` in the form certificate facts carry fingerprints, worked out once rather than per comparison.
    private var pinned: String?
    private(set) var template: Template

    static let variables: Set<String> = ["value", "*"]

    public init(source: IdentitySource, match: String? = nil, identity: String = "{value}", groups: [String] = [],
                location: String = "") {
        self.source = source
        self.match = match
        self.identity = identity
        self.groups = groups
        self.location = location
        self.glob = match.map(Glob.init)
        self.pinned = match.flatMap(normalizedFingerprint)
        self.template = Template(identity, variables: Self.variables)
    }

    /// The one value of its field this rule can match, when it names one (a pinned fingerprint, or a pattern
    /// without `*`): such rules are found by hash lookup instead of being tried one by one.
    var exactKey: IdentityMappingIndex.Key? {
        guard let match else { return nil }
        if source == .fingerprint { return pinned.map { .init(source: source, value: $0) } }
        return glob?.suffix == nil ? .init(source: source, value: match) : nil
    }

    /// The identity name this rule gives the certificate, or nil when it does not apply. A name that is not
    /// a valid identity name (``Identity/problem(withName:)``) is never given; `unusable` collects it.
    func apply(to facts: CertificateFacts, unusable: inout [String]) -> String? {
        for value in source.values(in: facts) {
            let captured: String?
            if match != nil {
                if source == .fingerprint {
                    captured = pinned == value ? "" : nil
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

/// The mapping rules of a policy set, arranged so that finding the first rule that applies to a certificate
/// costs a hash lookup per certificate field plus the rules with a `*` or no pattern, not a walk over every
/// rule: a fleet pins 100,000 fingerprints or names 100,000 CNs.
struct IdentityMappingIndex: Sendable {
    struct Key: Hashable, Sendable {
        var source: IdentitySource
        var value: String
    }

    /// Rules with an exact value, by that value. String keys compare canonically equivalent text as equal,
    /// where rules compare bytes: the index only proposes candidates, and each candidate's rule decides.
    private let exact: [Key: [Int]]
    /// Rules every certificate has to be tried against (globs with `*`, rules without a pattern).
    private let tried: [Int]

    init(_ rules: [IdentityMappingRule]) {
        var exact: [Key: [Int]] = [:]
        var tried: [Int] = []
        for (index, rule) in rules.enumerated() {
            if let key = rule.exactKey {
                exact[key, default: []].append(index)
            } else if rule.source != .fingerprint || rule.match == nil {
                // A fingerprint pin that is not a fingerprint can match nothing, so it is left out.
                tried.append(index)
            }
        }
        self.exact = exact
        self.tried = tried
    }

    /// The indices of the rules that may apply to `facts`, in rule order.
    func candidates(for facts: CertificateFacts) -> [Int] {
        var found = tried
        for source in IdentitySource.allCases {
            for value in source.values(in: facts) {
                if let rules = exact[Key(source: source, value: value)] { found += rules }
            }
        }
        return found.count == tried.count ? found : Array(Set(found)).sorted()
    }
}
