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
    private let rulesByIdentity: [String: [Int]]
    private let rulesByGroup: [String: [Int]]
    private let rulesForEveryone: [Int]

    public init(mappings: [IdentityMappingRule], rules: [PolicyRule]) {
        self.mappings = mappings
        self.rules = rules
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
        for rule in mappings {
            if let name = rule.apply(to: facts) {
                return Identity(name: name, groups: rule.groups, mappingRule: rule.location, certificate: facts)
            }
        }
        return nil
    }

    /// The rules that name this identity, one of its groups, or everyone, in file order.
    public func rules(for identity: Identity) -> [PolicyRule] {
        var indices = rulesForEveryone + (rulesByIdentity[identity.name] ?? [])
        for group in identity.groups { indices += rulesByGroup[group] ?? [] }
        return Set(indices).sorted().map { rules[$0] }
    }

    /// The message permissions of a session of `identity` on `route`: the union of the publish/subscribe
    /// grants of every allow rule for that identity and route, the topic denials of every deny rule, and the
    /// tightest of their limits (so the order of rules never loosens a limit).
    public func permissions(for identity: Identity, route: String) -> MessagePermissions {
        var permissions = MessagePermissions()
        var limits: [Limits] = []
        for rule in rules(for: identity) where rule.grants(route: route) {
            let publish = rule.publish.compactMap { substitute($0, identity: identity) }
            let subscribe = rule.subscribe.compactMap { substitute($0, identity: identity) }
            if rule.effect == .allow {
                permissions.publish += publish
                permissions.subscribe += subscribe
                limits.append(rule.limits)
            } else {
                permissions.denyPublish += publish
                permissions.denySubscribe += subscribe
            }
        }
        permissions.limits = Limits.tightest(limits)
        return permissions
    }

    /// The pattern with the session's values in place of `{identity}` and `{cn}`; nil when a value is missing
    /// or would change the pattern's shape (a `/`, `+` or `#` in a CN must not widen a grant).
    func substitute(_ pattern: String, identity: Identity) -> String? {
        var result = pattern
        let values: [(String, String?)] = [("{identity}", identity.name), ("{cn}", identity.certificate.commonName)]
        for (variable, value) in values where result.contains(variable) {
            guard let value, !value.isEmpty, !value.contains(where: { "/+#".contains($0) }) else { return nil }
            result = result.replacingOccurrences(of: variable, with: value)
        }
        return result
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
        for rule in allows {
            if let origin {
                if rule.origins?.allows(origin) ?? true { return .admit(rule: rule.name) }
            } else if rule.allowMissingOrigin {
                return .admit(rule: rule.name)
            }
        }
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
