import PortcullisProtocol
import PortcullisTestSupport
import Testing

@Suite("Topics and ACLs")
struct TopicTests {
    @Test(
        "Matching follows MQTT",
        arguments: [
            ("devices/+/telemetry", "devices/42/telemetry", true),
            ("devices/+/telemetry", "devices/42/status", false),
            ("devices/+/telemetry", "devices/42/telemetry/extra", false),
            ("devices/#", "devices", true),  // '#' includes the parent level
            ("devices/#", "devices/42/commands/reboot", true),
            ("devices/#", "device", false),
            ("#", "anything/at/all", true),
            ("+", "one", true),
            ("+", "one/two", false),
            ("+/+", "a/b", true),
            ("a/+/c", "a//c", true),  // an empty level is still a level
            ("a/b", "a/b", true),
            ("a/b", "a/b/", false),
        ])
    func matching(filter: String, topic: String, matches: Bool) {
        #expect(Topic.matches(filter: filter, topic: topic) == matches)
    }

    @Test("Invalid topics and filters are named", arguments: [
        ("", false), ("a/#/b", false), ("a/b#", false), ("a+/b", false), ("a\u{0}b", false),
        (String(repeating: "a", count: 1025), false), ("a/+/#", true), ("#", true),
    ])
    func filterValidity(filter: String, valid: Bool) {
        #expect((Topic.problem(withFilter: filter) == nil) == valid)
    }

    @Test("Wildcards are for subscriptions only")
    func topicNames() {
        #expect(Topic.problem(withName: "devices/42/telemetry") == nil)
        #expect(Topic.problem(withName: "devices/+/telemetry") != nil)
        #expect(Topic.problem(withName: "devices/#") != nil)
    }

    @Test("What topics and filters share is checked alone, wildcards left to the caller")
    func topicOrFilter() {
        #expect(Topic.problem(withTopicOrFilter: "a/b#") == nil)
        #expect(Topic.problem(withTopicOrFilter: "devices/+/telemetry") == nil)
        #expect(Topic.problem(withTopicOrFilter: "") == "a topic must not be empty")
        #expect(Topic.problem(withTopicOrFilter: "a\u{7F}") == "a topic must not contain control characters")
        #expect(Topic.problem(withTopicOrFilter: String(repeating: "x", count: Topic.maximumLength + 1)) != nil)
    }

    @Test(
        "A grant covers a subscription only when it matches every topic the subscription could",
        arguments: [
            ("devices/+/telemetry", "devices/42/telemetry", true),
            ("devices/+/telemetry", "devices/+/telemetry", true),
            ("devices/+/telemetry", "devices/#", false),
            ("devices/#", "devices/+/telemetry", true),
            ("devices/#", "devices", true),
            ("devices/42/#", "devices/+/telemetry", false),
            ("devices/42/telemetry", "devices/+/telemetry", false),
            ("a/b", "a/b/c", false),
        ])
    func covers(pattern: String, filter: String, covered: Bool) {
        #expect(Topic.covers(pattern: pattern, filter: filter) == covered)
    }

    @Test("Properties over random filters: covers implies every match, overlaps is symmetric and exact", arguments: [1, 2, 3] as [UInt64])
    func properties(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        for _ in 0..<300 {
            let pattern = TopicSamples.randomFilter(&rng)
            let filter = TopicSamples.randomFilter(&rng)
            let matchedByFilter = TopicSamples.universe.filter { Topic.matches(filter: filter, topic: $0) }
            let matchedByPattern = Set(TopicSamples.universe.filter { Topic.matches(filter: pattern, topic: $0) })
            if Topic.covers(pattern: pattern, filter: filter) {
                #expect(matchedByFilter.allSatisfy(matchedByPattern.contains), "\(pattern) covers \(filter)")
            }
            let share = matchedByFilter.contains(where: matchedByPattern.contains)
            #expect(Topic.overlaps(pattern, filter) == Topic.overlaps(filter, pattern))
            // Within this universe, a shared topic means overlap; overlap may also come from deeper topics.
            if share { #expect(Topic.overlaps(pattern, filter), "\(pattern) and \(filter) share a topic") }
            let topic = TopicSamples.randomTopic(&rng)
            #expect(Topic.matches(filter: topic, topic: topic))
        }
    }
}
