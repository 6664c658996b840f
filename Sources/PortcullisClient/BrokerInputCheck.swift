import PortcullisProtocol

/// Checks the client makes before sending a topic or payload. The gateway checks the same and answers with an
/// error, but every such error counts as a violation, and enough of them close the session (1008): a client
/// that reconnects would be closed again and again for one bad publish kept in its code.
enum BrokerInputCheck {
    /// Longest topic or filter the gateway accepts, in UTF-8 bytes (`docs/protocol.md`).
    static let maximumTopicLength = 1024

    /// Why `topic` cannot be published to, or nil.
    static func problem(withTopic topic: String) -> String? {
        if let problem = commonProblem(topic) { return problem }
        if topic.utf8.contains(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }) {
            return "wildcards '+' and '#' are for subscriptions, not topics"
        }
        return nil
    }

    /// Why `filter` cannot be subscribed to, or nil. Where wildcards may stand is left to the gateway, which
    /// answers the subscription.
    static func problem(withFilter filter: String) -> String? {
        commonProblem(filter)
    }

    private static func commonProblem(_ text: String) -> String? {
        if text.isEmpty { return "a topic must not be empty" }
        if text.utf8.count > maximumTopicLength { return "a topic must not be longer than \(maximumTopicLength) bytes" }
        if text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return "a topic must not contain control characters"
        }
        return nil
    }

    /// Whether `bytes` are one JSON value, by the gateway's own scanner (which also bounds nesting to 64): as the
    /// only member of an object, which is how the publish frame carries it. One member exactly, so that `1,"x":2`
    /// is not taken for a value.
    static func isJSONValue(_ bytes: [UInt8]) -> Bool {
        let wrapped = Array(#"{"v":"#.utf8) + bytes + [UInt8(ascii: "}")]
        return wrapped.withUnsafeBytes { (try? JSONObjectScanner.members(of: $0))?.count == 1 }
    }
}
