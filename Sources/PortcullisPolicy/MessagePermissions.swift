import PortcullisProtocol

/// What one session may do with messages: its publish and subscribe grants and denials, with the identity
/// variables (`{identity}`, `{cn}`) already substituted, plus its limits.
public struct MessagePermissions: Sendable, Equatable {
    public var publish: [String] = []
    public var subscribe: [String] = []
    public var denyPublish: [String] = []
    public var denySubscribe: [String] = []
    public var limits: Limits = Limits()

    public init(
        publish: [String] = [], subscribe: [String] = [], denyPublish: [String] = [], denySubscribe: [String] = [],
        limits: Limits = Limits()
    ) {
        self.publish = publish
        self.subscribe = subscribe
        self.denyPublish = denyPublish
        self.denySubscribe = denySubscribe
        self.limits = limits
    }

    /// Whether a message on `topic` may be delivered to the session (no denied pattern matches it).
    public func mayReceive(_ topic: String) -> Bool {
        !denySubscribe.contains { Topic.matches(filter: $0, topic: topic) }
    }

    public enum Verdict: Sendable, Equatable {
        case allowed
        /// Refused; the reason names the pattern or the absence of one.
        case forbidden(String)
    }

    /// May the session publish to `topic` (a valid topic name)? An explicit deny wins.
    public func mayPublish(to topic: String) -> Verdict {
        if let deny = denyPublish.first(where: { Topic.matches(filter: $0, topic: topic) }) {
            return .forbidden("publishing to '\(topic)' is denied by '\(deny)'")
        }
        guard publish.contains(where: { Topic.matches(filter: $0, topic: topic) }) else {
            return .forbidden("no grant allows publishing to '\(topic)'")
        }
        return .allowed
    }

    /// May the session subscribe to `filter` (a valid filter)? A grant must cover the whole filter, and no
    /// denied pattern may cover it. A filter that only overlaps a denied pattern is allowed, and the denied
    /// topics are held back at delivery (``mayReceive(_:)``): an explicit deny wins either way.
    public func maySubscribe(to filter: String) -> Verdict {
        if let deny = denySubscribe.first(where: { Topic.covers(pattern: $0, filter: filter) }) {
            return .forbidden("subscribing to '\(filter)' is denied by '\(deny)'")
        }
        guard subscribe.contains(where: { Topic.covers(pattern: $0, filter: filter) }) else {
            return .forbidden("no grant covers a subscription to '\(filter)'")
        }
        return .allowed
    }
}

/// Per-identity limits from policy. Nil means unlimited.
public struct Limits: Sendable, Hashable {
    public enum OnRateLimit: String, Sendable, Hashable {
        /// Answer `rate_limited` and drop the message; the session stays open.
        case drop
        /// Close the session with 1008.
        case close
    }

    /// Open sessions per identity; more are refused at the upgrade with 429.
    public var sessions: Int?
    public var messagesPerSecond: Double?
    public var bytesPerSecond: Double?
    public var subscriptions: Int?
    /// Largest message this identity may send; larger closes with 1009.
    public var maxMessageBytes: Int?
    public var onRateLimit: OnRateLimit = .drop
    /// Denied operations tolerated before the session is closed with 1008.
    public var maxViolations: Int = 10

    public init(
        sessions: Int? = nil, messagesPerSecond: Double? = nil, bytesPerSecond: Double? = nil, subscriptions: Int? = nil,
        maxMessageBytes: Int? = nil, onRateLimit: OnRateLimit = .drop, maxViolations: Int = 10
    ) {
        self.sessions = sessions
        self.messagesPerSecond = messagesPerSecond
        self.bytesPerSecond = bytesPerSecond
        self.subscriptions = subscriptions
        self.maxMessageBytes = maxMessageBytes
        self.onRateLimit = onRateLimit
        self.maxViolations = maxViolations
    }
}

extension Limits {
    /// Each limit at its strictest among `all`: the smallest number, `close` over `drop`.
    public static func tightest(_ all: [Limits]) -> Limits {
        func minimum<T: Comparable>(_ values: [T?]) -> T? { values.compactMap { $0 }.min() }
        var result = Limits()
        result.sessions = minimum(all.map(\.sessions))
        result.messagesPerSecond = minimum(all.map(\.messagesPerSecond))
        result.bytesPerSecond = minimum(all.map(\.bytesPerSecond))
        result.subscriptions = minimum(all.map(\.subscriptions))
        result.maxMessageBytes = minimum(all.map(\.maxMessageBytes))
        result.maxViolations = minimum(all.map(\.maxViolations)) ?? result.maxViolations
        result.onRateLimit = all.contains { $0.onRateLimit == .close } ? .close : .drop
        return result
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst` (one second's worth by default).
/// The clock is a parameter (seconds, monotonic), so limits are tested without waiting.
public struct TokenBucket: Sendable {
    public let rate: Double
    public let burst: Double
    private var tokens: Double
    private var last: Double

    public init(rate: Double, burst: Double? = nil, now: Double) {
        self.rate = rate
        self.burst = burst ?? max(rate, 1)
        self.tokens = self.burst
        self.last = now
    }

    /// Takes `cost` tokens if there are enough; false (taking nothing) otherwise. A cost above the burst passes
    /// only from a full bucket, which it leaves in debt, so the average rate still holds.
    public mutating func take(_ cost: Double = 1, now: Double) -> Bool {
        tokens = min(burst, tokens + max(0, now - last) * rate)
        last = now
        guard tokens >= cost || (cost > burst && tokens >= burst) else { return false }
        tokens -= cost
        return true
    }
}
