/// Keys whose state is kept for a while after its last use (a rate budget refilling), in the order they were
/// retained, to forget once their time has come. Drained a few at a time by whoever holds it, so that no call
/// does work that grows with the number of keys.
///
/// Retentions of different lengths are not sorted: a short one behind a long one waits for it. That only
/// delays forgetting; the owner decides, for each key drained, whether its retention is still the current one.
struct RetentionQueue<Key: Sendable>: Sendable {
    private var entries: [(key: Key, until: Double)] = []
    private var start = 0

    mutating func retain(_ key: Key, until: Double) {
        entries.append((key, until))
    }

    /// Hands `expire` at most `budget` keys whose retention ended by `now`, oldest first, with the time it ended.
    mutating func drain(now: Double, budget: Int = 8, _ expire: (Key, Double) -> Void) {
        var budget = budget
        while budget > 0, start < entries.count, entries[start].until <= now {
            let (key, until) = entries[start]
            start += 1
            budget -= 1
            expire(key, until)
        }
        if start > 64, start * 2 > entries.count {
            entries.removeFirst(start)
            start = 0
        }
    }
}
