/// MQTT-style topics: `/`-separated levels; in filters `+` stands for one level and `#` (last) for the rest,
/// including none (`devices/#` matches `devices`). Pure functions, as nats-server's `sublist.go` keeps its
/// subject matching; written here because no mirrored library implements MQTT topic semantics.
///
/// Part of the protocol (`docs/protocol.md`): the gateway's broker, the policy's grants, the NATS subject mapping
/// and the client's checks before sending all read topics by these rules.
public enum Topic {
    /// Longest topic or filter accepted, in UTF-8 bytes.
    public static let maximumLength = 1024

    /// Why `topic` cannot be published to, or nil when it can.
    public static func problem(withName topic: String) -> String? {
        if let problem = problem(withTopicOrFilter: topic) { return problem }
        if topic.utf8.contains(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") }) { return "wildcards '+' and '#' are for subscriptions, not topics" }
        return nil
    }

    /// Why `filter` cannot be subscribed to, or nil when it can.
    public static func problem(withFilter filter: String) -> String? {
        if let problem = problem(withTopicOrFilter: filter) { return problem }
        let filterLevels = levels(filter)
        for (index, level) in filterLevels.enumerated() {
            if level.contains(UInt8(ascii: "#")) && (!isLevel(level, "#") || index != filterLevels.count - 1) {
                return "'#' must be a whole level and the last one"
            }
            if level.contains(UInt8(ascii: "+")) && !isLevel(level, "+") { return "'+' must be a whole level" }
        }
        return nil
    }

    /// Why `text` can be neither a topic nor a filter (empty, over ``maximumLength`` bytes, a control character),
    /// or nil; where wildcards stand is not looked at.
    public static func problem(withTopicOrFilter text: String) -> String? {
        if text.isEmpty { return "a topic must not be empty" }
        if text.utf8.count > maximumLength { return "a topic must not be longer than \(maximumLength) bytes" }
        if text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return "a topic must not contain control characters"
        }
        return nil
    }

    /// Whether `filter` (a valid filter) matches `topic` (a valid topic name).
    public static func matches(filter: String, topic: String) -> Bool {
        var filterLevels = filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)[...]
        var topicLevels = topic.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)[...]
        while let level = filterLevels.first {
            if level.elementsEqual("#".utf8) { return true }
            guard let name = topicLevels.first else { return false }
            if !level.elementsEqual("+".utf8) && !level.elementsEqual(name) { return false }
            filterLevels = filterLevels.dropFirst()
            topicLevels = topicLevels.dropFirst()
        }
        return topicLevels.isEmpty
    }

    /// The levels of a topic or filter, as UTF-8 bytes: topics are compared byte for byte, never as
    /// canonically equivalent characters (and a `/` followed by a combining mark still separates levels).
    private static func levels(_ text: String) -> [Substring.UTF8View] {
        text[...].utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
    }

    private static func isLevel(_ level: Substring.UTF8View, _ wildcard: Unicode.Scalar) -> Bool {
        level.count == 1 && level.first == UInt8(ascii: wildcard)
    }

    /// Whether every topic `filter` matches is also matched by `pattern`: a subscription is allowed when a
    /// granted pattern covers it entirely.
    public static func covers(pattern: String, filter: String) -> Bool {
        let patternLevels = levels(pattern)
        let filterLevels = levels(filter)
        for (index, level) in patternLevels.enumerated() {
            if isLevel(level, "#") { return true }
            guard index < filterLevels.count else { return false }
            let wanted = filterLevels[index]
            if isLevel(wanted, "#") { return false }
            if isLevel(level, "+") { continue }
            if isLevel(wanted, "+") || !wanted.elementsEqual(level) { return false }
        }
        return filterLevels.count == patternLevels.count
    }

    /// Whether some topic is matched by both filters (a deny pattern and a subscription collide).
    public static func overlaps(_ first: String, _ second: String) -> Bool {
        let a = levels(first)
        let b = levels(second)
        var index = 0
        while index < a.count && index < b.count {
            if isLevel(a[index], "#") || isLevel(b[index], "#") { return true }
            if !isLevel(a[index], "+") && !isLevel(b[index], "+") && !a[index].elementsEqual(b[index]) { return false }
            index += 1
        }
        if a.count == b.count { return true }
        // One filter is longer: the shorter one matches only if the longer continues with a lone '#'.
        let longer = a.count > b.count ? a : b
        return longer.count == index + 1 && isLevel(longer[index], "#")
    }
}
