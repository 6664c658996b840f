import NIOConcurrencyHelpers
import NIOCore
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
            drain()
            deliverOnLoop.value(frame)
            return false
        }
        return mailbox.withLockedValue { mailbox -> Bool in
            mailbox.frames.append(frame)
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
            let frames = mailbox.frames
            mailbox.frames = []
            return frames
        }
        for frame in frames { deliverOnLoop.value(frame) }
    }
}

/// The built-in publish/subscribe broker, shared by every session of every event loop.
///
/// Exact filters are found by hash lookup; filters with wildcards are matched one by one. A session receives a
/// message once even when several of its filters match.
final class Broker: Sendable {
    private struct State {
        var exact: [String: [UInt64: Subscriber]] = [:]
        var wildcard: [String: [UInt64: Subscriber]] = [:]
        /// Who receives each topic published since the subscriptions last changed: publishers mostly repeat
        /// topics, so a publish is one hash lookup instead of a walk over the wildcard filters.
        var resolved: [String: [Subscriber]] = [:]
    }

    /// Topics remembered in ``State/resolved`` at most; beyond that the cache starts over.
    private static let resolvedLimit = 65_536

    private let state = NIOLockedValueBox(State())

    func subscribe(_ filter: String, _ subscriber: Subscriber) {
        let isWildcard = filter.contains("+") || filter.contains("#")
        state.withLockedValue { state in
            state.resolved.removeAll(keepingCapacity: true)
            generation.add(1, ordering: .releasing)
            if isWildcard {
                state.wildcard[filter, default: [:]][subscriber.id] = subscriber
            } else {
                state.exact[filter, default: [:]][subscriber.id] = subscriber
            }
        }
    }

    func unsubscribe(_ filter: String, _ subscriber: Subscriber) {
        state.withLockedValue { state in
            state.resolved.removeAll(keepingCapacity: true)
            generation.add(1, ordering: .releasing)
            state.exact[filter]?[subscriber.id] = nil
            if state.exact[filter]?.isEmpty == true { state.exact[filter] = nil }
            state.wildcard[filter]?[subscriber.id] = nil
            if state.wildcard[filter]?.isEmpty == true { state.wildcard[filter] = nil }
        }
    }

    /// Bumped by every change of subscriptions: a ``Publisher`` from an earlier generation is stale.
    private let generation = Atomic<Int>(0)

    /// A publishing session's side of the broker: who received its last topic, valid while the subscriptions
    /// stay the same (a publisher repeating its topic then takes neither the broker's lock nor a hash lookup),
    /// and the subscribers on other event loops that have frames waiting and still need a wake-up.
    struct Publisher {
        fileprivate var topic: String?
        fileprivate var generation = -1
        fileprivate var subscribers: [Subscriber] = []
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
        let current = generation.load(ordering: .acquiring)
        if publisher.generation != current || publisher.topic != topic {
            publisher.topic = topic
            publisher.generation = current
            publisher.subscribers = subscribers(of: topic)
        }
        for subscriber in publisher.subscribers where subscriber.deliver(frame) {
            publisher.unwoken.append(subscriber)
        }
        return publisher.subscribers.count
    }

    private func subscribers(of topic: String) -> [Subscriber] {
        state.withLockedValue { state -> [Subscriber] in
            if let known = state.resolved[topic] { return known }
            var found = state.exact[topic] ?? [:]
            for (filter, subscribers) in state.wildcard where Topic.matches(filter: filter, topic: topic) {
                found.merge(subscribers) { first, _ in first }
            }
            let subscribers = Array(found.values)
            if state.resolved.count >= Self.resolvedLimit { state.resolved.removeAll(keepingCapacity: true) }
            state.resolved[topic] = subscribers
            return subscribers
        }
    }
}

/// What each identity uses across all its sessions, against the limits its policy sets.
final class IdentityUsage: Sendable {
    private struct Usage {
        var sessions = 0
        var subscriptions = 0
        var messages: TokenBucket?
        var bytes: TokenBucket?
    }

    private let usage = NIOLockedValueBox([String: Usage]())

    /// Counts a new session unless the identity already has `limit` open.
    func reserveSession(_ identity: String, limit: Int?) -> Bool {
        usage.withLockedValue { usage in
            if let limit, usage[identity, default: Usage()].sessions >= limit { return false }
            usage[identity, default: Usage()].sessions += 1
            return true
        }
    }

    /// Releases a session slot; its subscriptions were released one by one as the session closed.
    func releaseSession(_ identity: String) {
        usage.withLockedValue { usage in
            usage[identity]?.sessions -= 1
            if usage[identity]?.sessions == 0 { usage[identity] = nil }
        }
    }

    func reserveSubscription(_ identity: String, limit: Int?) -> Bool {
        usage.withLockedValue { usage in
            if let limit, usage[identity, default: Usage()].subscriptions >= limit { return false }
            usage[identity, default: Usage()].subscriptions += 1
            return true
        }
    }

    func releaseSubscription(_ identity: String) {
        usage.withLockedValue { $0[identity]?.subscriptions -= 1 }
    }

    /// Takes one message of `bytes` from the identity's rate budget; false when over its limits.
    func admitMessage(_ identity: String, bytes: Int, limits: Limits, now: Double) -> Bool {
        guard limits.messagesPerSecond != nil || limits.bytesPerSecond != nil else { return true }
        return usage.withLockedValue { usage in
            var entry = usage[identity, default: Usage()]
            defer { usage[identity] = entry }
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
