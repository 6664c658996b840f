import NIOConcurrencyHelpers
import NIOCore
import PortcullisAdmission
import PortcullisPolicy
import Synchronization

/// A frame ready to send to any number of subscribers: encoded once per publish, its buffer shared.
struct OutboundFrame: Sendable {
    var binary: Bool
    var buffer: ByteBuffer
    /// The topic of a delivered message (nil for acks, errors and echoes), for the receiver's deny check.
    var topic: String? = nil
}

/// A subscribing session as the broker sees it: where to deliver, from any thread.
///
/// Frames from another event loop go through a mailbox that is drained by one task: a publisher on another
/// loop costs the subscriber's loop one task per batch rather than one per message.
final class Subscriber: Sendable {
    let id: UInt64
    let eventLoop: any EventLoop
    private let deliverOnLoop: NIOLoopBound<(OutboundFrame) -> Void>
    private struct Mailbox {
        var frames: [OutboundFrame] = []
        var drainScheduled = false
    }
    private let mailbox = NIOLockedValueBox(Mailbox())
    /// Whether the mailbox may hold frames: a delivery on the subscriber's own loop looks here before taking
    /// the mailbox's lock, which it otherwise took once per delivery for a mailbox that is nearly always empty
    /// (1→10 fan-out: half the deliveries). A frame appended just after the look is delivered by its drain.
    private let hasMail = Atomic<Bool>(false)

    init(id: UInt64, eventLoop: any EventLoop, deliver: @escaping (OutboundFrame) -> Void) {
        self.id = id
        self.eventLoop = eventLoop
        self.deliverOnLoop = NIOLoopBound(deliver, eventLoop: eventLoop)
    }

    /// Hands `frame` to the session on its own event loop; frames from one publisher keep their order.
    ///
    /// Returns true when the frame waits in the mailbox of a subscriber on another event loop and this call
    /// owes it a ``scheduleDrain()``: a publisher defers those wake-ups to the end of its read, so that a read
    /// holding many publishes costs each subscriber's loop one wake-up instead of one per message.
    func deliver(_ frame: OutboundFrame) -> Bool {
        if eventLoop.inEventLoop {
            // Frames that arrived through the mailbox earlier go first.
            if hasMail.load(ordering: .relaxed) { drain() }
            deliverOnLoop.value(frame)
            return false
        }
        return mailbox.withLockedValue { mailbox -> Bool in
            mailbox.frames.append(frame)
            hasMail.store(true, ordering: .relaxed)
            defer { mailbox.drainScheduled = true }
            return !mailbox.drainScheduled
        }
    }

    /// Delivers the mailbox's frames on the subscriber's event loop.
    func scheduleDrain() {
        eventLoop.execute { self.drain() }
    }

    private func drain() {
        let frames = mailbox.withLockedValue { mailbox -> [OutboundFrame] in
            mailbox.drainScheduled = false
            hasMail.store(false, ordering: .relaxed)
            let frames = mailbox.frames
            mailbox.frames = []
            return frames
        }
        for frame in frames { deliverOnLoop.value(frame) }
    }
}

/// Who receives one topic, as resolved from the subscriptions at one moment. A publisher keeps the last one it
/// used and checks it is still current with one atomic load: a subscription change retires only the resolved
/// topics its filter matches, so a device subscribing or a reconnect storm leaves every other publisher's
/// topic alone.
final class Recipients: Sendable {
    let subscribers: [Subscriber]
    private let current = Atomic<Bool>(true)

    init(_ subscribers: [Subscriber]) {
        self.subscribers = subscribers
    }

    var isCurrent: Bool { current.load(ordering: .acquiring) }

    fileprivate func retire() {
        current.store(false, ordering: .releasing)
    }
}

/// The built-in publish/subscribe broker, shared by every session of every event loop.
///
/// Filters are kept in a trie of levels, so resolving a topic costs time proportional to its levels, not to
/// the number of subscriptions; resolved topics are remembered until a subscription change that matches them.
/// A session receives a message once even when several of its filters match.
final class Broker: Sendable {
    private struct State {
        var subscriptions = SubscriptionIndex<UInt64, Subscriber>()
        /// Who receives each topic published since a matching subscription last changed: publishers mostly
        /// repeat topics, so a publish is one lookup instead of a walk of the trie.
        var resolved = TopicMap<Recipients>()
        /// Sessions subscribed to each filter, for the shared broker: it subscribes on NATS per filter.
        var sessionsPerFilter: [String: Int] = [:]
        var cluster: ClusterLink?
    }

    /// Topics remembered in ``State/resolved`` at most; beyond that the memory starts over.
    private static let resolvedLimit = 65_536

    private let state = NIOLockedValueBox(State())

    /// Joins the broker to the other gateways' (``ClusterLink``): it is told of each filter's first session and
    /// of its last, under this broker's lock, so that NATS learns of them in the order they happened.
    func join(_ cluster: ClusterLink?) {
        state.withLockedValue { $0.cluster = cluster }
    }

    /// Subscribes `subscriber` to `filter`; a session subscribes to a filter once.
    func subscribe(_ filter: String, _ subscriber: Subscriber) {
        state.withLockedValue { state in
            state.subscriptions.insert(filter, key: subscriber.id, member: subscriber)
            for stale in state.resolved.removeAll(matching: filter) { stale.retire() }
            if let cluster = state.cluster {
                state.sessionsPerFilter[filter, default: 0] += 1
                if state.sessionsPerFilter[filter] == 1 { cluster.filterAdded(filter) }
            }
        }
    }

    func unsubscribe(_ filter: String, _ subscriber: Subscriber) {
        unsubscribe([filter], subscriber)
    }

    /// Ends `subscriber`'s subscriptions to `filters` under one hold of the lock: a session that closes ends
    /// all of its subscriptions at once, and when thousands close together (a reconnect storm) both event loops
    /// would otherwise take turns on the lock for every filter.
    func unsubscribe(_ filters: some Collection<String>, _ subscriber: Subscriber) {
        guard !filters.isEmpty else { return }
        state.withLockedValue { state in
            for filter in filters {
                state.subscriptions.remove(filter, key: subscriber.id)
                for stale in state.resolved.removeAll(matching: filter) { stale.retire() }
                if let cluster = state.cluster, let count = state.sessionsPerFilter[filter] {
                    state.sessionsPerFilter[filter] = count > 1 ? count - 1 : nil
                    if count == 1 { cluster.filterRemoved(filter) }
                }
            }
        }
    }

    /// A publishing session's side of the broker: who received its last topic (while that stays current, a
    /// publisher repeating its topic takes neither the broker's lock nor a lookup), and the subscribers on
    /// other event loops that have frames waiting and still need a wake-up.
    struct Publisher {
        fileprivate var topic: String?
        /// Who received the last topic; current while no subscription change has matched that topic.
        fileprivate(set) var recipients: Recipients?
        fileprivate var unwoken: [Subscriber] = []

        /// Wakes the subscribers this publisher's frames wait for; called at the end of each of its reads.
        mutating func wakeSubscribers() {
            guard !unwoken.isEmpty else { return }
            for subscriber in unwoken { subscriber.scheduleDrain() }
            unwoken.removeAll(keepingCapacity: true)
        }
    }

    /// Delivers `frame` to every session subscribed to a filter matching `topic`; returns how many. Sessions on
    /// other event loops get it once `publisher.wakeSubscribers()` is called.
    @discardableResult
    func publish(_ frame: OutboundFrame, to topic: String, from publisher: inout Publisher) -> Int {
        let recipients: Recipients
        if let known = publisher.recipients, known.isCurrent, publisher.topic == topic {
            recipients = known
        } else {
            recipients = self.recipients(of: topic)
            publisher.topic = topic
            publisher.recipients = recipients
        }
        for subscriber in recipients.subscribers where subscriber.deliver(frame) {
            publisher.unwoken.append(subscriber)
        }
        return recipients.subscribers.count
    }

    private func recipients(of topic: String) -> Recipients {
        state.withLockedValue { state -> Recipients in
            if let known = state.resolved[topic] { return known }
            var found: [UInt64: Subscriber] = [:]
            state.subscriptions.forEachMatch(of: topic) { members in
                found.merge(members) { first, _ in first }
            }
            let recipients = Recipients(Array(found.values))
            if state.resolved.count >= Self.resolvedLimit {
                for stale in state.resolved.removeAll() { stale.retire() }
            }
            state.resolved[topic] = recipients
            return recipients
        }
    }
}

/// What each identity uses across all its sessions, against the limits its policy sets.
///
/// An identity's rate budget outlives its last session until it has refilled: were it dropped with the
/// session, reconnecting would hand out a fresh burst each time.
final class IdentityUsage: SessionSlots {
    private struct Usage {
        var sessions = 0
        var subscriptions = 0
        var messages: TokenBucket?
        var bytes: TokenBucket?
        /// While the identity has no session: when its buckets will be full again and the entry can go.
        var retainedUntil: Double?
    }

    private struct State {
        var usage: [String: Usage] = [:]
        /// Identities without sessions whose entries are kept; pruned a few at a time as sessions come and go.
        var retained = RetentionQueue<String>()
    }

    private let state = NIOLockedValueBox(State())
    private let clock: @Sendable () -> Double

    /// - Parameter clock: monotonic seconds; a parameter so that tests control time.
    init(clock: @escaping @Sendable () -> Double = { Double(NIODeadline.now().uptimeNanoseconds) / 1e9 }) {
        self.clock = clock
    }

    /// Monotonic seconds, the clock rate budgets are kept in.
    var now: Double { clock() }

    /// Counts a new session unless the identity already has `limit` open.
    func reserveSession(_ identity: String, limit: Int?) -> Bool {
        let now = clock()
        return state.withLockedValue { state in
            Self.prune(&state, now: now)
            if let limit, state.usage[identity, default: Usage()].sessions >= limit { return false }
            state.usage[identity, default: Usage()].sessions += 1
            state.usage[identity]?.retainedUntil = nil
            return true
        }
    }

    /// Releases a session slot; its subscriptions were released one by one as the session closed. With the
    /// last session gone, the entry stays while its rate budget refills.
    func releaseSession(_ identity: String) {
        let now = clock()
        state.withLockedValue { state in
            Self.prune(&state, now: now)
            guard var entry = state.usage[identity] else { return }
            entry.sessions -= 1
            guard entry.sessions == 0 else {
                state.usage[identity] = entry
                return
            }
            let refill = [entry.messages, entry.bytes].compactMap { $0.map { $0.burst / $0.rate } }.max()
            guard let refill else {
                state.usage[identity] = nil
                return
            }
            entry.retainedUntil = now + refill
            state.usage[identity] = entry
            state.retained.retain(identity, until: now + refill)
        }
    }

    /// Whether the identity has an entry (open sessions, or a budget still refilling); for tests.
    func isTracked(_ identity: String) -> Bool {
        let now = clock()
        return state.withLockedValue { state in
            Self.prune(&state, now: now)
            return state.usage[identity] != nil
        }
    }

    /// Drops at most a few expired retentions per call, so no call does work that grows with the fleet.
    private static func prune(_ state: inout State, now: Double) {
        state.retained.drain(now: now) { identity, until in
            // A later session (and release) may have renewed the entry; only a retention still current removes it.
            if let entry = state.usage[identity], entry.sessions == 0, let retained = entry.retainedUntil, retained <= until {
                state.usage[identity] = nil
            }
        }
    }

    func reserveSubscription(_ identity: String, limit: Int?) -> Bool {
        state.withLockedValue { state in
            if let limit, state.usage[identity, default: Usage()].subscriptions >= limit { return false }
            state.usage[identity, default: Usage()].subscriptions += 1
            return true
        }
    }

    func releaseSubscription(_ identity: String, count: Int = 1) {
        state.withLockedValue { $0.usage[identity]?.subscriptions -= count }
    }

    /// Takes one message of `bytes` from the identity's rate budget; false when over its limits.
    func admitMessage(_ identity: String, bytes: Int, limits: Limits, now: Double) -> Bool {
        guard limits.messagesPerSecond != nil || limits.bytesPerSecond != nil else { return true }
        return state.withLockedValue { state in
            var entry = state.usage[identity, default: Usage()]
            defer { state.usage[identity] = entry }
            if let rate = limits.messagesPerSecond, entry.messages == nil { entry.messages = TokenBucket(rate: rate, now: now) }
            if let rate = limits.bytesPerSecond, entry.bytes == nil { entry.bytes = TokenBucket(rate: rate, now: now) }
            // Check both before taking from either, so a refused message costs nothing.
            var messages = entry.messages
            var byteBudget = entry.bytes
            guard messages?.take(1, now: now) ?? true, byteBudget?.take(Double(bytes), now: now) ?? true else {
                return false
            }
            entry.messages = messages
            entry.bytes = byteBudget
            return true
        }
    }
}
