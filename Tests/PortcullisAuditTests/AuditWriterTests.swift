import Foundation
@testable import PortcullisAudit
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Health changes as the log reports them.
final class HealthChanges: Sendable {
    private let changes = Mutex<[AuditHealthChange]>([])
    func add(_ change: AuditHealthChange) { changes.withLock { $0.append(change) } }
    var all: [AuditHealthChange] { changes.withLock { $0 } }
}

/// Waits up to `timeout` seconds for `condition`.
func eventually(timeout: Double = 10, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        Thread.sleep(forTimeInterval: 0.02)
    }
    return try condition()
}

@Suite("Audit log writer")
struct AuditWriterTests {
    @Test("Every fsync policy writes a complete, verifiable log and flush() returns", arguments: AuditFsyncPolicy.allCases)
    func fsyncPolicies(_ policy: AuditFsyncPolicy) throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        var settings = AuditSettings()
        settings.fsync = policy
        settings.fsyncRecords = 10
        let log = try AuditLog(directory: audit.path, settings: settings)
        for index in 0..<100 { log.record(ScratchAudit.sample(index)) }
        #expect(log.flush() == nil)
        // Flushed means written: another reader sees every record before close().
        #expect(try AuditLog.read(path: audit.active).filter { $0.event == "session_opened" }.count == 100)
        log.close()
        #expect(try audit.verify().problem == nil)
    }

    @Test("A full queue drops and counts, the log reports failing, and the recovery is audited with the loss")
    func overflow() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        var settings = AuditSettings()
        settings.queueCapacity = 16
        let changes = HealthChanges()
        let log = try AuditLog(directory: audit.path, settings: settings) { changes.add($0) }
        // Another writer (a stuck `pki` command, say) holds the log's lock: this writer cannot append.
        let holder = open(audit.layout.lockFile, O_RDWR | O_CLOEXEC)
        #expect(flock(holder, LOCK_EX) == 0)
        for index in 0..<200 { log.record(ScratchAudit.sample(index)) }
        #expect(log.isFailing)
        let dropped = log.statistics().dropped
        #expect(dropped >= 200 - 2 * 16)
        #expect(eventually { changes.all.first == .failing(reason: "audit_queue_full", detail: "the audit queue is full (16 records): the writer cannot keep up") })

        flock(holder, LOCK_UN)
        close(holder)
        #expect(eventually { !log.isFailing })
        log.close()
        let records = try AuditLog.readAll(directory: audit.path)
        #expect(records.filter { $0.event == "session_opened" }.count == 200 - dropped)
        let recovered = try #require(records.first { $0.event == "audit_recovered" })
        #expect(recovered.reason == "audit_queue_full")
        #expect(recovered.dropped == dropped)
        #expect(recovered.detail?.contains("\(dropped) records were lost") == true)
        #expect(eventually { changes.all.last == .recovered(reason: "audit_queue_full", dropped: dropped) })
        #expect(try audit.verify().problem == nil)
    }

    @Test("A disk that refuses writes: nothing half-written, flush() reports it, the batch is retried and nothing is lost")
    func diskFull() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        let changes = HealthChanges()
        let log = try AuditLog(directory: audit.path) { changes.add($0) }
        for index in 0..<5 { log.record(ScratchAudit.sample(index)) }
        #expect(log.flush() == nil)
        // The active segment now leads to /dev/full, where every write fails with ENOSPC.
        let aside = "\(audit.path)/aside.jsonl"
        #expect(rename(audit.active, aside) == 0)
        #expect(symlink("/dev/full", audit.active) == 0)
        for index in 5..<20 { log.record(ScratchAudit.sample(index)) }
        let error = log.flush()
        #expect(error == "No space left on device")
        #expect(log.isFailing)
        // Health changes are told on a queue of their own, a moment later.
        #expect(eventually { changes.all.first == .failing(reason: "audit_write_failed", detail: "No space left on device") })

        // Space again: the records kept in memory are written on the next retry (at most a second away).
        #expect(unlink(audit.active) == 0)
        #expect(rename(aside, audit.active) == 0)
        #expect(eventually { !log.isFailing })
        log.close()
        let records = try AuditLog.readAll(directory: audit.path)
        #expect(records.filter { $0.event == "session_opened" }.map(\.identity) == (0..<20).map { "device-\($0)" })
        let recovered = try #require(records.first { $0.event == "audit_recovered" })
        #expect(recovered.reason == "audit_write_failed" && recovered.dropped == 0)
        #expect(eventually { changes.all.last == .recovered(reason: "audit_write_failed", dropped: 0) })
        #expect(try audit.verify().problem == nil)
    }

    @Test("Closing while the disk refuses writes gives up with the error instead of hanging the shutdown", .timeLimit(.minutes(1)))
    func closeWhileDiskFull() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        let log = try AuditLog(directory: audit.path)
        log.record(ScratchAudit.sample(0))
        #expect(log.flush() == nil)
        #expect(rename(audit.active, "\(audit.path)/aside.jsonl") == 0)
        #expect(symlink("/dev/full", audit.active) == 0)
        log.record(ScratchAudit.sample(1))
        #expect(log.close() == "No space left on device")
        log.record(ScratchAudit.sample(2))  // ignored once closed, not queued forever
        #expect(log.statistics().queueDepth == 0)
    }

    @Test("Records written by another process are chained onto, not overwritten, and seq continues")
    func continuesAnotherWritersChain() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        let log = try AuditLog(directory: audit.path)
        log.record(ScratchAudit.sample(0))
        log.flush()
        try audit.write(2, from: 1)  // another writer in between
        log.record(ScratchAudit.sample(3))
        log.close()
        let identities = try AuditLog.readAll(directory: audit.path).compactMap(\.identity)
        #expect(identities == ["device-0", "device-1", "device-2", "device-3"])
        #expect(try audit.verify().problem == nil)
    }
}

@Suite("Audit query filters")
struct AuditFilterTests {
    static let records: [AuditRecord] = {
        func make(_ event: String, _ decision: String?, _ reason: String?, identity: String?, peer: String?,
                  origin: String? = nil, path: String? = nil, serial: String? = nil) -> AuditRecord {
            var record = AuditRecord(event: event, decision: decision, reason: reason)
            record.identity = identity
            record.peer = peer
            record.origin = origin
            record.path = path
            record.serial = serial
            record.fingerprint = serial.map { String(repeating: $0, count: 4) }
            return record
        }
        return [
            make("session_opened", "allow", "admitted", identity: "device-1", peer: "10.0.0.1:4000", path: "/v1/echo", serial: "0a01"),
            make("http_refused", "deny", "origin_not_allowed", identity: "device-10", peer: "10.0.0.10:4001",
                 origin: "https://evil.example", path: "/v1/echo", serial: "0a10"),
            make("tls_refused", "deny", "certificate_revoked", identity: nil, peer: "[::1]:4002", serial: "0a01"),
            make("session_opened", "allow", "admitted", identity: "say \"hi\"", peer: "10.0.0.1:4003", path: "/v1/messages"),
        ]
    }()

    static func written() throws -> ScratchAudit {
        let audit = try ScratchAudit()
        let log = try AuditLog(directory: audit.path)
        records.forEach(log.record)
        log.close()
        return audit
    }

    static func matches(_ configure: (inout AuditFilter) -> Void) throws -> [UInt64] {
        let audit = try written()
        defer { audit.remove() }
        var filter = AuditFilter()
        configure(&filter)
        var seqs: [UInt64] = []
        try AuditReader(directory: audit.path).forEachLine(matching: filter) { line in
            if let record = AuditReader.decode(line), record.event != "audit_checkpoint" { seqs.append(record.seq) }
            return true
        }
        return seqs
    }

    @Test("Each field filter matches exactly, any value within a field, every field given")
    func fieldFilters() throws {
        #expect(try Self.matches { $0.require("identity", anyOf: ["device-1"]) } == [1])  // not device-10
        #expect(try Self.matches { $0.require("identity", anyOf: ["say \"hi\""]) } == [4])
        #expect(try Self.matches { $0.require("identity", anyOf: ["device-1", "device-10"]) } == [1, 2])
        #expect(try Self.matches { $0.require("serial", anyOf: ["0a01"]) } == [1, 3])
        #expect(try Self.matches { $0.require("fingerprint", anyOf: ["0a100a100a100a10"]) } == [2])
        #expect(try Self.matches { $0.require("event", anyOf: ["session_opened"]) } == [1, 4])
        #expect(try Self.matches { $0.require("decision", anyOf: ["deny"]) } == [2, 3])
        #expect(try Self.matches { $0.require("reason", anyOf: ["certificate_revoked"]) } == [3])
        #expect(try Self.matches { $0.require("origin", anyOf: ["https://evil.example"]) } == [2])
        #expect(try Self.matches { $0.require("path", anyOf: ["/v1/echo"]) } == [1, 2])
        #expect(try Self.matches { $0.require("serial", anyOf: ["0a01"]); $0.require("decision", anyOf: ["deny"]) } == [3])
        #expect(try Self.matches { $0.require("identity", anyOf: ["nobody"]) } == [])
    }

    @Test("Peers match with their port, or by address alone, IPv6 with or without brackets")
    func peerFilter() throws {
        #expect(try Self.matches { $0.requirePeer(anyOf: ["10.0.0.1"]) } == [1, 4])
        #expect(try Self.matches { $0.requirePeer(anyOf: ["10.0.0.1:4003"]) } == [4])
        #expect(try Self.matches { $0.requirePeer(anyOf: ["::1"]) } == [3])
        #expect(try Self.matches { $0.requirePeer(anyOf: ["[::1]"]) } == [3])
        #expect(try Self.matches { $0.requirePeer(anyOf: ["[::1]:4002"]) } == [3])
    }

    @Test("--since is inclusive and --until exclusive, and segments wholly outside the range are skipped")
    func timeRange() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        var settings = AuditSettings()
        settings.segmentMaxAge = .milliseconds(50)
        try audit.write(2, settings: settings)
        Thread.sleep(forTimeInterval: 0.1)
        let boundary = AuditTime.format(Date())
        Thread.sleep(forTimeInterval: 0.01)
        try audit.write(2, settings: settings, from: 2)
        #expect(audit.layout.segments().count == 2)
        func identities(since: String?, until: String?) throws -> [String] {
            var filter = AuditFilter()
            filter.since = since
            filter.until = until
            var found: [String] = []
            try AuditReader(directory: audit.path).forEachLine(matching: filter) { line in
                if let identity = AuditReader.decode(line)?.identity { found.append(identity) }
                return true
            }
            return found
        }
        #expect(try identities(since: boundary, until: nil) == ["device-2", "device-3"])
        #expect(try identities(since: nil, until: boundary) == ["device-0", "device-1"])
        #expect(try identities(since: nil, until: nil).count == 4)
    }

    @Test("Timestamps are RFC 3339 UTC with milliseconds and round-trip")
    func timestamps() throws {
        let date = Date(timeIntervalSince1970: 1_796_163_189.123_4)
        #expect(AuditTime.format(date) == "2026-12-01T22:13:09.123Z")
        let parsed = try #require(AuditTime.parse("2026-12-01T22:13:09.123Z"))
        #expect(abs(parsed.timeIntervalSince(date)) < 0.001)
        #expect(AuditTime.parse("2026-12-01T23:13:09+01:00").map(AuditTime.format) == "2026-12-01T22:13:09.000Z")
        // Beyond what RFC 3339 writes, clamped rather than trapping.
        #expect(AuditTime.format(Date(timeIntervalSince1970: -1e25)) == "0000-01-01T00:00:00.000Z")
        #expect(AuditTime.format(Date(timeIntervalSince1970: 1e25)) == "9999-12-31T23:59:59.999Z")
    }
}
