import FuzzDriver
import FuzzSupport
import Glibc
import PortcullisPolicy
import PortcullisProtocol

/// The broker's tries against the plain matcher they replace: the input is a script of subscribes,
/// unsubscribes, topic resolutions and filter removals over a small alphabet of levels (so that topics
/// collide), and after every step the tries must say what `Topic.matches` says over a reference model.
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    var script = UnsafeRawBufferPointer(start: data, count: count)[...]
    let alphabet = ["a", "b", "", "+", "#", "c"]
    /// A topic or filter of up to four levels read from the script, or nil when it ends.
    func text(wildcards: Bool) -> String? {
        guard let header = script.popFirst() else { return nil }
        var levels: [String] = []
        for _ in 0...(Int(header) % 4) {
            guard let byte = script.popFirst() else { break }
            levels.append(alphabet[Int(byte) % (wildcards ? alphabet.count : 3)])
        }
        return levels.joined(separator: "/")
    }

    var index = SubscriptionIndex<UInt8, String>()
    var subscriptions: [String: Set<UInt8>] = [:]
    var resolved = TopicMap<String>()
    var resolvedTopics: Set<String> = []
    while let operation = script.popFirst() {
        let key = operation >> 3
        switch operation % 4 {
        case 0, 1:
            guard let filter = text(wildcards: true), Topic.problem(withFilter: filter) == nil else { continue }
            if operation % 4 == 0 {
                index.insert(filter, key: key, member: filter)
                subscriptions[filter, default: []].insert(key)
            } else {
                index.remove(filter, key: key)
                subscriptions[filter]?.remove(key)
            }
            let removed = resolved.removeAll(matching: filter)
            let expected = resolvedTopics.filter { Topic.matches(filter: filter, topic: $0) }
            require(Set(removed) == expected && removed.count == expected.count, "\(filter) removed \(removed), not \(expected)")
            resolvedTopics.subtract(expected)
        case 2:
            guard let topic = text(wildcards: false) else { continue }
            var found: [String: Set<UInt8>] = [:]
            index.forEachMatch(of: topic) { members in
                for (key, filter) in members { found[filter, default: []].insert(key) }
            }
            let expected = subscriptions.filter { !$0.value.isEmpty && Topic.matches(filter: $0.key, topic: topic) }
            require(found == expected, "\(topic) matched \(found), not \(expected)")
            resolved[topic] = topic
            resolvedTopics.insert(topic)
        default:
            require(resolved.count == resolvedTopics.count, "count \(resolved.count), not \(resolvedTopics.count)")
            for topic in resolvedTopics { require(resolved[topic] == topic, "\(topic) lost") }
        }
    }
    if subscriptions.values.allSatisfy(\.isEmpty) { require(index.isEmpty, "an emptied index keeps branches") }
    return 0
}

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
