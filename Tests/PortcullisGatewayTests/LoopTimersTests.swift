import NIOCore
import NIOEmbedded
import PortcullisTestSupport
import Testing

@testable import PortcullisGateway

@Suite("Connection timers: the indexed heap and each loop's timers")
struct LoopTimersTests {
    @Test("The heap agrees with a sorted list through random inserts, cancels and pops", arguments: [1, 2, 3, 4] as [UInt64])
    func heapAgreesWithSortedList(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        var heap = TimerHeap<Int>()
        // The model: every pending timer as (deadline, order added, payload), kept sorted.
        var model: [(deadline: UInt64, order: Int, payload: Int)] = []
        var handles: [(TimerHeap<Int>.Handle, order: Int)] = []
        var added = 0
        // 1,500 steps: the model's every step is linear, and this runs in debug beside the integration tests.
        for _ in 0..<1_500 {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<5:
                // Few distinct deadlines, so ties (broken by the order added) are common.
                let deadline = UInt64.random(in: 0...40, using: &rng)
                handles.append((heap.insert(deadline: deadline, added), added))
                model.append((deadline, added, added))
                added += 1
            case 5..<8:
                guard let (handle, order) = handles.randomElement(using: &rng) else { continue }
                let expected = model.firstIndex { $0.order == order }
                let removed = heap.remove(handle)
                #expect(removed == expected.map { model[$0].payload }, "cancelling a fired or cancelled timer gives nil")
                if let expected { model.remove(at: expected) }
            default:
                let now = UInt64.random(in: 0...40, using: &rng)
                // Sometimes only timers added before a point count, as when timers fire while bodies add more.
                let cutoffOrder = Bool.random(using: &rng) ? Int.random(in: 0...max(0, added), using: &rng) : nil
                let cutoff = cutoffOrder.map { order in handles.first { $0.order == order }?.0 ?? heap.nextHandle }
                let eligible = model.enumerated()
                    .filter { $0.element.deadline <= now && (cutoff == nil || $0.element.order < cutoffOrder!) }
                    .min { ($0.element.deadline, $0.element.order) < ($1.element.deadline, $1.element.order) }
                let popped = heap.popDue(now: now, addedBefore: cutoff)
                #expect(popped == eligible?.element.payload, "pop at \(now), cutoff \(String(describing: cutoffOrder))")
                if let eligible { model.remove(at: eligible.offset) }
            }
            #expect(heap.count == model.count)
            #expect(heap.earliestDeadline == model.map(\.deadline).min())
        }
        while let payload = heap.popDue(now: .max) {
            let first = model.min { ($0.deadline, $0.order) < ($1.deadline, $1.order) }!
            #expect(payload == first.payload)
            model.removeAll { $0.order == first.order }
        }
        #expect(model.isEmpty && heap.count == 0)
    }

    @Test("Timers fire at their deadlines, in order; a cancelled one never does")
    func firesInOrder() {
        let loop = EmbeddedEventLoop()
        let timers = LoopTimers(eventLoop: loop)
        var fired: [String] = []
        _ = timers.schedule(in: .seconds(3)) { fired.append("three") }
        let cancelled = timers.schedule(in: .seconds(2)) { fired.append("two") }
        _ = timers.schedule(in: .seconds(1)) { fired.append("one") }
        timers.cancel(cancelled)
        loop.advanceTime(by: .milliseconds(999))
        #expect(fired.isEmpty)
        loop.advanceTime(by: .milliseconds(1))
        #expect(fired == ["one"])
        loop.advanceTime(by: .seconds(2))
        #expect(fired == ["one", "three"])
        #expect(timers.count == 0)
        timers.cancel(cancelled)  // long gone: nothing happens
    }

    @Test("A timer cancelled by another due at the same time does not fire; one added while firing waits its turn")
    func bodiesCancelAndAdd() {
        let loop = EmbeddedEventLoop()
        let timers = LoopTimers(eventLoop: loop)
        var fired: [String] = []
        var second: LoopTimers.Timer?
        _ = timers.schedule(in: .seconds(1)) {
            fired.append("first")
            timers.cancel(second)
            // Due at once (time stands still on this loop): runs on a later turn, not in this one.
            _ = timers.schedule(in: .zero) { fired.append("added") }
        }
        second = timers.schedule(in: .seconds(1)) { fired.append("second") }
        loop.advanceTime(by: .seconds(1))
        #expect(fired == ["first", "added"])
        #expect(timers.count == 0)
    }

    @Test("Of thousands of timers, the cancelled never fire, and one added earlier than all fires first")
    func oneWakeUp() {
        let loop = EmbeddedEventLoop()
        let timers = LoopTimers(eventLoop: loop)
        var fired = 0
        let pending = (0..<5_000).map { index in
            timers.schedule(in: .seconds(Int64(10 + index % 50))) { fired += 1 }
        }
        for timer in pending.prefix(4_000) { timers.cancel(timer) }
        #expect(timers.count == 1_000)
        _ = timers.schedule(in: .seconds(1)) { fired += 1 }
        loop.advanceTime(by: .seconds(1))
        #expect(fired == 1, "the earlier timer fired although 1,000 later ones were already waiting")
        loop.advanceTime(by: .seconds(60))
        #expect(fired == 1_001)
    }
}
