/// Subscriptions by filter, kept as a trie of topic levels with `+` and `#` branches, as nats-server's
/// `sublist.go` keeps subjects: matching a topic costs time proportional to its levels (times the wildcard
/// branches on its path), never to the number of subscriptions. Written here because no mirrored library
/// indexes MQTT-style filters.
///
/// Each filter holds members by key; a key subscribed through several matching filters is reported once per
/// filter, and callers that deliver once per key collect them.
public struct SubscriptionIndex<Key: Hashable, Member> {
    @usableFromInline var root = TopicTrieNode<[Key: Member]>()

    @inlinable public init() {}

    /// Whether no filter has a member.
    @inlinable public var isEmpty: Bool { root.isEmpty }

    /// Adds (or replaces) `key`'s membership of `filter`, a valid filter (``Topic/problem(withFilter:)``).
    @inlinable public mutating func insert(_ filter: String, key: Key, member: Member) {
        root.update(levels(filter)[...]) { members in
            if members == nil { members = [:] }
            members![key] = member
        }
    }

    /// Removes `key`'s membership of `filter`; branches left empty are pruned, so the trie holds only what
    /// is subscribed.
    @inlinable public mutating func remove(_ filter: String, key: Key) {
        root.update(levels(filter)[...]) { members in
            members?[key] = nil
            if members?.isEmpty == true { members = nil }
        }
    }

    /// Calls `body` with the members of every filter that matches `topic`, a valid topic name.
    @inlinable public func forEachMatch(of topic: String, _ body: ([Key: Member]) -> Void) {
        root.forEachFilterMatching(levels(topic)[...], body)
    }
}

/// Values by topic name, kept as a trie of levels so that everything a filter matches is found by walking the
/// filter's own branches: a subscription change finds the cached topics it affects without scanning every
/// cached topic.
public struct TopicMap<Value> {
    @usableFromInline var root = TopicTrieNode<Value>()
    @usableFromInline var storedCount = 0

    /// How many topics have a value.
    @inlinable public var count: Int { storedCount }

    @inlinable public init() {}

    @inlinable public subscript(topic: String) -> Value? {
        get { root.value(at: levels(topic)[...]) }
        set {
            var added = 0
            root.update(levels(topic)[...]) { value in
                added = (newValue == nil ? 0 : 1) - (value == nil ? 0 : 1)
                value = newValue
            }
            storedCount += added
        }
    }

    /// Removes and returns the values of every topic `filter` matches.
    @inlinable public mutating func removeAll(matching filter: String) -> [Value] {
        var removed: [Value] = []
        root.removeTopicsMatching(levels(filter)[...], into: &removed)
        storedCount -= removed.count
        return removed
    }

    /// Removes and returns every value.
    @inlinable public mutating func removeAll() -> [Value] {
        removeAll(matching: "#")
    }
}

/// Levels as strings: short levels (a device id, `commands`) are stored inline in a `String`, so splitting
/// allocates only the array.
@usableFromInline func levels(_ text: String) -> [String] {
    var levels: [String] = []
    // Sized once: growing 1, 2, 4, 8 was three reallocations for a topic of five levels.
    levels.reserveCapacity(text.utf8.reduce(1) { $0 + ($1 == UInt8(ascii: "/") ? 1 : 0) })
    var rest = Substring(text)
    while let slash = rest.utf8.firstIndex(of: UInt8(ascii: "/")) {
        levels.append(String(rest[..<slash]))
        rest = rest[rest.utf8.index(after: slash)...]
    }
    levels.append(String(rest))
    return levels
}

/// One level of a topic trie. Keys compare as `String` does (canonical equivalence); topics and filters reach
/// the trie only after validation, and a topic published with one spelling is delivered to subscribers of an
/// equivalent one, as the exact-match dictionary before it did.
@usableFromInline struct TopicTrieNode<Value> {
    @usableFromInline var value: Value?
    @usableFromInline var children: [String: TopicTrieNode] = [:]

    @inlinable init() {}

    @inlinable var isEmpty: Bool { value == nil && children.isEmpty }

    @inlinable func value(at levels: ArraySlice<String>) -> Value? {
        guard let level = levels.first else { return value }
        return children[level]?.value(at: levels.dropFirst())
    }

    /// Changes the value at `levels` in place (`change` is handed nil where there is none), creating the
    /// path as needed and pruning nodes left without value or children.
    @inlinable mutating func update(_ levels: ArraySlice<String>, _ change: (inout Value?) -> Void) {
        guard let level = levels.first else {
            change(&value)
            return
        }
        var child = children.removeValue(forKey: level) ?? TopicTrieNode()
        child.update(levels.dropFirst(), change)
        if !child.isEmpty { children[level] = child }
    }

    /// For a trie of filters: every value whose filter matches the topic `levels`.
    @inlinable func forEachFilterMatching(_ levels: ArraySlice<String>, _ body: (Value) -> Void) {
        // `#` matches the rest of the topic, including no level at all (`devices/#` matches `devices`).
        if let rest = children["#"]?.value { body(rest) }
        guard let level = levels.first else {
            if let value { body(value) }
            return
        }
        children[level]?.forEachFilterMatching(levels.dropFirst(), body)
        children["+"]?.forEachFilterMatching(levels.dropFirst(), body)
    }

    /// For a trie of topics: removes every value whose topic the filter `levels` matches.
    @inlinable mutating func removeTopicsMatching(_ levels: ArraySlice<String>, into removed: inout [Value]) {
        guard let level = levels.first else {
            if let value { removed.append(value) }
            value = nil
            return
        }
        switch level {
        case "#":
            collect(into: &removed)
            self = TopicTrieNode()
        case "+":
            for key in Array(children.keys) { removeFromChild(key, levels.dropFirst(), into: &removed) }
        default:
            removeFromChild(level, levels.dropFirst(), into: &removed)
        }
    }

    @inlinable mutating func removeFromChild(_ key: String, _ levels: ArraySlice<String>, into removed: inout [Value]) {
        guard var child = children.removeValue(forKey: key) else { return }
        child.removeTopicsMatching(levels, into: &removed)
        if !child.isEmpty { children[key] = child }
    }

    @inlinable func collect(into values: inout [Value]) {
        if let value { values.append(value) }
        for child in children.values { child.collect(into: &values) }
    }
}

extension SubscriptionIndex: Sendable where Key: Sendable, Member: Sendable {}
extension TopicMap: Sendable where Value: Sendable {}
extension TopicTrieNode: Sendable where Value: Sendable {}
