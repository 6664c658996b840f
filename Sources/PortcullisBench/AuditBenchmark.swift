import Foundation
import PortcullisAudit

#if canImport(Glibc)
import Glibc
#endif

/// Writes records through the gateway's audit writer as fast as it takes them, and reports the rate.
public enum AuditBenchmark {
    public struct Result: Codable, Sendable {
        public var records: Int
        public var seconds: Double
        public var recordsPerSecond: Double
        /// Records per CPU-second of this process (producer and writer threads together).
        public var recordsPerCPUSecond: Double
        public var dropped: Int
        public var segments: Int
        public var bytes: Int
        public var fsync: String

        enum CodingKeys: String, CodingKey {
            case records, seconds, dropped, segments, bytes, fsync
            case recordsPerSecond = "records_per_second"
            case recordsPerCPUSecond = "records_per_cpu_second"
        }
    }

    /// Writes `records` records typical of a busy gateway (sessions opened and closed by 1,000 devices, one in ten
    /// refused) into a new log in `directory`, from one producing thread like an event loop. The producer
    /// backs off while the queue is more than half full, so the figure is the writer's, with nothing dropped.
    public static func run(directory: String, records: Int, settings: AuditSettings) throws -> Result {
        let log = try AuditLog(directory: directory, settings: settings)
        let reasons = ["origin_not_allowed", "certificate_revoked", "no_matching_rule", "certificate_expired"]
        // What a gateway already holds for each device (its certificate's facts), made before the clock starts.
        let devices = (0..<1000).map { device in
            (identity: "device-\(String(format: "%05d", device))",
             subject: "CN=device-\(String(format: "%05d", device)),O=Fleet",
             sans: ["spiffe://fleet.example/device/\(device)"],
             serial: String(format: "%032x", device),
             fingerprint: String(repeating: String(format: "%02x", device % 256), count: 32),
             address: "10.0.\(device / 250).\(device % 250 + 1)")
        }
        let cpuBefore = cpuSeconds()
        let start = ContinuousClock.now
        for index in 0..<records {
            if index % 1024 == 0 {
                while log.statistics().queueDepth > settings.queueCapacity / 2 { usleep(200) }
            }
            let device = index % 1000
            var record: AuditRecord
            if index % 10 == 9 {
                record = AuditRecord(
                    event: "http_refused", decision: "deny", reason: reasons[(index / 10) % reasons.count],
                    detail: "refused by the benchmark's rule set for device \(device)")
                record.status = 403
            } else if index % 2 == 0 {
                record = AuditRecord(event: "session_opened", decision: "allow", reason: "admitted")
                record.rule = "fleet-telemetry"
            } else {
                record = AuditRecord(event: "session_closed")
                record.closeCode = 1000
                record.durationMs = 60_000
                record.messagesIn = 120
                record.messagesOut = 4
                record.bytesIn = 7_680
                record.bytesOut = 256
            }
            let facts = devices[device]
            record.identity = facts.identity
            record.peer = "\(facts.address):\(40_000 + index % 20_000)"
            record.path = "/v1/messages"
            record.session = String(UInt64(index) &* 0x9E37_79B9_7F4A_7C15, radix: 16)
            record.subject = facts.subject
            record.sans = facts.sans
            record.serial = facts.serial
            record.fingerprint = facts.fingerprint
            record.tlsVersion = "TLSv1.3"
            log.record(record)
        }
        log.flush()
        let seconds = Double((ContinuousClock.now - start) / .microseconds(1)) / 1e6
        let dropped = log.statistics().dropped
        log.close()
        let cpu = cpuSeconds() - cpuBefore
        let segments = AuditDirectory(path: directory).segments()
        let bytes = segments.reduce(0) { total, path in
            total + ((try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0)
        }
        return Result(
            records: records, seconds: seconds, recordsPerSecond: Double(records) / seconds,
            recordsPerCPUSecond: Double(records) / cpu, dropped: dropped, segments: segments.count, bytes: bytes,
            fsync: settings.fsync.rawValue)
    }

    private static func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }
}
