import NIOConcurrencyHelpers
import PortcullisPolicy
import Testing

@testable import PortcullisGateway

@Suite("Identity usage: session counts and rate budgets")
struct IdentityUsageTests {
    /// A clock the test moves by hand.
    final class ManualClock: Sendable {
        private let seconds = NIOLockedValueBox(1000.0)
        var now: Double { seconds.withLockedValue { $0 } }
        func advance(_ by: Double) { seconds.withLockedValue { $0 += by } }
    }

    @Test("Reconnecting does not refill the burst: the budget outlives the last session until it has refilled")
    func budgetOutlivesSessions() {
        let clock = ManualClock()
        let usage = IdentityUsage(clock: { clock.now })
        let limits = Limits(messagesPerSecond: 5)
        #expect(usage.reserveSession("device-7", limit: nil))
        for _ in 0..<5 { #expect(usage.admitMessage("device-7", bytes: 10, limits: limits, now: usage.now)) }
        #expect(!usage.admitMessage("device-7", bytes: 10, limits: limits, now: usage.now))
        usage.releaseSession("device-7")
        #expect(usage.isTracked("device-7"))
        // Straight back in: the bucket is still empty.
        #expect(usage.reserveSession("device-7", limit: nil))
        #expect(!usage.admitMessage("device-7", bytes: 10, limits: limits, now: usage.now))
        usage.releaseSession("device-7")
        // Once the bucket has had time to refill, the entry goes (memory does not grow with every identity ever seen).
        clock.advance(1.5)
        #expect(!usage.isTracked("device-7"))
        #expect(usage.reserveSession("device-7", limit: nil))
        #expect(usage.admitMessage("device-7", bytes: 10, limits: limits, now: usage.now))
    }

    @Test("An identity without rate limits leaves nothing behind; session limits still count")
    func noBudgetNoRetention() {
        let usage = IdentityUsage(clock: { 0 })
        #expect(usage.reserveSession("a", limit: 1))
        #expect(!usage.reserveSession("a", limit: 1))
        usage.releaseSession("a")
        #expect(!usage.isTracked("a"))
    }

    @Test("Pruning is bounded per call and catches up: 1,000 retained identities are all gone after enough calls")
    func pruningCatchesUp() {
        let clock = ManualClock()
        let usage = IdentityUsage(clock: { clock.now })
        let limits = Limits(messagesPerSecond: 1)
        for index in 0..<1000 {
            #expect(usage.reserveSession("d\(index)", limit: nil))
            _ = usage.admitMessage("d\(index)", bytes: 1, limits: limits, now: usage.now)
            usage.releaseSession("d\(index)")
        }
        clock.advance(2)
        for index in 0..<200 { _ = usage.isTracked("probe-\(index)") }
        #expect((0..<1000).allSatisfy { !usage.isTracked("d\($0)") })
    }
}
