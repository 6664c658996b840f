/// Audits refusals of connections that never authenticated (at accept, in the TLS handshake) without
/// letting a flood fill the disk. Per client address, reason and presented certificate, the first refusal
/// of an interval is written as it happens and the rest are counted, then written as one record when the
/// interval ends. At most ``maximumKeys`` of them are told apart per interval; refusals beyond are counted
/// per reason under the address `*`. So an interval writes at most 2 × (``maximumKeys`` + reasons) records,
/// however many connections were refused. Pure logic; the gateway holds it under a lock and drains it on a
/// timer.
struct RefusalAggregator {
    struct Key: Hashable, Sendable {
        var address: String
        var reason: String
        /// The presented certificate's fingerprint, when there was one: two devices behind one NAT address
        /// are told apart.
        var fingerprint: String?
    }

    /// The refusals of one key beyond the first, in the interval that ended.
    struct Summary: Equatable, Sendable {
        var key: Key
        var event: String
        var count: Int
    }

    static let maximumKeys = 1000

    private var counts: [Key: (event: String, more: Int)] = [:]

    /// Whether the refusal should be written now (the first of its key this interval); if not, it is counted.
    mutating func note(address: String, reason: String, fingerprint: String?, event: String) -> Bool {
        var key = Key(address: address, reason: reason, fingerprint: fingerprint)
        if counts[key] == nil, counts.count >= Self.maximumKeys {
            key = Key(address: "*", reason: reason, fingerprint: nil)
        }
        if let entry = counts[key] {
            counts[key] = (entry.event, entry.more + 1)
            return false
        }
        counts[key] = (event, 0)
        return true
    }

    /// Ends the interval: the counted refusals of each key, and a fresh start.
    mutating func drain() -> [Summary] {
        let summaries = counts.compactMap { key, entry in
            entry.more > 0 ? Summary(key: key, event: entry.event, count: entry.more) : nil
        }
        counts.removeAll(keepingCapacity: true)
        return summaries.sorted { ($0.key.address, $0.key.reason) < ($1.key.address, $1.key.reason) }
    }
}
