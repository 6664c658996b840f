/// What the gateway's policy stage decides for one certificate on one route from one origin, and why: the
/// answer of `portcullis policy explain`.
///
/// Built only from the calls admission makes (``PolicySet/identify(_:)``, ``PolicySet/decide(identity:route:origin:gatewayOrigins:)``
/// and ``PolicySet/permissions(for:route:origin:)``, then ``MessagePermissions``' verdicts), so an explanation
/// cannot disagree with the gateway. The certificate is assumed to have verified: chain, validity and
/// revocation are checked before policy and are not part of it.
public struct PolicyExplanation: Sendable, Equatable, Encodable {
    /// What is asked: who (the certificate's facts), where (the route), from where (the `Origin` header, nil
    /// when absent), and which topics to try.
    public struct Question: Sendable {
        public var certificate: CertificateFacts
        public var route: String
        public var origin: String?
        public var publish: [String]
        public var subscribe: [String]

        public init(certificate: CertificateFacts, route: String, origin: String?, publish: [String] = [], subscribe: [String] = []) {
            self.certificate = certificate
            self.route = route
            self.origin = origin
            self.publish = publish
            self.subscribe = subscribe
        }
    }

    /// The identity a mapping gave, and which mapping.
    public struct MappedIdentity: Sendable, Equatable, Encodable {
        public var name: String
        public var groups: [String]
        /// `file:line` of the mapping rule.
        public var mapping: String
        /// The certificate field the mapping read (`cn`, `san_uri`, `san_dns`, `fingerprint`).
        public var source: String?
        /// The mapping as written: its source, match and identity template.
        public var rule: String?

        public init(name: String, groups: [String], mapping: String, source: String? = nil, rule: String? = nil) {
            self.name = name
            self.groups = groups
            self.mapping = mapping
            self.source = source
            self.rule = rule
        }
    }

    /// The session's message grants, with `{identity}` and `{cn}` substituted.
    public struct Grants: Sendable, Equatable, Encodable {
        public var publish: [String]
        public var subscribe: [String]
        public var denyPublish: [String]
        public var denySubscribe: [String]

        enum CodingKeys: String, CodingKey {
            case publish, subscribe
            case denyPublish = "deny_publish"
            case denySubscribe = "deny_subscribe"
        }
    }

    /// The answer for one `--publish` or `--subscribe` topic.
    public struct TopicAnswer: Sendable, Equatable, Encodable {
        public enum Action: String, Sendable, Equatable, Encodable {
            case publish, subscribe
        }

        public var action: Action
        public var topic: String
        public var allowed: Bool
        public var reason: String?
    }

    public var route: String
    public var origin: String?
    public var identity: MappedIdentity?
    public var admitted: Bool
    /// The rule that admits the session, or the one the refusal names (when there is one).
    public var rule: String?
    /// `file:line` of ``rule``.
    public var ruleLocation: String?
    /// The stable refusal code written to the audit log (``PolicyRefusal`` raw values, or `unknown_route`).
    public var reason: String?
    /// The full reason, as the audit record gives it.
    public var detail: String
    /// Grants and limits of an admitted session; nil when refused.
    public var grants: Grants?
    public var limits: Limits?
    public var topics: [TopicAnswer]

    enum CodingKeys: String, CodingKey {
        case route, origin, identity, admitted, rule, reason, detail, grants, limits, topics
        case ruleLocation = "rule_location"
    }

    /// Whether the session is admitted and every topic asked about is allowed.
    public var allAllowed: Bool { admitted && topics.allSatisfy(\.allowed) }

    /// Explains `question` under `policies`. `routes` are the gateway's configured route paths (a path not
    /// among them is refused `unknown_route` before policy, as admission does); nil skips that check.
    public static func explain(
        _ question: Question, policies: PolicySet, gatewayOrigins: OriginMatcher, routes: [String]? = nil
    ) -> PolicyExplanation {
        var explanation = PolicyExplanation(
            route: question.route, origin: question.origin, identity: nil, admitted: false, rule: nil, ruleLocation: nil,
            reason: nil, detail: "", grants: nil, limits: nil, topics: [])
        if let routes, !routes.contains(question.route) {
            explanation.refuse("unknown_route", "no route is configured for path \(question.route)", question)
            return explanation
        }
        guard let identity = policies.identify(question.certificate) else {
            explanation.refuse(PolicyRefusal.noIdentityMapping.rawValue, policies.mappingFailure(question.certificate), question)
            return explanation
        }
        let mapping = policies.mappings.first { $0.location == identity.mappingRule }
        explanation.identity = MappedIdentity(
            name: identity.name, groups: identity.groups, mapping: identity.mappingRule,
            source: mapping?.source.rawValue, rule: mapping.map(Self.describe))
        let decision = policies.decide(
            identity: identity, route: question.route, origin: question.origin, gatewayOrigins: gatewayOrigins)
        switch decision {
        case .refuse(let refusal, let rule, let detail):
            explanation.rule = rule
            explanation.ruleLocation = rule.flatMap { name in policies.rules.first { $0.name == name }?.location }
            explanation.refuse(refusal.rawValue, detail, question)
        case .admit(let rule):
            let admitting = policies.rules.first { $0.name == rule }
            explanation.admitted = true
            explanation.rule = rule
            explanation.ruleLocation = admitting?.location
            explanation.detail = "rule '\(rule)' admits '\(identity.name)' on \(question.route)"
            let permissions = policies.permissions(for: identity, route: question.route, origin: question.origin)
            explanation.grants = Grants(
                publish: permissions.publish, subscribe: permissions.subscribe, denyPublish: permissions.denyPublish,
                denySubscribe: permissions.denySubscribe)
            explanation.limits = permissions.limits
            explanation.topics =
                question.publish.map { TopicAnswer(.publish, $0, permissions.mayPublish(to: $0)) }
                + question.subscribe.map { TopicAnswer(.subscribe, $0, permissions.maySubscribe(to: $0)) }
        }
        return explanation
    }

    /// `san_uri 'spiffe://example.test/device/*' -> 'device-{*}'`: what a mapping does, whatever its file and line.
    static func describe(_ mapping: IdentityMappingRule) -> String {
        "\(mapping.source.rawValue)" + (mapping.match.map { " '\($0)'" } ?? "") + " -> '\(mapping.identity)'"
    }

    private mutating func refuse(_ reason: String, _ detail: String, _ question: Question) {
        self.reason = reason
        self.detail = detail
        let notAdmitted = "the session is not admitted (\(reason))"
        topics =
            question.publish.map { TopicAnswer(action: .publish, topic: $0, allowed: false, reason: notAdmitted) }
            + question.subscribe.map { TopicAnswer(action: .subscribe, topic: $0, allowed: false, reason: notAdmitted) }
    }
}

extension PolicyExplanation.TopicAnswer {
    init(_ action: Action, _ topic: String, _ verdict: MessagePermissions.Verdict) {
        self.action = action
        self.topic = topic
        switch verdict {
        case .allowed: (allowed, reason) = (true, nil)
        case .forbidden(let why): (allowed, reason) = (false, why)
        }
    }
}

extension Limits: Encodable {
    enum CodingKeys: String, CodingKey {
        case sessions, subscriptions
        case messagesPerSecond = "messages_per_second"
        case bytesPerSecond = "bytes_per_second"
        case maxMessageBytes = "max_message_bytes"
        case onRateLimit = "on_rate_limit"
        case maxViolations = "max_violations"
    }

    /// Unlimited values are written as `null`, so a tool sees every limit's name.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(sessions, forKey: .sessions)
        try container.encode(messagesPerSecond, forKey: .messagesPerSecond)
        try container.encode(bytesPerSecond, forKey: .bytesPerSecond)
        try container.encode(subscriptions, forKey: .subscriptions)
        try container.encode(maxMessageBytes, forKey: .maxMessageBytes)
        try container.encode(onRateLimit.rawValue, forKey: .onRateLimit)
        try container.encode(maxViolations, forKey: .maxViolations)
    }

    /// Each limit by its policy-file name and value (`unlimited` when unset), in the order the README lists them.
    public var described: [(name: String, value: String)] {
        func number(_ value: Int?) -> String { value.map(String.init) ?? "unlimited" }
        func rate(_ value: Double?) -> String {
            guard let value else { return "unlimited" }
            // Rates come from bounded integers in the policy file; anything else is printed as it is.
            return value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
        }
        return [
            ("sessions", number(sessions)),
            ("messages_per_second", rate(messagesPerSecond)),
            ("bytes_per_second", rate(bytesPerSecond)),
            ("subscriptions", number(subscriptions)),
            ("max_message_bytes", number(maxMessageBytes)),
            ("on_rate_limit", onRateLimit.rawValue),
            ("max_violations", String(maxViolations)),
        ]
    }
}
