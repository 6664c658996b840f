import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The append-only audit log: JSON Lines in `<directory>/audit.jsonl`.
///
/// `record(_:)` only appends to an in-memory queue and returns; a dedicated writer thread encodes and writes
/// each batch at once and fsyncs at most every ``syncInterval`` (group commit), so callers on an event loop
/// never block on the disk. The queue is bounded: when it
/// is full the record is counted as dropped (and the count is itself audited once the queue drains).
///
/// Several processes append to the same log (the gateway, and `portcullis pki` run by an admin): each batch
/// is written under an exclusive `flock` of the file, and numbered after the last record on disk.
public final class AuditLog: @unchecked Sendable {
    public let directory: String
    public let path: String
    /// Records held in memory at most before new ones are dropped.
    public let capacity: Int
    /// How long a record may sit written but not yet fsync'd: an operating-system crash or power loss can lose
    /// at most the records of this last interval (a crash of the process itself loses none that were written).
    /// Zero fsyncs every write.
    public let syncInterval: Duration

    // Guarded by `condition`.
    private let condition = NSCondition()
    /// Records waiting for the writer, each with the time it was queued (formatted by the writer: formatting
    /// a date costs more than queuing the record, and the caller may be an event loop).
    private var pending: [(record: AuditRecord, queuedAt: Date)] = []
    private var enqueued: UInt64 = 0
    /// Records written and fsync'd.
    private var durable: UInt64 = 0
    /// `flush()` is waiting: fsync now rather than at the end of the interval.
    private var syncRequested = false
    private var dropped = 0
    private var stopping = false
    private var writeError: String?

    private let fd: Int32
    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)

    /// Opens (creating when needed) the log in `directory`, continuing its sequence numbers.
    public init(directory: String, capacity: Int = 65_536, syncInterval: Duration = .milliseconds(10)) throws {
        self.directory = directory
        self.syncInterval = syncInterval
        self.path = "\(directory)/audit.jsonl"
        self.capacity = capacity
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path])
        }
        // The thread holds the log until `close()` stops it, so records queued just before never outlive it.
        let thread = Thread { [self] in
            self.run()
            self.finished.signal()
        }
        thread.name = "portcullis-audit"
        self.thread = thread
        thread.start()
    }

    deinit {
        Glibc.close(fd)
    }

    /// Queues `record`; never blocks on I/O. The time is taken here; the sequence number when it is written.
    public func record(_ record: AuditRecord) {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { return }
        guard pending.count < capacity else {
            dropped += 1
            return
        }
        enqueued += 1
        pending.append((record, Date()))
        condition.signal()
    }

    /// Blocks until every record queued before the call is on disk (written and fsync'd). Not for event-loop
    /// threads.
    public func flush() {
        condition.lock()
        defer { condition.unlock() }
        let target = enqueued
        if durable < target {
            syncRequested = true
            condition.broadcast()
        }
        while durable < target && writeError == nil {
            condition.wait()
        }
    }

    /// Flushes and stops the writer thread, waiting for it to finish; later records are ignored.
    public func close() {
        flush()
        condition.lock()
        let wasStopping = stopping
        stopping = true
        condition.broadcast()
        condition.unlock()
        if !wasStopping { finished.wait() }
    }

    /// The writer: appends whatever is queued as soon as it is queued, and fsyncs once the oldest record not
    /// yet synced is `syncInterval` old (group commit), when `flush()` asks, or when stopping.
    private func run() {
        // Records appended to the file since the last fsync, and when the first of them was.
        var unsynced: UInt64 = 0
        var unsyncedSince = ContinuousClock.now
        while true {
            condition.lock()
            while pending.isEmpty && dropped == 0 && !stopping {
                guard unsynced > 0 else {
                    condition.wait()
                    continue
                }
                let due = unsyncedSince.advanced(by: syncInterval)
                let now = ContinuousClock.now
                if syncRequested || now >= due { break }
                _ = condition.wait(until: Date().addingTimeInterval(Double((due - now) / .microseconds(1)) / 1e6))
            }
            if pending.isEmpty && stopping && unsynced == 0 {
                condition.unlock()
                return
            }
            let queued = pending
            let counted = UInt64(queued.count)
            pending.removeAll(keepingCapacity: true)
            let droppedNow = dropped
            dropped = 0
            condition.unlock()

            var error: String?
            if !queued.isEmpty || droppedNow > 0 {
                var batch = queued.map { entry in
                    var record = entry.record
                    record.time = Self.timestamp(entry.queuedAt)
                    return record
                }
                if droppedNow > 0 {
                    var notice = AuditRecord(
                        event: "audit_overflow", reason: "audit_queue_full",
                        detail: "\(droppedNow) records were dropped because the audit queue was full")
                    notice.time = Self.timestamp(Date())
                    batch.append(notice)
                }
                if unsynced == 0 { unsyncedSince = .now }
                error = append(&batch)
                unsynced += counted
            }

            condition.lock()
            let syncNow = syncRequested || stopping || ContinuousClock.now >= unsyncedSince.advanced(by: syncInterval)
            if syncNow { syncRequested = false }
            condition.unlock()
            if syncNow, error == nil, fsync(fd) != 0 { error = String(cString: strerror(errno)) }

            condition.lock()
            if let error {
                writeError = error
                FileHandle.standardError.write(Data("portcullis: audit log write failed: \(error)\n".utf8))
            }
            // A failed write counts as done, so that `flush()` returns (and reports nothing more to wait for).
            if syncNow || error != nil {
                durable += unsynced
                unsynced = 0
            }
            condition.broadcast()
            condition.unlock()
        }
    }

    /// Size of the file after our last append; another process appended when it differs.
    private var knownSize: off_t = -1
    private var lastSeq: UInt64 = 0

    /// Numbers and appends `batch` under the file lock, continuing the sequence of whatever is on disk.
    private func append(_ batch: inout [AuditRecord]) -> String? {
        while flock(fd, LOCK_EX) != 0 {
            if errno != EINTR { return String(cString: strerror(errno)) }
        }
        defer { flock(fd, LOCK_UN) }
        var status = stat()
        if fstat(fd, &status) == 0, status.st_size != knownSize {
            lastSeq = Self.lastSequence(in: path)
        }
        var text = ""
        for index in batch.indices {
            lastSeq += 1
            batch[index].seq = lastSeq
            text += batch[index].jsonLine()
            text += "\n"
        }
        let error = writeAll(Array(text.utf8))
        knownSize = fstat(fd, &status) == 0 ? status.st_size : -1
        return error
    }

    private func writeAll(_ bytes: [UInt8]) -> String? {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written < 0 {
                if errno == EINTR { continue }
                return String(cString: strerror(errno))
            }
            offset += written
        }
        return nil
    }

    static func timestamp(_ date: Date) -> String {
        date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
    }

    /// The `seq` of the last complete line of an existing log, or 0.
    static func lastSequence(in path: String) -> UInt64 {
        guard let handle = FileHandle(forReadingAtPath: path) else { return 0 }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        let window: UInt64 = min(size, 64 * 1024)
        try? handle.seek(toOffset: size - window)
        guard let data = try? handle.readToEnd() else { return 0 }
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n")
        for line in lines.reversed() {
            if let record = try? JSONDecoder().decode(AuditRecord.self, from: Data(line.utf8)) {
                return record.seq
            }
        }
        return 0
    }

    /// Reads every complete record of a log file; for tests and (later) `portcullis audit`.
    public static func read(path: String) throws -> [AuditRecord] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let decoder = JSONDecoder()
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap {
            try? decoder.decode(AuditRecord.self, from: Data($0.utf8))
        }
    }
}
