/// Why admission was refused by policy; the raw value is the stable code written to the audit log.
public enum PolicyRefusal: String, Sendable, Hashable, CaseIterable {
    case noIdentityMapping = "no_identity_mapping"
    case originNotAllowed = "origin_not_allowed"
    case originRequired = "origin_required"
    case noMatchingRule = "no_matching_rule"
    case deniedByRule = "denied_by_rule"
}

/// The outcome of the policy stage of admission.
public enum AdmissionDecision: Sendable, Hashable {
    /// Admitted by the named rule.
    case admit(rule: String)
    /// Refused; `rule` names the rule involved when there is one, `detail` is the full reason for the audit log.
    case refuse(PolicyRefusal, rule: String?, detail: String)
}

/// The loaded policies: identity mapping rules (first match wins) and admission rules, indexed so that a
/// decision looks up only the rules naming this identity, its groups, or `*` — never a scan of every rule.
public struct PolicySet: Sendable {
    public let mappings: [IdentityMappingRule]
    public let rules: [PolicyRule]
    private let mappingIndex: IdentityMappingIndex
    private let rulesByIdentity: [String: [Int]]
    private let rulesByGroup: [String: [Int]]
    private let rulesForEveryone: [Int]

    public init(mappings: [IdentityMappingRule], rules: [PolicyRule]) {
        self.mappings = mappings
        self.rules = rules
        self.mappingIndex = IdentityMappingIndex(mappings)
        var byIdentity: [String: [Int]] = [:]
        var byGroup: [String: [Int]] = [:]
        var everyone: [Int] = []
        for (index, rule) in rules.enumerated() {
            for name in rule.identities {
                if name == "*" { everyone.append(index) } else { byIdentity[name, default: []].append(index) }
            }
            for group in rule.groups { byGroup[group, default: []].append(index) }
        }
        self.rulesByIdentity = byIdentity
        self.rulesByGroup = byGroup
        self.rulesForEveryone = everyone
    }

    /// Default deny: an empty policy set maps no one and admits no one.
    public static let empty = PolicySet(mappings: [], rules: [])

    /// The identity the first matching mapping rule gives this certificate, or nil when none applies.
    public func identify(_ facts: CertificateFacts) -> Identity? {
        var unusable: [String] = []
        for index in mappingIndex.candidates(for: facts) {
            let rule = mappings[index]
            if let name = rule.apply(to: facts, unusable: &unusable) {
                return Identity(name: name, groups: rule.groups, mappingRule: rule.location, certificate: facts)
            }
        }
        return nil
    }

    /// Why ``identify(_:)`` gives this certificate no identity, for the refusal's audit detail: no rule
    /// matched, or the names the rules gave are not valid identity names.
    public func mappingFailure(_ facts: CertificateFacts) -> String {
        var unusable: [String] = []
        for index in mappingIndex.candidates(for: facts) { _ = mappings[index].apply(to: facts, unusable: &unusable) }
        if unusable.isEmpty { return "no identity mapping rule matches certificate \(facts.subject)" }
        return "certificate \(facts.subject) maps to no valid identity name: " + unusable.joined(separator: "; ")
    }

    /// The rules that name this identity, one of its groups, or everyone, in file order.
    public func rules(for identity: Identity) -> [PolicyRule] {
        var indices = rulesForEveryone + (rulesByIdentity[identity.name] ?? [])
        for group in identity.groups { indices += rulesByGroup[group] ?? [] }
        return Set(indices).sorted().map { rules[$0] }
    }

    /// The message permissions of a session of `identity` on `route` that came with `origin` (nil when it
    /// sent none): the union of the publish/subscribe grants of the allow rules for that identity and route
    /// whose origin condition this session meets (a rule for another origin grants it nothing), the topic
    /// denials of every deny rule for them, and the tightest of the granting rules' limits (so the order of
    /// rules never loosens a limit).
    public func permissions(for identity: Identity, route: String, origin: String?) -> MessagePermissions {
        var permissions = MessagePermissions()
        var limits: [Limits] = []
        for rule in rules(for: identity) where rule.grants(route: route) {
            if rule.effect == .allow {
                guard rule.accepts(origin: origin) else { continue }
                permissions.publish += rule.publish.compactMap { substitute($0, identity: identity) }
                permissions.subscribe += rule.subscribe.compactMap { substitute($0, identity: identity) }
                limits.append(rule.limits)
            } else {
                permissions.denyPublish += rule.publish.map { substituteDenial($0, identity: identity) }
                permissions.denySubscribe += rule.subscribe.map { substituteDenial($0, identity: identity) }
            }
        }
        permissions.limits = Limits.tightest(limits)
        return permissions
    }

    /// Variables a topic pattern may use.
    static let topicVariables: Set<String> = ["identity", "cn"]

    /// The session's value of a topic pattern variable, when it can stand in a topic level: present,
    /// non-empty, and without a `/`, `+`, `#` or control character (which would change the pattern's shape
    /// or match nothing). Checked as bytes, as topics are matched.
    private func topicValue(_ variable: String, identity: Identity) -> String? {
        guard let value = variable == "identity" ? identity.name : identity.certificate.commonName, !value.isEmpty,
            !value.utf8.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 < 0x20 || $0 == 0x7F })
        else { return nil }
        return value
    }

    /// The pattern with the session's values in place of `{identity}` and `{cn}`, substituted once; nil when
    /// a value is missing or could not stand in a topic (a `/`, `+` or `#` in a CN must not widen a grant).
    func substitute(_ pattern: String, identity: Identity) -> String? {
        Template(pattern, variables: Self.topicVariables).expand { topicValue($0, identity: identity) }
    }

    /// A denied pattern with the session's values in place. A denial must never be dropped because a value is
    /// missing: from the first level whose variable cannot be substituted, it denies everything (`#`).
    func substituteDenial(_ pattern: String, identity: Identity) -> String {
        if let whole = substitute(pattern, identity: identity) { return whole }
        var levels: [String] = []
        for level in pattern.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            guard let expanded = substitute(String(decoding: level, as: UTF8.self), identity: identity) else {
                levels.append("#")
                break
            }
            levels.append(expanded)
        }
        return levels.joined(separator: "/")
    }

    /// Decides whether `identity` may open `route` with the given `Origin` header (nil when absent).
    ///
    /// Order, as in the admission design: the gateway-wide origin allow-list, then an explicit deny (which
    /// always wins), then the first allow rule for the route whose origin condition holds.
    public func decide(
        identity: Identity,
        route: String,
        origin: String?,
        gatewayOrigins: OriginMatcher
    ) -> AdmissionDecision {
        if let origin, !gatewayOrigins.allows(origin) {
            return .refuse(.originNotAllowed, rule: nil, detail: "origin '\(origin)' is not on the gateway's allow-list")
        }
        let applicable = rules(for: identity).filter { $0.grants(route: route) }
        if let deny = applicable.first(where: { $0.deniesRoute }) {
            return .refuse(
                .deniedByRule, rule: deny.name,
                detail: "rule '\(deny.name)' (\(deny.location)) denies '\(identity.name)' on \(route)")
        }
        let allows = applicable.filter { $0.effect == .allow }
        guard !allows.isEmpty else {
            return .refuse(
                .noMatchingRule, rule: nil, detail: "no rule grants identity '\(identity.name)' the route \(route)")
        }
        if let rule = allows.first(where: { $0.accepts(origin: origin) }) { return .admit(rule: rule.name) }
        let names = allows.map(\.name).joined(separator: ", ")
        if let origin {
            return .refuse(
                .originNotAllowed, rule: allows.first?.name,
                detail: "origin '\(origin)' is not allowed by the rules granting \(route) to '\(identity.name)' (\(names))")
        }
        return .refuse(
            .originRequired, rule: allows.first?.name,
            detail: "no Origin header, and no rule granting \(route) to '\(identity.name)' allows that (\(names))")
    }
}
