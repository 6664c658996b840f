/// How long a reconnecting client waits before its next attempt: exponential backoff with full jitter.
///
/// After the `n`th consecutive failure the wait is drawn uniformly from `0 ... ceiling(n)`, where the ceiling
/// doubles from ``initialDelay`` up to ``maximumDelay``. Full jitter (rather than a fixed delay, or a little
/// noise around one) spreads a fleet that lost its gateway at the same instant over the whole window, so a
/// restarted gateway is not met by every device in the same second.
///
/// A pure value: the random source is a parameter, so tests draw from a fixed or seeded generator.
public struct ReconnectBackoff: Sendable, Equatable {
    /// The ceiling after the first failure.
    public let initialDelay: Duration
    /// The ceiling never grows past this.
    public let maximumDelay: Duration

    /// Out-of-range values are corrected rather than trapped on: negative delays become zero, and a maximum
    /// below the initial delay becomes the initial delay.
    public init(initialDelay: Duration = .milliseconds(100), maximumDelay: Duration = .seconds(30)) {
        let initial = max(initialDelay, .zero)
        self.initialDelay = initial
        self.maximumDelay = max(maximumDelay, initial)
    }

    /// The longest wait after `consecutiveFailures` failures in a row: zero for none,
    /// `initialDelay × 2^(failures − 1)` otherwise, capped at ``maximumDelay``.
    public func ceiling(afterFailures consecutiveFailures: Int) -> Duration {
        guard consecutiveFailures > 0, initialDelay > .zero else { return .zero }
        // Whole multiples of the initial delay, so that ceilings are exact (0.1 s × 2 is 200 ms, not 200 ms and a
        // few attoseconds). The cap is checked by division first: a large initial delay times 2^62 overflows a
        // Duration, and a client that failed for a week must not trap.
        let factor = 1 << min(consecutiveFailures - 1, 62)
        guard initialDelay <= maximumDelay / factor else { return maximumDelay }
        return min(initialDelay * factor, maximumDelay)
    }

    /// The wait after `consecutiveFailures` failures in a row: uniform in `0 ... ceiling`, drawn from `random`.
    public func delay(
        afterFailures consecutiveFailures: Int, using random: inout some RandomNumberGenerator
    ) -> Duration {
        let ceiling = ceiling(afterFailures: consecutiveFailures)
        guard ceiling > .zero else { return .zero }
        // 53 random bits give a fraction in [0, 1) that a test can predict from the generator's output (0 gives
        // no wait, UInt64.max almost the whole ceiling), unlike Double.random(in:using:), whose use of the
        // generator is an implementation detail.
        let fraction = Double(random.next() >> 11) * 0x1p-53
        return .seconds(ceiling.inSeconds * fraction)
    }
}

extension Duration {
    /// This duration in seconds, as a Double (attosecond precision is not needed for waits).
    var inSeconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) * 1e-18
    }
}
