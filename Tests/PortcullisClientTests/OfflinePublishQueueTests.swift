import PortcullisClient
import Testing

@Suite("Offline publish queue: bounded, drops the oldest, counts drops")
struct OfflinePublishQueueTests {
    func publish(_ n: Int, bytes: Int = 1) -> PendingPublish {
        PendingPublish(topic: "t/\(n)", payload: .json(Array(repeating: UInt8(ascii: "1"), count: bytes)))
    }

    @Test("Publishes come out in the order they went in")
    func keepsOrder() {
        var queue = OfflinePublishQueue(capacity: 10, byteCapacity: 1 << 20)
        for n in 0..<5 { #expect(queue.append(publish(n)) == 0) }
        var out: [PendingPublish] = []
        while let next = queue.popFirst() { out.append(next) }
        #expect(out == (0..<5).map { publish($0) })
        #expect(queue.isEmpty)
        #expect(queue.byteCount == 0)
        #expect(queue.droppedCount == 0)
    }

    @Test("When full, the oldest publishes are dropped and counted")
    func dropsOldestByCount() {
        var queue = OfflinePublishQueue(capacity: 3, byteCapacity: 1 << 20)
        for n in 0..<3 { queue.append(publish(n)) }
        #expect(queue.append(publish(3)) == 1)
        #expect(queue.append(publish(4)) == 1)
        #expect(queue.droppedCount == 2)
        #expect(queue.count == 3)
        #expect(queue.popFirst() == publish(2))
    }

    @Test("The byte bound drops as many old publishes as a large one needs")
    func dropsOldestByBytes() {
        // Each small publish costs 3 topic bytes + 1 payload byte.
        var queue = OfflinePublishQueue(capacity: 100, byteCapacity: 20)
        for n in 0..<5 { queue.append(publish(n)) }
        #expect(queue.byteCount == 20)
        #expect(queue.append(publish(9, bytes: 9)) == 3)
        #expect(queue.byteCount == 8 + 12)
        #expect(queue.droppedCount == 3)
        #expect(queue.popFirst() == publish(3))
    }

    @Test("A publish larger than the whole queue is dropped itself, and what waits stays")
    func tooLargeIsDropped() {
        var queue = OfflinePublishQueue(capacity: 10, byteCapacity: 16)
        queue.append(publish(1))
        #expect(queue.append(publish(2, bytes: 100)) == 1)
        #expect(queue.droppedCount == 1)
        #expect(queue.count == 1)
        #expect(queue.popFirst() == publish(1))
    }

    @Test("Capacities below one become one")
    func degenerateCapacities() {
        var queue = OfflinePublishQueue(capacity: 0, byteCapacity: -4)
        #expect(queue.capacity == 1)
        #expect(queue.byteCapacity == 1)
        #expect(queue.append(publish(1)) == 1)
        #expect(queue.isEmpty)
    }
}
