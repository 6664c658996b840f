import Foundation
import PortcullisPKI
import PortcullisPolicy
import X509

/// `bench scale`: the fleet-sized structures in-process, at several sizes, so that "as fast with 100,000 as with
/// 100" is a measured ratio. Per size it loads a policy set of N identity rules and N pinned fingerprints (from
/// YAML, as a reload does), a CRL of N serials (from DER), and N subscriptions (`devices/<n>/commands/#`) with
/// N resolved topics, then times the per-connection and per-message operations on them.
public enum ScaleBenchmark {
    public struct Measurement: Codable, Sendable {
        public var size: Int
        /// Seconds to parse and index the policy set, the CRL, and to insert the subscriptions.
        public var policyLoadSeconds: Double
        public var crlLoadSeconds: Double
        public var subscriptionsLoadSeconds: Double
        /// Nanoseconds per operation.
        public var identifyAndDecideNanoseconds: Double
        public var crlLookupNanoseconds: Double
        public var topicMatchNanoseconds: Double
        /// A device subscribing and unsubscribing its commands filter, with the resolved topics it retires.
        public var subscribeUnsubscribeNanoseconds: Double
    }

    public struct Result: Codable, Sendable {
        public var scenario = "scale"
        public var measurements: [Measurement]
    }

    public static func run(sizes: [Int], operations: Int = 200_000) throws -> Result {
        Result(measurements: try sizes.map { try measure(size: $0, operations: operations) })
    }

    static func fingerprint(_ number: Int) -> String {
        let hex = String(number, radix: 16)
        return String(repeating: "0", count: 64 - hex.count) + hex
    }

    private static func measure(size: Int, operations: Int) throws -> Measurement {
        var generator = SystemRandomNumberGenerator()

        // Policies: every device pinned by fingerprint and granted by a rule naming it, as a fleet without a
        // naming scheme would be written.
        var yaml = "identity_mapping:\n"
        for device in 0..<size {
            yaml += "  - {source: fingerprint, match: \"\(fingerprint(device))\", identity: device-\(device)}\n"
        }
        yaml += "rules:\n"
        for device in 0..<size {
            yaml += "  - {name: d\(device), identities: [device-\(device)], routes: [/v1/messages], allow_missing_origin: true, "
                + "publish: [\"devices/{identity}/telemetry\"], subscribe: [\"devices/{identity}/commands/#\"]}\n"
        }
        let (policies, policyLoad) = try timed { try PolicySet.parse([("fleet.yaml", yaml)]) }
        let certificates = (0..<1024).map { _ -> CertificateFacts in
            let device = Int.random(in: 0..<size, using: &generator)
            return CertificateFacts(
                commonName: "device-\(device)", subject: "CN=device-\(device)", fingerprint: fingerprint(device), serial: "01")
        }
        let origins = OriginMatcher([])
        let decide = perOperation(operations) { index in
            let facts = certificates[index & 1023]
            guard let identity = policies.identify(facts),
                case .admit = policies.decide(identity: identity, route: "/v1/messages", origin: nil, gatewayOrigins: origins)
            else { preconditionFailure("the benchmark's policy refused \(facts.subject)") }
        }

        // A CRL of `size` serials, signed once and then read from DER as the gateway reads the file.
        let ca = try CertificateAuthority.makeRoot(name: "Scale CA", key: try KeyAlgorithm.p256.generate())
        let revocationDate = Date()
        let entries = (0..<size).map { number in
            CertificateRevocationList.Entry(serial: serial(number), revocationDate: revocationDate, reason: .superseded)
        }
        let der = try CertificateRevocationList.sign(entries: entries, by: ca, number: 1, nextUpdate: Date().addingTimeInterval(86_400)).derBytes
        let (crl, crlLoad) = try timed { try CertificateRevocationList(derEncoded: der) }
        // Half the look-ups find a revoked serial, half a serial that is not listed.
        let serials = (0..<1024).map { index in
            Certificate.SerialNumber(bytes: serial(index.isMultiple(of: 2) ? Int.random(in: 0..<size, using: &generator) : size + index))
        }
        let lookup = perOperation(operations) { index in
            if (crl.entry(for: serials[index & 1023]) != nil) != (index & 1023).isMultiple(of: 2) {
                preconditionFailure("the benchmark's CRL answered wrongly")
            }
        }

        // Subscriptions: each device's commands, and an operator's view of all telemetry.
        var (index, subscriptionsLoad) = timed { () -> SubscriptionIndex<Int, Int> in
            var index = SubscriptionIndex<Int, Int>()
            for device in 0..<size { index.insert("devices/\(device)/commands/#", key: device, member: device) }
            index.insert("devices/+/telemetry", key: -1, member: -1)
            return index
        }
        var resolved = TopicMap<Int>()
        for device in 0..<size { resolved["devices/\(device)/telemetry"] = device }
        let topics = (0..<1024).map { _ in "devices/\(Int.random(in: 0..<size, using: &generator))/commands/reboot" }
        let match = perOperation(operations) { number in
            var found = 0
            index.forEachMatch(of: topics[number & 1023]) { found += $0.count }
            precondition(found == 1, "a command topic must match its device's filter only")
        }
        let churn = perOperation(operations / 10) { number in
            let filter = "devices/\(number % size)/commands/#"
            index.remove(filter, key: number % size)
            _ = resolved.removeAll(matching: filter)
            index.insert(filter, key: number % size, member: number % size)
            _ = resolved.removeAll(matching: filter)
        }
        return Measurement(
            size: size, policyLoadSeconds: policyLoad, crlLoadSeconds: crlLoad, subscriptionsLoadSeconds: subscriptionsLoad,
            identifyAndDecideNanoseconds: decide, crlLookupNanoseconds: lookup, topicMatchNanoseconds: match,
            subscribeUnsubscribeNanoseconds: churn)
    }

    /// A positive DER serial for `number`: a leading 0x7F keeps every one the same length and positive.
    private static func serial(_ number: Int) -> [UInt8] {
        [0x7F] + withUnsafeBytes(of: UInt32(truncatingIfNeeded: number).bigEndian) { Array($0) }
    }

    private static func timed<T>(_ body: () throws -> T) rethrows -> (T, Double) {
        let start = ContinuousClock.now
        let value = try body()
        return (value, seconds(since: start))
    }

    /// Nanoseconds per call of `body`, over `count` calls.
    private static func perOperation(_ count: Int, _ body: (Int) -> Void) -> Double {
        let start = ContinuousClock.now
        for index in 0..<count { body(index) }
        return seconds(since: start) * 1e9 / Double(count)
    }

    private static func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }
}
