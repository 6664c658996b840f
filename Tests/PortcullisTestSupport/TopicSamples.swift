/// Topics and filters for properties of topic matching, over a small alphabet so that they collide often: shared by
/// the tests of `Topic` (PortcullisProtocolTests) and of the broker's topic tries (PortcullisPolicyTests).
public enum TopicSamples {
    /// A topic of one to four levels over {a, b, c}.
    public static func randomTopic(_ rng: inout SplitMix64) -> String {
        (0..<Int.random(in: 1...4, using: &rng)).map { _ in ["a", "b", "c"].randomElement(using: &rng)! }.joined(separator: "/")
    }

    /// A valid filter of one to four levels over {a, b, +}, half of them ending in `#`.
    public static func randomFilter(_ rng: inout SplitMix64) -> String {
        var levels = (0..<Int.random(in: 1...4, using: &rng)).map { _ in ["a", "b", "+"].randomElement(using: &rng)! }
        if Bool.random(using: &rng) { levels.append("#") }
        return levels.joined(separator: "/")
    }

    /// Every topic of up to four levels over {a, b, c}: small enough to enumerate, rich enough to disagree.
    public static let universe: [String] = {
        var all: [String] = []
        var frontier = ["a", "b", "c"]
        for _ in 0..<4 {
            all += frontier
            frontier = frontier.flatMap { prefix in ["a", "b", "c"].map { "\(prefix)/\($0)" } }
        }
        return all
    }()
}
