/// One admission rule: which identities may open which routes, from which origins.
///
/// Policy is data (as in nats-server's `Permissions`): decisions are made by ``PolicySet``, never here.
public struct PolicyRule: Sendable, Hashable {
    public enum Effect: String, Sendable, Hashable {
        case allow
        case deny
    }

    public var name: String
    public var effect: Effect
    /// Identity names this rule applies to; `*` means every mapped identity.
    public var identities: [String]
    /// Groups (from identity mapping) this rule applies to.
    public var groups: [String]
    /// Route paths this rule grants (or denies); `*` means every route.
    public var routes: [String]
    /// Origins allowed under this rule, narrowing the gateway-wide list; nil means the gateway-wide list.
    public var origins: OriginMatcher?
    /// Whether a client sending no `Origin` header (a device, not a browser) is admitted under this rule.
    public var allowMissingOrigin: Bool
    /// Topic patterns this rule lets the identity publish to (or, for a deny rule, forbids), with `{identity}`
    /// and `{cn}` standing for the session's values.
    public var publish: [String]
    public var subscribe: [String]
    /// Limits of sessions admitted by this rule.
    public var limits: Limits
    /// `file:line` of the rule, for explanations and diagnostics.
    public var location: String

    /// A deny rule with topic patterns denies those topics; without them it denies the route itself.
    public var deniesRoute: Bool { effect == .deny && publish.isEmpty && subscribe.isEmpty }

    public init(
        name: String,
        effect: Effect = .allow,
        identities: [String] = [],
        groups: [String] = [],
        routes: [String],
        origins: OriginMatcher? = nil,
        allowMissingOrigin: Bool = false,
        publish: [String] = [],
        subscribe: [String] = [],
        limits: Limits = Limits(),
        location: String = ""
    ) {
        self.name = name
        self.effect = effect
        self.identities = identities
        self.groups = groups
        self.routes = routes
        self.origins = origins
        self.allowMissingOrigin = allowMissingOrigin
        self.publish = publish
        self.subscribe = subscribe
        self.limits = limits
        self.location = location
    }

    func grants(route: String) -> Bool {
        routes.contains("*") || routes.contains(route)
    }

    /// Whether a session with this `Origin` header (nil when it sent none) meets the rule's origin condition.
    func accepts(origin: String?) -> Bool {
        guard let origin else { return allowMissingOrigin }
        return origins?.allows(origin) ?? true
    }
}
