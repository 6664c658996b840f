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
    /// `file:line` of the rule, for explanations and diagnostics.
    public var location: String

    public init(
        name: String,
        effect: Effect = .allow,
        identities: [String] = [],
        groups: [String] = [],
        routes: [String],
        origins: OriginMatcher? = nil,
        allowMissingOrigin: Bool = false,
        location: String = ""
    ) {
        self.name = name
        self.effect = effect
        self.identities = identities
        self.groups = groups
        self.routes = routes
        self.origins = origins
        self.allowMissingOrigin = allowMissingOrigin
        self.location = location
    }

    func grants(route: String) -> Bool {
        routes.contains("*") || routes.contains(route)
    }
}
