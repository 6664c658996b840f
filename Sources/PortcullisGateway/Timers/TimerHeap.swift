/// Pending timers ordered by deadline, in a binary min-heap that knows where each timer sits, so that cancelling
/// one costs O(log n) like adding one. Timers due at the same instant come out in the order they were added.
///
/// Written by hand because no library in reach removes an arbitrary entry from a heap in less than linear time:
/// swift-collections' `Heap` removes only the minimum or the maximum, and SwiftNIO's own scheduled tasks cancel
/// by scanning every pending task (see ``LoopTimers``). Held to a property test against a sorted list.
struct TimerHeap<Payload> {
    /// Names one added timer, to cancel it; never reused.
    struct Handle: Hashable, Sendable {
        fileprivate let id: UInt64
    }

    private struct Entry {
        let deadline: UInt64
        let id: UInt64
        let payload: Payload

        /// Earlier deadline first; among equal deadlines, the one added first.
        func precedes(_ other: Entry) -> Bool {
            deadline != other.deadline ? deadline < other.deadline : id < other.id
        }
    }

    private var entries: [Entry] = []
    /// Where each pending timer's entry is in `entries`.
    private var positions: [UInt64: Int] = [:]
    private var nextID: UInt64 = 0

    var count: Int { entries.count }

    /// The earliest deadline pending, if any.
    var earliestDeadline: UInt64? { entries.first?.deadline }

    /// Adds a timer due at `deadline` (in whatever unit the caller keeps, nanoseconds for ``LoopTimers``).
    mutating func insert(deadline: UInt64, _ payload: Payload) -> Handle {
        let id = nextID
        nextID &+= 1
        entries.append(Entry(deadline: deadline, id: id, payload: payload))
        positions[id] = entries.count - 1
        siftUp(entries.count - 1)
        return Handle(id: id)
    }

    /// Cancels `handle`'s timer and returns its payload; nil when it already fired or was cancelled.
    @discardableResult
    mutating func remove(_ handle: Handle) -> Payload? {
        guard let position = positions[handle.id] else { return nil }
        return remove(at: position)
    }

    /// The handle the next ``insert(deadline:_:)`` will return: timers added from then on come after it.
    var nextHandle: Handle { Handle(id: nextID) }

    /// Takes out the earliest timer if it is due at `now` or before and, when `cutoff` is given, was added
    /// before it: a caller running due timers whose bodies add timers due at once still comes to an end.
    mutating func popDue(now: UInt64, addedBefore cutoff: Handle? = nil) -> Payload? {
        guard let first = entries.first, first.deadline <= now else { return nil }
        if let cutoff, first.id >= cutoff.id {
            // Among entries due, the heap orders equal deadlines by id, but an earlier deadline added later can
            // sit before an older one: look for the earliest entry added before the cutoff.
            guard let position = earliestDue(now: now, addedBefore: cutoff.id) else { return nil }
            return remove(at: position)
        }
        return remove(at: 0)
    }

    /// The position of the earliest entry due at `now` among those added before `cutoff`, walking only the part
    /// of the heap that is due.
    private func earliestDue(now: UInt64, addedBefore cutoff: UInt64) -> Int? {
        var best: Int?
        var stack = [0]
        while let position = stack.popLast() {
            guard position < entries.count, entries[position].deadline <= now else { continue }
            if entries[position].id < cutoff, best.map({ entries[position].precedes(entries[$0]) }) ?? true {
                best = position
            }
            stack.append(2 * position + 1)
            stack.append(2 * position + 2)
        }
        return best
    }

    private mutating func remove(at position: Int) -> Payload {
        let removed = entries[position]
        positions[removed.id] = nil
        let last = entries.removeLast()
        if position < entries.count {
            entries[position] = last
            positions[last.id] = position
            // The entry moved into the hole may belong above it or below it.
            if position > 0, last.precedes(entries[(position - 1) / 2]) {
                siftUp(position)
            } else {
                siftDown(position)
            }
        }
        return removed.payload
    }

    private mutating func siftUp(_ start: Int) {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            guard entries[child].precedes(entries[parent]) else { break }
            swapAt(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < entries.count else { return }
            let right = left + 1
            let child = right < entries.count && entries[right].precedes(entries[left]) ? right : left
            guard entries[child].precedes(entries[parent]) else { return }
            swapAt(child, parent)
            parent = child
        }
    }

    private mutating func swapAt(_ a: Int, _ b: Int) {
        entries.swapAt(a, b)
        positions[entries[a].id] = a
        positions[entries[b].id] = b
    }
}
