/// MQTT-style topics: `/`-separated levels; in filters `+` stands for one level and `#` (last) for the rest,
/// including none (`devices/#` matches `devices`). Pure functions, as nats-server's `sublist.go` keeps its
/// subject matching; written here because no mirrored library implements MQTT topic semantics.
public enum Topic {
    /// Longest topic or filter accepted, in UTF-8 bytes.
    public static let maximumLength = 1024

    /// Why `topic` cannot be published to, or nil when it can.
    public static func problem(withName topic: String) -> String? {
        if let problem = commonProblem(topic) { return problem }
        if topic.contains(where: { $0 == "+" || $0 == "#" }) { return "wildcards '+' and '#' are for subscriptions, not topics" }
        return nil
    }

    /// Why `filter` cannot be subscribed to, or nil when it can.
    public static func problem(withFilter filter: String) -> String? {
        if let problem = commonProblem(filter) { return problem }
        let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
        for (index, level) in levels.enumerated() {
            if level.contains("#") && (level != "#" || index != levels.count - 1) {
                return "'#' must be a whole level and the last one"
            }
            if level.contains("+") && level != "+" { return "'+' must be a whole level" }
        }
        return nil
    }

    private static func commonProblem(_ text: String) -> String? {
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

    /// Whether every topic `filter` matches is also matched by `pattern`: a subscription is allowed when a
    /// granted pattern covers it entirely.
    public static func covers(pattern: String, filter: String) -> Bool {
        let patternLevels = pattern.split(separator: "/", omittingEmptySubsequences: false)
        let filterLevels = filter.split(separator: "/", omittingEmptySubsequences: false)
        for (index, level) in patternLevels.enumerated() {
            if level == "#" { return true }
            guard index < filterLevels.count else { return false }
            let wanted = filterLevels[index]
            if wanted == "#" { return false }
            if level == "+" { continue }
            if wanted == "+" || wanted != level { return false }
        }
        return filterLevels.count == patternLevels.count
    }

    /// Whether some topic is matched by both filters (a deny pattern and a subscription collide).
    public static func overlaps(_ first: String, _ second: String) -> Bool {
        let a = first.split(separator: "/", omittingEmptySubsequences: false)
        let b = second.split(separator: "/", omittingEmptySubsequences: false)
        var index = 0
        while index < a.count && index < b.count {
            if a[index] == "#" || b[index] == "#" { return true }
            if a[index] != "+" && b[index] != "+" && a[index] != b[index] { return false }
            index += 1
        }
        if a.count == b.count { return true }
        // One filter is longer: the shorter one matches only if the longer continues with a lone '#'.
        let longer = a.count > b.count ? a : b
        return longer.count == index + 1 && longer[index] == "#"
    }
}
