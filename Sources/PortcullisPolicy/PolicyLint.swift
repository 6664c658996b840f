import PortcullisProtocol

/// A warning of `portcullis policy check`: something the gateway loads without complaint but that is
/// probably not what the author meant.
public struct PolicyFinding: Sendable, Hashable, Encodable, CustomStringConvertible {
    /// Stable short codes, so that tools can grep for them and an operator can look them up in
    /// `policies/README.md`.
    public enum Code: String, Sendable, Hashable, CaseIterable, Encodable {
        /// A rule that can never change a decision: an earlier (or any) deny or an earlier broader allow covers it.
        case shadowedRule = "shadowed-rule"
        /// An allow rule that admits no session at all.
        case grantsNothing = "grants-nothing"
        /// A rule names an identity no identity mapping can give.
        case unknownIdentity = "unknown-identity"
        /// A rule names a group no identity mapping gives.
        case unknownGroup = "unknown-group"
        /// Two mappings can give the same identity to two different certificates.
        case duplicateIdentity = "duplicate-identity"
        /// A publish grant ending in `#`: the identity may publish to a whole subtree.
        case broadPublish = "broad-publish"
        /// A grant to a group (or `*`) with `+` or `#` where other grants put `{identity}`: every member reaches
        /// every other member's topics.
        case broadGroupGrant = "broad-group-grant"
    }

    public var code: Code
    /// The file and 1-based line the finding is about, when known.
    public var file: String?
    public var line: Int?
    public var message: String

    public init(code: Code, location: String, message: String) {
        self.code = code
        self.message = message
        // Locations are written `file:line` by the loader.
        if let colon = location.lastIndex(of: ":"), let line = Int(location[location.index(after: colon)...]) {
            self.file = String(location[..<colon])
            self.line = line
        } else {
            self.file = location.isEmpty ? nil : location
            self.line = nil
        }
    }

    /// `file:line: warning: message [code]`, as compilers print, so editors and grep find it.
    public var description: String {
        let place = [file, line.map(String.init)].compactMap { $0 }.joined(separator: ":")
        return (place.isEmpty ? "" : "\(place): ") + "warning: \(message) [\(code.rawValue)]"
    }
}

/// The lints of `portcullis policy check` over a policy set the loader accepted. Pure: it reads the same
/// ``PolicySet`` the gateway decides with, so it sees the policies exactly as the gateway does.
///
/// Every check looks rules and names up by index, so a fleet's 100,000 pinned identities are checked in
/// about the time they take to load.
public struct PolicyLint {
    let policies: PolicySet
    private let names: IdentityNames

    public init(_ policies: PolicySet) {
        self.policies = policies
        self.names = IdentityNames(policies.mappings)
    }

    /// Every finding, in file order within each kind.
    public func findings() -> [PolicyFinding] {
        duplicateIdentities() + unknownSubjects() + rulesGrantingNothing() + shadowedRules() + broadGrants()
    }

    // MARK: Identity mapping

    /// Pairs of mappings that can give one name to different certificates: a certificate of one naming scheme
    /// (a CN chosen at issue) could then act as a device of another (a SPIFFE ID). One finding per pair of
    /// mappings, with an example name.
    func duplicateIdentities() -> [PolicyFinding] {
        var examples: [Pair: String] = [:]
        var order: [Pair] = []
        var exampleOfPattern: [Int: Pair] = [:]
        var othersOfPattern: [Int: Int] = [:]
        func note(_ first: Int, _ second: Int, _ name: String) {
            let pair = Pair(first: min(first, second), second: max(first, second))
            guard examples[pair] == nil, differentCertificates(pair, name: name) else { return }
            examples[pair] = name
            order.append(pair)
        }
        // In mapping order, so that the example name of a pair is the same on every run.
        for (name, indices) in names.byOnlyName.sorted(by: { $0.value[0] < $1.value[0] }) {
            for (position, first) in indices.enumerated() {
                for second in indices[(position + 1)...] { note(first, second, name) }
            }
            for pattern in names.patterns where policies.mappings[pattern].fieldValue(giving: name) != nil {
                for first in indices {
                    let pair = Pair(first: min(first, pattern), second: max(first, pattern))
                    guard differentCertificates(pair, name: name) else { continue }
                    // A CN fallback after 100,000 pins can imitate every one of them: one finding says so, with
                    // an example and a count, rather than 100,000.
                    if exampleOfPattern[pattern] == nil {
                        exampleOfPattern[pattern] = pair
                        note(first, pattern, name)
                    } else {
                        othersOfPattern[pattern, default: 0] += 1
                    }
                }
            }
        }
        for (position, first) in names.patterns.enumerated() {
            for second in names.patterns[(position + 1)...] {
                let rule = policies.mappings[first]
                guard let name = rule.overlapCandidate(with: policies.mappings[second]),
                    Identity.problem(withName: name) == nil, rule.fieldValue(giving: name) != nil,
                    policies.mappings[second].fieldValue(giving: name) != nil
                else { continue }
                note(first, second, name)
            }
        }
        return order.sorted { ($0.first, $0.second) < ($1.first, $1.second) }.map { pair in
            let name = examples[pair]!
            let first = policies.mappings[pair.first]
            let second = policies.mappings[pair.second]
            let pattern = exampleOfPattern[pair.first] == pair ? pair.first : pair.second
            let others = exampleOfPattern[pattern] == pair ? othersOfPattern[pattern] ?? 0 : 0
            let more = others == 0 ? "" : " (and \(others) more mapping(s) whose identity it can give too)"
            return PolicyFinding(
                code: .duplicateIdentity, location: second.location,
                message: "identity mappings at \(first.location) and \(second.location) can give the same identity to "
                    + "different certificates: '\(name)' from \(describe(first, giving: name)) and from "
                    + "\(describe(second, giving: name))" + more)
        }
    }

    private struct Pair: Hashable {
        var first: Int
        var second: Int
    }

    /// Whether the two rules give `name` from different field values (the same value of the same field is
    /// one certificate, not two).
    private func differentCertificates(_ pair: Pair, name: String) -> Bool {
        let first = policies.mappings[pair.first]
        let second = policies.mappings[pair.second]
        return first.source != second.source || first.fieldValue(giving: name) != second.fieldValue(giving: name)
    }

    private func describe(_ rule: IdentityMappingRule, giving name: String) -> String {
        let value = rule.fieldValue(giving: name) ?? "?"
        return "\(rule.source.rawValue) '\(value)'"
    }

    // MARK: Rules

    /// Identities and groups named by rules that no mapping gives: the rule never applies to them.
    func unknownSubjects() -> [PolicyFinding] {
        var findings: [PolicyFinding] = []
        for rule in policies.rules {
            for name in rule.identities where name != "*" && !names.canGive(name) {
                findings.append(
                    PolicyFinding(
                        code: .unknownIdentity, location: rule.location,
                        message: "rule '\(rule.name)' names identity '\(name)', which no identity mapping can give"))
            }
            for group in rule.groups where !names.groups.contains(group) {
                findings.append(
                    PolicyFinding(
                        code: .unknownGroup, location: rule.location,
                        message: "rule '\(rule.name)' names group '\(group)', which no identity mapping gives"))
            }
        }
        return findings
    }

    /// Allow rules that admit no session: no origin can meet them, or none of their identities and groups
    /// can exist.
    func rulesGrantingNothing() -> [PolicyFinding] {
        var findings: [PolicyFinding] = []
        for rule in policies.rules where rule.effect == .allow {
            if let origins = rule.origins, origins.entries.isEmpty, !rule.allowMissingOrigin {
                findings.append(
                    PolicyFinding(
                        code: .grantsNothing, location: rule.location,
                        message: "rule '\(rule.name)' admits no session: its origins list is empty and "
                            + "allow_missing_origin is false"))
            } else if !rule.identities.contains("*"),
                !rule.identities.contains(where: { names.canGive($0) }), !rule.groups.contains(where: { names.groups.contains($0) })
            {
                findings.append(
                    PolicyFinding(
                        code: .grantsNothing, location: rule.location,
                        message: "rule '\(rule.name)' admits no session: no identity mapping gives any of its "
                            + "identities or groups"))
            }
        }
        return findings
    }

    /// Rules that can never change a decision. A deny of the route wins wherever it is written, so anything it
    /// covers is dead; an allow is dead when an earlier allow covers its identities, routes and origins, grants
    /// at least its topics and is at least as tight in every limit (the earlier rule admits and is named
    /// instead, and the later one adds nothing to the grants or the limits).
    func shadowedRules() -> [PolicyFinding] {
        let index = RuleIndex(policies.rules)
        var findings: [PolicyFinding] = []
        for (position, rule) in policies.rules.enumerated() {
            for candidate in index.candidates(covering: rule) where candidate != position {
                let cover = policies.rules[candidate]
                guard covers(cover, subjectsAndRoutesOf: rule) else { continue }
                if cover.deniesRoute, rule.effect == .allow || candidate < position {
                    let verb = rule.effect == .allow ? "can never admit anyone" : "denies nothing more"
                    findings.append(
                        PolicyFinding(
                            code: .shadowedRule, location: rule.location,
                            message: "rule '\(rule.name)' \(verb): deny rule '\(cover.name)' (\(cover.location)) "
                                + "covers every identity and route it names"))
                    break
                }
                if candidate < position, cover.effect == rule.effect, !cover.deniesRoute, !rule.deniesRoute,
                    coversTopics(cover, of: rule), rule.effect == .deny || admitsEverySessionOf(cover, rule)
                {
                    let what = rule.effect == .allow ? "allow" : "deny"
                    findings.append(
                        PolicyFinding(
                            code: .shadowedRule, location: rule.location,
                            message: "rule '\(rule.name)' can never change a decision: the earlier \(what) rule "
                                + "'\(cover.name)' (\(cover.location)) covers its identities, routes and topics"))
                    break
                }
            }
        }
        return findings
    }

    private func covers(_ cover: PolicyRule, subjectsAndRoutesOf rule: PolicyRule) -> Bool {
        let subjects =
            cover.identities.contains("*")
            || (Set(rule.identities).isSubset(of: cover.identities) && Set(rule.groups).isSubset(of: cover.groups))
        let routes = cover.routes.contains("*") || Set(rule.routes).isSubset(of: cover.routes)
        return subjects && routes
    }

    private func coversTopics(_ cover: PolicyRule, of rule: PolicyRule) -> Bool {
        func covered(_ patterns: [String], by grants: [String]) -> Bool {
            patterns.allSatisfy { pattern in grants.contains { Topic.covers(pattern: $0, filter: pattern) } }
        }
        return covered(rule.publish, by: cover.publish) && covered(rule.subscribe, by: cover.subscribe)
    }

    /// Whether the allow rule `cover` admits (and so is named for) every session `rule` would admit, and no
    /// limit of `rule` is tighter than its own.
    private func admitsEverySessionOf(_ cover: PolicyRule, _ rule: PolicyRule) -> Bool {
        if rule.allowMissingOrigin && !cover.allowMissingOrigin { return false }
        if let coverOrigins = cover.origins {
            guard let origins = rule.origins, Set(origins.entries).isSubset(of: coverOrigins.entries) else {
                return false
            }
        }
        return Limits.tightest([cover.limits, rule.limits]) == cover.limits
    }

    // MARK: Grants

    /// Publish grants of a whole subtree, and wildcards that let a group's members reach one another's topics.
    func broadGrants() -> [PolicyFinding] {
        let identityLevels = Self.identityLevels(in: policies.rules)
        var findings: [PolicyFinding] = []
        for rule in policies.rules where rule.effect == .allow {
            for pattern in rule.publish where Self.levels(pattern).last == "#" {
                findings.append(
                    PolicyFinding(
                        code: .broadPublish, location: rule.location,
                        message: "rule '\(rule.name)' lets its identities publish to the whole subtree '\(pattern)'"))
            }
            guard !rule.groups.isEmpty || rule.identities.contains("*") else { continue }
            let whom = rule.identities.contains("*") ? "every identity" : "group(s) \(rule.groups.joined(separator: ", "))"
            for (key, patterns) in [("publish", rule.publish), ("subscribe", rule.subscribe)] {
                for pattern in patterns where Self.wildcardAtIdentityLevel(pattern, identityLevels) {
                    findings.append(
                        PolicyFinding(
                            code: .broadGroupGrant, location: rule.location,
                            message: "rule '\(rule.name)' grants \(whom) \(key) '\(pattern)', a wildcard where other "
                                + "grants put {identity}: each member reaches every other member's topics"))
                }
            }
        }
        return findings
    }

    /// The levels leading to each level where some grant puts `{identity}` or `{cn}` (`devices` for
    /// `devices/{identity}/telemetry`): where a fleet's topics tell one device from another.
    static func identityLevels(in rules: [PolicyRule]) -> Set<[String]> {
        var found: Set<[String]> = []
        for rule in rules {
            for pattern in rule.publish + rule.subscribe {
                let parts = levels(pattern)
                for (index, level) in parts.enumerated() where level.contains("{identity}") || level.contains("{cn}") {
                    found.insert(Array(parts[..<index]))
                }
            }
        }
        return found
    }

    /// Whether `pattern` has `+` at an identity level, or `#` at or above one.
    static func wildcardAtIdentityLevel(_ pattern: String, _ identityLevels: Set<[String]>) -> Bool {
        let parts = levels(pattern)
        func leadsTo(_ leading: [String], through count: Int) -> Bool {
            zip(parts.prefix(count), leading).allSatisfy { $0 == "+" || $0 == $1 }
        }
        for (index, level) in parts.enumerated() {
            if level == "+", identityLevels.contains(where: { $0.count == index && leadsTo($0, through: index) }) {
                return true
            }
            if level == "#", identityLevels.contains(where: { $0.count >= index && leadsTo($0, through: index) }) {
                return true
            }
        }
        return false
    }

    static func levels(_ pattern: String) -> [String] {
        pattern.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    }
}

/// The names a policy set's identity mappings can give, indexed: the names of mappings that give only one
/// name by that name, and the few pattern mappings to try one by one.
struct IdentityNames {
    let mappings: [IdentityMappingRule]
    /// Mappings that give one name whatever the certificate holds, by that name (in mapping order).
    let byOnlyName: [String: [Int]]
    /// Mappings whose name depends on the certificate.
    let patterns: [Int]
    /// Every group some mapping gives.
    let groups: Set<String>

    init(_ mappings: [IdentityMappingRule]) {
        self.mappings = mappings
        var byOnlyName: [String: [Int]] = [:]
        var patterns: [Int] = []
        for (index, mapping) in mappings.enumerated() {
            if let name = mapping.onlyName {
                byOnlyName[name, default: []].append(index)
            } else {
                patterns.append(index)
            }
        }
        self.byOnlyName = byOnlyName
        self.patterns = patterns
        self.groups = Set(mappings.flatMap(\.groups))
    }

    /// Whether some mapping can give `name`. Compared as bytes, as identities are: `[String: …]` lookups treat
    /// canonically equivalent names as equal, so a hit is confirmed byte for byte.
    func canGive(_ name: String) -> Bool {
        if let indices = byOnlyName[name],
            indices.contains(where: { mappings[$0].onlyName.map { $0.utf8.elementsEqual(name.utf8) } ?? false })
        {
            return true
        }
        return patterns.contains { mappings[$0].fieldValue(giving: name) != nil }
    }
}

/// Rules by the identities and groups they name, so that finding the rules that could cover one rule costs a
/// lookup, not a walk over every rule.
private struct RuleIndex {
    private var byIdentity: [String: [Int]] = [:]
    private var byGroup: [String: [Int]] = [:]
    private var forEveryone: [Int] = []

    init(_ rules: [PolicyRule]) {
        for (index, rule) in rules.enumerated() {
            for name in rule.identities {
                if name == "*" { forEveryone.append(index) } else { byIdentity[name, default: []].append(index) }
            }
            for group in rule.groups { byGroup[group, default: []].append(index) }
        }
    }

    /// Rules that may cover every identity and group `rule` names: a cover names all of them, so it is among
    /// the rules naming the first one (or among those for everyone).
    func candidates(covering rule: PolicyRule) -> [Int] {
        var found = forEveryone
        if !rule.identities.contains("*") {
            if let first = rule.identities.first {
                found += byIdentity[first] ?? []
            } else if let first = rule.groups.first {
                found += byGroup[first] ?? []
            }
        }
        return Array(Set(found)).sorted()
    }
}
