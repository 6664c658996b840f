import PortcullisNATS
import PortcullisProtocol
import PortcullisTestSupport
import Testing

@Suite("Topics as NATS subjects")
struct SubjectMappingTests {
    static let mapping = SubjectMapping(prefix: "portcullis")!

    @Test(
        "A topic's levels become escaped tokens under the prefix",
        arguments: [
            ("devices/a/telemetry", "portcullis.devices.a.telemetry"),
            ("a//b", "portcullis.a.%.b"),
            ("/a", "portcullis.%.a"),
            ("a/", "portcullis.a.%"),
            ("a.b", "portcullis.a%2Eb"),
            ("*/>x/%", "portcullis.%2A.%3Ex.%25"),
            ("two words", "portcullis.two%20words"),
            ("café/日", "portcullis.caf%C3%A9.%E6%97%A5"),
            ("$crl", "portcullis.$crl"),
            ("%41", "portcullis.%2541"),
        ])
    func subjectOfTopic(topic: String, subject: String) {
        #expect(Self.mapping.subject(forTopic: topic) == subject)
        #expect(Self.mapping.topic(forSubject: subject) == topic)
    }

    @Test(
        "A filter's wildcards become NATS's, and a trailing '#' brings its parent subject",
        arguments: [
            ("devices/#", ["portcullis.devices.>", "portcullis.devices"]),
            ("#", ["portcullis.>"]),
            ("+", ["portcullis.*"]),
            ("devices/+/telemetry", ["portcullis.devices.*.telemetry"]),
            ("a/+/#", ["portcullis.a.*.>", "portcullis.a.*"]),
            ("/#", ["portcullis.%.>", "portcullis.%"]),
            ("a.b/c", ["portcullis.a%2Eb.c"]),
        ])
    func subjectsOfFilter(filter: String, subjects: [String]) {
        #expect(Self.mapping.subjects(forFilter: filter) == subjects)
    }

    @Test("A prefix of several tokens is used as it is")
    func longerPrefix() throws {
        let mapping = try #require(SubjectMapping(prefix: "acme.portcullis"))
        #expect(mapping.subject(forTopic: "a/b") == "acme.portcullis.a.b")
        #expect(mapping.topic(forSubject: "acme.portcullis.a.b") == "a/b")
        #expect(mapping.topic(forSubject: "portcullis.a.b") == nil)
        #expect(mapping.topic(forSubject: "acme.portcullisa.b") == nil)
    }

    @Test(
        "Subjects no topic maps to are refused",
        arguments: [
            "portcullis.%61", "portcullis.%2e", "portcullis.%2", "portcullis.%", "portcullis.a%", "portcullis.%G1",
            "portcullis.%%", "portcullis.%20%", "other.devices", "portcullis", "portcullis.", "portcullis..a",
            "portcullis.a.", "portcullis.a.*", "portcullis.a.>", "portcullis.a*", "portcullis.a b", "portcullis.é",
            "portcullis.a\tb", "portcullis.%2B", "portcullis.%23", "portcullis.%00", "portcullis.%FF", "portcullis.%C3",
            "portcullisX.a", "Portcullis.a", "portcullis.%24crl", "portcullis.%2F", "portcullis.a%2Fb",
        ])
    func refusedSubjects(subject: String) {
        #expect(Self.mapping.topic(forSubject: subject) == nil)
    }

    @Test("The revocation announcements' subject is no topic's")
    func revocationSubject() {
        #expect(Self.mapping.certificateRevocationListSubject == "portcullis.%24crl")
        #expect(Self.mapping.topic(forSubject: Self.mapping.certificateRevocationListSubject) == nil)
        #expect(Self.mapping.subject(forTopic: "$crl") != Self.mapping.certificateRevocationListSubject)
        #expect(Self.mapping.subject(forTopic: "%24crl") != Self.mapping.certificateRevocationListSubject)
    }

    @Test(
        "Prefixes are NATS literal tokens",
        arguments: [
            ("portcullis", true), ("acme.portcullis", true), ("$GW-1_x", true), ("", false), ("a..b", false),
            (".a", false), ("a.", false), ("a b", false), ("a.*", false), ("a.>", false), ("a>b", false),
            ("a\tb", false), ("é", false), (String(repeating: "a", count: 200), true),
            (String(repeating: "a", count: 201), false),
        ])
    func prefixes(prefix: String, valid: Bool) {
        #expect((SubjectMapping.problem(withPrefix: prefix) == nil) == valid)
        #expect((SubjectMapping(prefix: prefix) != nil) == valid)
    }

    // MARK: Properties

    typealias SplitMix64 = PortcullisTestSupport.SplitMix64

    /// Levels that need every rule of the escaping, and plain ones so that random filters match random topics.
    static let alphabet = ["a", "b", "", ".", "*", ">", "%", " ", "\t", "é", "日", "%41", "a.b", "x>", "$"]

    static func randomTopic(_ rng: inout SplitMix64) -> String {
        (0...Int.random(in: 0..<4, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }.joined(separator: "/")
    }

    static func randomFilter(_ rng: inout SplitMix64) -> String {
        var levels = (0...Int.random(in: 0..<4, using: &rng)).map { _ in
            Int.random(in: 0..<4, using: &rng) == 0 ? "+" : alphabet.randomElement(using: &rng)!
        }
        if Bool.random(using: &rng) { levels[levels.count - 1] = "#" }
        return levels.joined(separator: "/")
    }

    /// NATS's subject matching, as nats-server's sublist does it: `*` is one token, a last `>` one or more.
    static func natsMatches(_ pattern: String, _ subject: String) -> Bool {
        let patternTokens = pattern.split(separator: ".", omittingEmptySubsequences: false)
        let subjectTokens = subject.split(separator: ".", omittingEmptySubsequences: false)
        for (index, token) in patternTokens.enumerated() {
            if token == ">" && index == patternTokens.count - 1 { return subjectTokens.count > index }
            guard index < subjectTokens.count, token == "*" || token == subjectTokens[index] else { return false }
        }
        return patternTokens.count == subjectTokens.count
    }

    @Test("Every valid topic comes back from its subject", arguments: [11, 12, 13] as [UInt64])
    func roundTrip(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        var checked = 0
        for _ in 0..<1_500 {
            let topic = Self.randomTopic(&rng)
            guard Topic.problem(withName: topic) == nil else {
                #expect(Self.mapping.topic(forSubject: Self.mapping.subject(forTopic: topic)) == nil, "\(topic)")
                continue
            }
            checked += 1
            #expect(Self.mapping.topic(forSubject: Self.mapping.subject(forTopic: topic)) == topic)
        }
        #expect(checked > 1_000)
    }

    @Test("NATS matches the mapped subjects exactly when the filter matches the topic", arguments: [21, 22, 23] as [UInt64])
    func matchingAgrees(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        var matched = 0
        var compared = 0
        while compared < 1_500 {
            let filter = Self.randomFilter(&rng)
            let topic = Self.randomTopic(&rng)
            guard Topic.problem(withFilter: filter) == nil, Topic.problem(withName: topic) == nil else { continue }
            compared += 1
            let subject = Self.mapping.subject(forTopic: topic)
            let natsMatched = Self.mapping.subjects(forFilter: filter).contains { Self.natsMatches($0, subject) }
            #expect(natsMatched == Topic.matches(filter: filter, topic: topic), "\(filter) \(topic)")
            if natsMatched { matched += 1 }
        }
        // Both answers are exercised, not only "no match".
        #expect(matched > 100)
    }

    @Test("Tokens are never empty or blank, and only wildcards make '*' and '>'", arguments: [31, 32] as [UInt64])
    func tokenShapes(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        for _ in 0..<1_500 {
            let topic = Self.randomTopic(&rng)
            for token in Self.mapping.subject(forTopic: topic).utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
                #expect(!token.isEmpty, "\(topic)")
                #expect(!token.contains { $0 <= 0x20 || $0 >= 0x7F || $0 == UInt8(ascii: "*") || $0 == UInt8(ascii: ">") }, "\(topic)")
            }
            let filter = Self.randomFilter(&rng)
            guard Topic.problem(withFilter: filter) == nil else { continue }
            let levels = filter.split(separator: "/", omittingEmptySubsequences: false)
            for subject in Self.mapping.subjects(forFilter: filter) {
                let tokens = subject.split(separator: ".", omittingEmptySubsequences: false).dropFirst()
                for (level, token) in zip(levels, tokens) {
                    #expect(!token.isEmpty)
                    #expect(!token.utf8.contains { $0 <= 0x20 || $0 >= 0x7F }, "\(filter)")
                    let isWildcard = level == "+" || level == "#"
                    #expect((token == "*" || token == ">") == isWildcard, "\(filter)")
                    #expect(isWildcard || !token.contains("*") && !token.contains(">"), "\(filter)")
                }
            }
        }
    }
}
