import PortcullisPolicy
import PortcullisProtocol
import PortcullisTestSupport
import Testing

@Suite("Topic tries: the subscription index and resolved topics")
struct TopicTrieTests {
    /// Filters of the random kind plus the edge cases a random draw rarely gives.
    static func filters(_ rng: inout SplitMix64, count: Int) -> [String] {
        ["#", "+", "a/#", "+/+/+/+", "c"] + (0..<count).map { _ in TopicSamples.randomFilter(&rng) }
    }

    @Test("The index finds exactly the filters Topic.matches accepts, before and after removals", arguments: [1, 2, 3] as [UInt64])
    func indexAgreesWithMatching(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        let filters = Self.filters(&rng, count: 60)
        var index = SubscriptionIndex<Int, String>()
        for (key, filter) in filters.enumerated() { index.insert(filter, key: key, member: filter) }
        func check(_ live: [Int: String]) {
            for topic in TopicSamples.universe {
                var found: [Int] = []
                index.forEachMatch(of: topic) { members in found += members.keys }
                let expected = live.filter { Topic.matches(filter: $0.value, topic: topic) }.keys
                #expect(found.sorted() == expected.sorted(), "\(topic)")
            }
        }
        var live = Dictionary(uniqueKeysWithValues: filters.enumerated().map { ($0.offset, $0.element) })
        check(live)
        for key in live.keys.shuffled(using: &rng).prefix(live.count / 2) {
            index.remove(live[key]!, key: key)
            live[key] = nil
        }
        check(live)
        for (key, filter) in live { index.remove(filter, key: key) }
        #expect(index.isEmpty, "removing every membership prunes the whole trie")
    }

    @Test("A filter removes exactly the resolved topics it matches", arguments: [4, 5] as [UInt64])
    func mapRemovesMatches(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        for filter in Self.filters(&rng, count: 40) {
            var map = TopicMap<String>()
            for topic in TopicSamples.universe { map[topic] = topic }
            #expect(map.count == TopicSamples.universe.count)
            let removed = map.removeAll(matching: filter)
            let expected = TopicSamples.universe.filter { Topic.matches(filter: filter, topic: $0) }
            #expect(removed.sorted() == expected.sorted(), "\(filter)")
            #expect(map.count == TopicSamples.universe.count - expected.count)
            for topic in TopicSamples.universe {
                #expect((map[topic] != nil) != expected.contains(topic))
            }
        }
    }

    @Test("Assigning nil forgets a topic, and a fleet of topics is counted and cleared")
    func mapCounts() {
        var map = TopicMap<Int>()
        for device in 0..<10_000 { map["devices/\(device)/telemetry"] = device }
        map["devices/7/telemetry"] = 70
        #expect(map.count == 10_000)
        #expect(map["devices/7/telemetry"] == 70)
        map["devices/7/telemetry"] = nil
        map["devices/7/unknown"] = nil
        #expect(map.count == 9_999)
        #expect(map.removeAll(matching: "devices/42/commands/#").isEmpty)
        #expect(map.removeAll(matching: "devices/42/#") == [42])
        #expect(map.removeAll().count == 9_998)
        #expect(map.count == 0)
    }

    @Test("A subscriber through two filters and a '#' at the parent level are both reported")
    func overlappingFilters() {
        var index = SubscriptionIndex<String, Int>()
        index.insert("devices/#", key: "ops", member: 1)
        index.insert("devices/+/telemetry", key: "ops", member: 2)
        index.insert("devices/42/telemetry", key: "d42", member: 3)
        var members: [Int] = []
        index.forEachMatch(of: "devices/42/telemetry") { members += $0.values }
        #expect(members.sorted() == [1, 2, 3])
        members = []
        index.forEachMatch(of: "devices") { members += $0.values }
        #expect(members == [1])
    }

    @Test("A '/' followed by a combining mark still separates levels, as Topic.matches has it")
    func combiningMarkAfterSeparator() {
        let topic = "a/\u{301}b"
        var index = SubscriptionIndex<String, Int>()
        index.insert("a/+", key: "plus", member: 1)
        index.insert("a/\u{301}b", key: "exact", member: 2)
        index.insert("a", key: "parent", member: 3)
        var members: [Int] = []
        index.forEachMatch(of: topic) { members += $0.values }
        #expect(members.sorted() == [1, 2])
        #expect(Topic.matches(filter: "a/+", topic: topic))
        var map = TopicMap<Int>()
        map[topic] = 7
        #expect(map.removeAll(matching: "a/+") == [7])
    }
}
