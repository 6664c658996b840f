import NIOCore
import PortcullisProtocol

/// A publish waiting for a session: its topic and payload.
public struct PendingPublish: Sendable, Equatable {
    public var topic: String
    public var payload: MessagingProtocol.Payload

    public init(topic: String, payload: MessagingProtocol.Payload) {
        self.topic = topic
        self.payload = payload
    }

    /// What the publish costs while it waits: topic and payload bytes.
    public var byteCount: Int {
        switch payload {
        case .json(let bytes), .binary(let bytes): topic.utf8.count + bytes.count
        }
    }
}

/// The publishes made while no session is open, bounded in count and bytes, in publish order.
///
/// When a new publish does not fit, the oldest ones are dropped to make room, and counted: for telemetry the
/// newest reading is worth more than the oldest, and a device offline for a day must not run out of memory. A
/// publish larger than the whole byte capacity is dropped itself (and counted).
public struct OfflinePublishQueue: Sendable {
    /// At most this many publishes wait.
    public let capacity: Int
    /// At most this many bytes (topics and payloads) wait.
    public let byteCapacity: Int
    /// Publishes dropped since the queue was made, because it was full or they were too large.
    public private(set) var droppedCount = 0
    /// Bytes of the waiting publishes.
    public private(set) var byteCount = 0

    private var waiting = CircularBuffer<PendingPublish>()

    /// Capacities below one are raised to one: a queue that can hold nothing would drop every publish.
    public init(capacity: Int, byteCapacity: Int) {
        self.capacity = max(capacity, 1)
        self.byteCapacity = max(byteCapacity, 1)
    }

    public var count: Int { waiting.count }
    public var isEmpty: Bool { waiting.isEmpty }

    /// Appends `publish`, dropping the oldest waiting publishes until it fits.
    /// - Returns: how many publishes were dropped (the new one included, when it is larger than ``byteCapacity``).
    @discardableResult
    public mutating func append(_ publish: PendingPublish) -> Int {
        let size = publish.byteCount
        guard size <= byteCapacity else {
            droppedCount = droppedCount.addingSaturated(1)
            return 1
        }
        var dropped = 0
        while !waiting.isEmpty, waiting.count >= capacity || byteCount + size > byteCapacity {
            let oldest = waiting.removeFirst()
            byteCount -= oldest.byteCount
            dropped += 1
        }
        waiting.append(publish)
        byteCount += size
        droppedCount = droppedCount.addingSaturated(dropped)
        return dropped
    }

    /// Takes the oldest waiting publish.
    public mutating func popFirst() -> PendingPublish? {
        guard let first = waiting.popFirst() else { return nil }
        byteCount -= first.byteCount
        return first
    }
}

extension Int {
    /// A counter that stops at `Int.max` instead of trapping.
    func addingSaturated(_ other: Int) -> Int {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
