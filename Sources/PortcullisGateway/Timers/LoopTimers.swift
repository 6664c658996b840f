import NIOCore

/// The timers of the connections on one event loop: handshake deadlines, heartbeats, close deadlines and
/// certificate expiry.
///
/// SwiftNIO keeps its scheduled tasks in a heap whose `cancel()` scans every pending task (swift-nio 2.101,
/// `SelectableEventLoop._prepareToSchedule`: `_scheduledTasks.removeFirst(where:)`). With a heartbeat and an
/// expiry timer per session, a cancel then costs time proportional to the sessions on the loop, and a session
/// cancels two or three when it closes and one when its admission concludes: at 19,000 devices the scan was
/// 28 % of the busiest loop's samples in a reconnect storm, and it made the ramp's lag probes up to 71 ms late
/// (21 ms since). Here a cancel costs O(log n) (``TimerHeap``), and SwiftNIO holds one task per loop: the
/// wake-up for the earliest timer.
///
/// Used only on its event loop (each loop has its own; see ``Gateway/timers(for:)``).
final class LoopTimers: @unchecked Sendable {
    /// A pending timer, to cancel it.
    struct Timer: Sendable {
        fileprivate let handle: TimerHeap<() -> Void>.Handle
    }

    let eventLoop: any EventLoop
    private var heap = TimerHeap<() -> Void>()
    /// The SwiftNIO task that wakes this loop for the earliest timer, and its deadline in uptime nanoseconds.
    private var wakeUp: (deadline: UInt64, task: Scheduled<Void>)?
    private var firing = false

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Timers pending, cancelled ones excluded.
    var count: Int { heap.count }

    /// Runs `body` on the loop `delay` from now, unless cancelled first.
    func schedule(in delay: TimeAmount, _ body: @escaping () -> Void) -> Timer {
        // Checked in release builds too: unlike SwiftNIO's tasks, these timers are not safe from other threads.
        eventLoop.preconditionInEventLoop()
        let timer = Timer(handle: heap.insert(deadline: (eventLoop.now + delay).uptimeNanoseconds, body))
        arm()
        return timer
    }

    /// Cancels `timer` if it has not fired; cancelling one that fired (or nil) does nothing.
    func cancel(_ timer: Timer?) {
        guard let timer else { return }
        eventLoop.preconditionInEventLoop()
        heap.remove(timer.handle)
        // The wake-up stays as it is: should it come before anything is due, it finds nothing and re-arms.
    }

    /// Drops every pending timer, and what its body holds, once the loop has stopped and nothing can fire them.
    func discardAfterShutdown() {
        heap = TimerHeap()
        wakeUp = nil
    }

    /// Makes sure SwiftNIO wakes the loop by the earliest deadline.
    private func arm() {
        guard !firing, let earliest = heap.earliestDeadline else { return }
        if let wakeUp, wakeUp.deadline <= earliest { return }
        // Rare: only a timer earlier than every pending one moves the wake-up (one task, so this cancel is cheap).
        wakeUp?.task.cancel()
        let task = eventLoop.scheduleTask(deadline: .uptimeNanoseconds(earliest)) { [self] in fire() }
        wakeUp = (earliest, task)
    }

    private func fire() {
        wakeUp = nil
        firing = true
        // Only timers pending when this began: a body that adds a timer due at once (a zero delay, or time
        // standing still on an embedded loop) must not keep this going.
        let now = eventLoop.now.uptimeNanoseconds
        let cutoff = heap.nextHandle
        while let body = heap.popDue(now: now, addedBefore: cutoff) { body() }
        firing = false
        arm()
    }
}
