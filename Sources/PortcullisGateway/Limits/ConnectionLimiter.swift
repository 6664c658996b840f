import PortcullisConfig
import PortcullisPolicy

/// Counts open connections, in all and per client address, and new connections per address per second, and
/// says whether one more may be accepted. Decided at accept, before TLS: a refused connection costs a
/// close, not a handshake. Pure logic with the clock as a parameter; the gateway holds it under a lock.
struct ConnectionLimiter {
    enum Refusal: String, Sendable, Equatable {
        /// `limits.max_connections` connections are open.
        case maxConnections = "max_connections"
        /// `limits.per_address.connections` are open from this address.
        case perAddressConnections = "per_address_connections"
        /// This address opened more than `limits.per_address.new_per_second` connections a second.
        case perAddressRate = "per_address_rate"
        /// As many connections are open as the process's open-file limit leaves room for (``OpenFileBudget``).
        case openFiles = "open_files"
    }

    private struct Address {
        var open = 0
        var bucket: TokenBucket?
        /// While nothing is open: when the bucket is full again, and the entry can go.
        var idleUntil: Double?
    }

    private(set) var open = 0
    private var addresses: [String: Address] = [:]
    /// Addresses with nothing open, in the order their entries may go (each wait is one second at most:
    /// a bucket refills in burst / rate = 1 s).
    private var idle = RetentionQueue<String>()

    /// Counts a new connection from `address`, or says why not (counting nothing). `capacity` is what the
    /// open-file limit allows, whatever `limits` says. A nil `address` counts the connection in all only: it came
    /// from a load balancer, and ``attribute(_:limits:now:)`` counts it against its client once the PROXY header
    /// has said who that is.
    mutating func admit(
        _ address: String?, limits: GatewayConfiguration.ConnectionLimits, capacity: Int = .max, now: Double
    ) -> Refusal? {
        prune(now: now)
        if let maximum = limits.maxConnections, open >= maximum { return .maxConnections }
        if open >= capacity { return .openFiles }
        if let address, let refusal = count(address, limits: limits, now: now) { return refusal }
        open += 1
        return nil
    }

    /// Counts a connection `admit` counted without an address against the client `address`, or says why not
    /// (it then stays counted in all only, until released with no address).
    mutating func attribute(
        _ address: String, limits: GatewayConfiguration.ConnectionLimits, now: Double
    ) -> Refusal? {
        prune(now: now)
        return count(address, limits: limits, now: now)
    }

    private mutating func count(
        _ address: String, limits: GatewayConfiguration.ConnectionLimits, now: Double
    ) -> Refusal? {
        var entry = addresses[address, default: Address()]
        if let maximum = limits.perAddressConnections, entry.open >= maximum { return .perAddressConnections }
        if let rate = limits.perAddressNewPerSecond {
            var bucket = entry.bucket.flatMap { $0.rate == Double(rate) ? $0 : nil } ?? TokenBucket(rate: Double(rate), now: now)
            guard bucket.take(now: now) else {
                entry.bucket = bucket
                addresses[address] = entry
                return .perAddressRate
            }
            entry.bucket = bucket
        }
        entry.open += 1
        entry.idleUntil = nil
        addresses[address] = entry
        return nil
    }

    /// Releases a connection `admit` counted, under the address it was last counted against (nil for none).
    mutating func release(_ address: String?, now: Double) {
        open -= 1
        guard let address, var entry = addresses[address] else { return }
        entry.open -= 1
        if entry.open == 0 {
            guard let bucket = entry.bucket else {
                addresses[address] = nil
                return
            }
            // The budget stays until it has refilled, or closing and reconnecting would refill it at once.
            let until = now + bucket.burst / bucket.rate
            entry.idleUntil = until
            idle.retain(address, until: until)
        }
        addresses[address] = entry
        prune(now: now)
    }

    /// Addresses the limiter keeps state for; for tests.
    var trackedAddresses: Int { addresses.count }

    private mutating func prune(now: Double) {
        idle.drain(now: now) { address, until in
            // A later connection (and release) may have renewed the entry; only a retention still current removes it.
            if let entry = addresses[address], entry.open == 0, let idleUntil = entry.idleUntil, idleUntil <= until {
                addresses[address] = nil
            }
        }
    }
}
