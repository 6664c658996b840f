import PortcullisClient
import PortcullisTestSupport
import Testing

/// A generator that returns one value forever: 0 draws no wait, `UInt64.max` (almost) the whole ceiling.
struct ConstantGenerator: RandomNumberGenerator {
    let value: UInt64
    mutating func next() -> UInt64 { value }
}

@Suite("Reconnect backoff: exponential ceiling, full jitter")
struct ReconnectBackoffTests {
    let backoff = ReconnectBackoff(initialDelay: .milliseconds(100), maximumDelay: .seconds(30))

    @Test(
        "The ceiling doubles from the initial delay and stops at the maximum",
        arguments: [
            (0, Duration.zero), (1, .milliseconds(100)), (2, .milliseconds(200)), (3, .milliseconds(400)),
            (9, .milliseconds(25_600)), (10, .seconds(30)), (11, .seconds(30)),
        ])
    func ceilingDoublesUpToTheMaximum(failures: Int, expected: Duration) {
        #expect(backoff.ceiling(afterFailures: failures) == expected)
    }

    @Test("A client that failed for ever, or a negative count, gets the maximum or nothing, and never traps")
    func extremeFailureCounts() {
        #expect(backoff.ceiling(afterFailures: .max) == .seconds(30))
        #expect(backoff.ceiling(afterFailures: 1_000) == .seconds(30))
        #expect(backoff.ceiling(afterFailures: -5) == .zero)
        var random = SplitMix64(state: 1)
        #expect(backoff.delay(afterFailures: .max, using: &random) <= .seconds(30))
    }

    @Test("Full jitter: the lowest draw waits nothing, the highest almost the whole ceiling")
    func jitterSpansZeroToTheCeiling() {
        var lowest = ConstantGenerator(value: 0)
        var highest = ConstantGenerator(value: .max)
        #expect(backoff.delay(afterFailures: 4, using: &lowest) == .zero)
        let high = backoff.delay(afterFailures: 4, using: &highest)
        #expect(high <= .milliseconds(800))
        #expect(high > .milliseconds(799))
    }

    @Test("Seeded draws stay within 0 ... ceiling and spread over it")
    func seededDrawsSpread() {
        var random = SplitMix64(state: 42)
        let draws = (0..<1_000).map { _ in backoff.delay(afterFailures: 5, using: &random) }
        #expect(draws.allSatisfy { $0 >= .zero && $0 <= .milliseconds(1_600) })
        // Full jitter, not a fixed delay with noise: both halves of the window are used.
        #expect(draws.contains { $0 < .milliseconds(400) })
        #expect(draws.contains { $0 > .milliseconds(1_200) })
        // The same seed gives the same waits.
        var again = SplitMix64(state: 42)
        #expect(draws == (0..<1_000).map { _ in backoff.delay(afterFailures: 5, using: &again) })
    }

    @Test("Out-of-range settings are corrected, not trapped on")
    func invalidSettingsAreCorrected() {
        let negative = ReconnectBackoff(initialDelay: .seconds(-1), maximumDelay: .seconds(-5))
        #expect(negative.initialDelay == .zero)
        #expect(negative.maximumDelay == .zero)
        var random = SplitMix64(state: 7)
        #expect(negative.delay(afterFailures: 3, using: &random) == .zero)
        let inverted = ReconnectBackoff(initialDelay: .seconds(5), maximumDelay: .seconds(1))
        #expect(inverted.maximumDelay == .seconds(5))
        #expect(inverted.ceiling(afterFailures: 4) == .seconds(5))
        let huge = ReconnectBackoff(initialDelay: .seconds(Int64.max / 2), maximumDelay: .seconds(Int64.max))
        #expect(huge.ceiling(afterFailures: 80) == .seconds(Int64.max))
    }
}
