import PortcullisProtocol

/// Checks the client makes before sending a topic or payload. The gateway checks the same and answers with an
/// error, but every such error counts as a violation, and enough of them close the session (1008): a client
/// that reconnects would be closed again and again for one bad publish kept in its code.
enum BrokerInputCheck {
    /// Why `topic` cannot be published to, or nil.
    static func problem(withTopic topic: String) -> String? {
        Topic.problem(withName: topic)
    }

    /// Why `filter` cannot be subscribed to, or nil. Where wildcards may stand is left to the gateway, which
    /// answers the subscription.
    static func problem(withFilter filter: String) -> String? {
        Topic.problem(withTopicOrFilter: filter)
    }

    /// Whether `bytes` are one JSON value, by the gateway's own scanner (which also bounds nesting to 64): as the
    /// only member of an object, which is how the publish frame carries it. One member exactly, so that `1,"x":2`
    /// is not taken for a value.
    static func isJSONValue(_ bytes: [UInt8]) -> Bool {
        let wrapped = Array(#"{"v":"#.utf8) + bytes + [UInt8(ascii: "}")]
        return wrapped.withUnsafeBytes { (try? JSONObjectScanner.members(of: $0))?.count == 1 }
    }
}
