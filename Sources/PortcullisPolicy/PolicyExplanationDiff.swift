/// What changes for one certificate between two policy sets: the answer of `policy explain --diff`, so that a
/// reviewer sees what a policy change does to a device before it is deployed.
public struct PolicyExplanationDiff: Sendable, Equatable, Encodable {
    /// One change: `aspect` names what changed (`identity`, `decision`, `publish`, `limits.sessions`, …);
    /// a grant that was added has only `after`, one that was removed only `before`.
    public struct Change: Sendable, Equatable, Encodable {
        public var aspect: String
        public var before: String?
        public var after: String?

        public init(aspect: String, before: String?, after: String?) {
            self.aspect = aspect
            self.before = before
            self.after = after
        }
    }

    public var before: PolicyExplanation
    public var after: PolicyExplanation
    public var changes: [Change]

    /// Whether nothing changes for this certificate.
    public var isEmpty: Bool { changes.isEmpty }

    public init(before: PolicyExplanation, after: PolicyExplanation) {
        self.before = before
        self.after = after
        var changes: [Change] = []
        func compare(_ aspect: String, _ old: String?, _ new: String?) {
            if old != new { changes.append(Change(aspect: aspect, before: old, after: new)) }
        }
        compare("identity", before.identity?.name, after.identity?.name)
        if let old = before.identity, let new = after.identity {
            compare("groups", old.groups.joined(separator: ", "), new.groups.joined(separator: ", "))
            // The mapping as written, not where: moving it to another file or line changes nothing.
            compare("mapping", old.rule, new.rule)
        }
        compare("decision", Self.decision(before), Self.decision(after))
        compare("rule", before.rule, after.rule)
        let oldGrants = before.grants
        let newGrants = after.grants
        let grantLists: [(String, KeyPath<PolicyExplanation.Grants, [String]>)] = [
            ("publish", \.publish), ("subscribe", \.subscribe), ("deny_publish", \.denyPublish),
            ("deny_subscribe", \.denySubscribe),
        ]
        for (aspect, path) in grantLists {
            let old = oldGrants?[keyPath: path] ?? []
            let new = newGrants?[keyPath: path] ?? []
            for pattern in old where !new.contains(pattern) { changes.append(Change(aspect: aspect, before: pattern, after: nil)) }
            for pattern in new where !old.contains(pattern) { changes.append(Change(aspect: aspect, before: nil, after: pattern)) }
        }
        // Limits are compared only when both sides admit: a refused session has none, and the decision
        // change already says so.
        if let oldLimits = before.limits, let newLimits = after.limits {
            for (old, new) in zip(oldLimits.described, newLimits.described) {
                compare("limits.\(old.name)", old.value, new.value)
            }
        }
        for (old, new) in zip(before.topics, after.topics) {
            compare("\(old.action.rawValue) \(old.topic)", Self.verdict(old), Self.verdict(new))
        }
        self.changes = changes
    }

    private static func decision(_ explanation: PolicyExplanation) -> String {
        explanation.admitted ? "admitted" : "refused (\(explanation.reason ?? "unknown"))"
    }

    private static func verdict(_ answer: PolicyExplanation.TopicAnswer) -> String {
        answer.allowed ? "allowed" : "forbidden"
    }
}
