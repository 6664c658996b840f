import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// When the writer makes written records durable with fsync.
public enum AuditFsyncPolicy: String, Sendable, CaseIterable {
    /// After every write: a record is on disk before the writer takes the next batch.
    case always
    /// Group commit: when the oldest unsynced record is ``AuditSettings/fsyncInterval`` old or
    /// ``AuditSettings/fsyncRecords`` records are unsynced, whichever comes first.
    case batch
    /// Left to the operating system, except at rotation, at checkpoints and on close.
    case never
}

/// How the audit log writes, rotates and signs. The defaults are what `serve` uses.
public struct AuditSettings: Sendable, Equatable {
    public var fsync: AuditFsyncPolicy = .batch
    public var fsyncInterval: Duration = .milliseconds(10)
    public var fsyncRecords = 1_000
    /// Records held in memory at most; more are dropped (and the loss audited).
    public var queueCapacity = 65_536
    /// The active segment is closed once it is this large...
    public var segmentMaxBytes = 64 << 20
    /// ...or once its first record is this old.
    public var segmentMaxAge: Duration = .seconds(24 * 3600)
    /// A signed checkpoint is written at least this often while records are being written...
    public var checkpointInterval: Duration = .seconds(60)
    /// ...and after this many records, and when the log is closed.
    public var checkpointRecords = 10_000

    public init() {}
}

/// The writer's health, reported as it changes (on a serial queue of its own, never on the caller's thread).
public enum AuditHealthChange: Sendable, Equatable {
    /// Records can no longer be written (`reason`: `audit_queue_full` or `audit_write_failed`).
    case failing(reason: String, detail: String)
    /// Writing works again; `dropped` records were lost meanwhile.
    case recovered(reason: String, dropped: Int)
}

/// A snapshot of the writer for metrics and tests.
public struct AuditStatistics: Sendable {
    public var queueDepth: Int
    public var written: UInt64
    public var dropped: Int
    /// Why records cannot be written right now, if they cannot.
    public var failure: String?
    /// Seconds from queueing the oldest record of the last batch to its write.
    public var lastWriteLatency: Double
}

/// The append-only, hash-chained audit log of one audit directory (see ``AuditDirectory`` for its files and
/// ``AuditChain`` for the line format).
///
/// `record(_:)` only appends to a bounded in-memory queue and returns, so callers on an event loop never block
/// on the disk. A dedicated writer thread stamps, numbers, seals and appends each batch, fsyncs by the
/// ``AuditFsyncPolicy``, rotates segments and writes signed checkpoints. When the queue overflows or the disk
/// refuses a write, the log is *failing* (``isFailing``): records that do not fit are dropped and counted, a
/// failed batch is kept and retried every second, and once writing works again an `audit_recovered` record says
/// what was lost.
///
/// Several processes append to the same log (the gateway, and `portcullis pki` run by an admin): each batch is
/// appended under an exclusive lock of `audit.lock` and continues the chain from whatever is on disk.
public final class AuditLog: @unchecked Sendable {
    public let directory: String
    public let layout: AuditDirectory
    public let settings: AuditSettings
    /// The active segment.
    public var path: String { layout.activeSegment }

    private let failing = Atomic<Bool>(false)
    private let onHealthChange: (@Sendable (AuditHealthChange) -> Void)?
    private let notifications = DispatchQueue(label: "portcullis-audit-health")

    // Guarded by `condition`.
    private let condition = NSCondition()
    /// Records waiting for the writer, each with the time it was queued (formatted by the writer: formatting
    /// a date costs more than queuing the record, and the caller may be an event loop).
    private var pending: [Entry] = []
    private var enqueued: UInt64 = 0
    /// Callers' records written (and fsync'd, as the policy says), or given up on.
    private var durable: UInt64 = 0
    private var syncRequested = false
    private var droppedSinceLook = 0
    private var droppedTotal = 0
    private var writtenTotal: UInt64 = 0
    private var lastWriteLatency = 0.0
    private var stopping = false
    private var failure: (reason: String, detail: String, since: Date)?
    /// The last write error while it persists; `flush()` returns it instead of waiting forever.
    private var writeError: String?

    // The writer's own state: touched only by the writer thread (and by `init` before it starts).
    private let lockFD: Int32
    private var segmentFD: Int32 = -1
    private var segmentIdentity: (device: UInt64, inode: UInt64)?
    private var knownSize: off_t = -1
    private var headSeq: UInt64 = 0
    private var headHash = Array(AuditChain.genesis.utf8)
    private var segmentFirstSeq: UInt64 = 1
    private var segmentStartedAt: Date?
    private var uncheckpointed = 0
    private var lastCheckpointAt = ContinuousClock.now
    /// When `checkpoint.json` was last signed.
    private var lastLatestAt = ContinuousClock.now
    private let signer: CheckpointSigner?
    /// Records about the log itself (a repaired tail) to write before the next batch.
    private var notes: [Entry] = []
    private var lineBuffer: [UInt8] = []
    private var batchBuffer: [UInt8] = []
    private var timeBuffer: [UInt8] = []
    private var stamper = AuditTime.Stamper()

    /// A record and the time it is stamped with.
    typealias Entry = (record: AuditRecord, queuedAt: Date)

    private var thread: Thread?
    private let finished = DispatchSemaphore(value: 0)

    /// Opens (creating when needed) the log in `directory`, repairing a torn final line and continuing the chain.
    ///
    /// - Parameter onHealthChange: told when writing starts failing and when it recovers.
    public init(
        directory: String, settings: AuditSettings = AuditSettings(),
        onHealthChange: (@Sendable (AuditHealthChange) -> Void)? = nil
    ) throws {
        self.directory = directory
        self.layout = AuditDirectory(path: directory)
        self.settings = settings
        self.onHealthChange = onHealthChange
        try FileManager.default.createDirectory(
            atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
        lockFD = open(layout.lockFile, O_RDWR | O_CREAT | O_CLOEXEC, 0o640)
        guard lockFD >= 0 else {
            throw AuditFileError("cannot open \(layout.lockFile): \(String(cString: strerror(errno)))")
        }
        do {
            signer = try CheckpointSigner.loadOrCreate(in: layout)
        } catch {
            // A writer that cannot read the key (another user's gateway owns it) still chains its records; the
            // owner's next checkpoint covers them.
            signer = nil
            FileHandle.standardError.write(Data("portcullis: audit checkpoints disabled: \(error)\n".utf8))
        }
        // Open, repair and find the chain's head now, so that a log that cannot be written fails at start.
        if let error = withLock({ openSegmentIfChanged() }) {
            Glibc.close(lockFD)
            throw AuditFileError("cannot open \(layout.activeSegment): \(error)")
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
        if segmentFD >= 0 { Glibc.close(segmentFD) }
        Glibc.close(lockFD)
    }

    /// Whether records are being lost right now (queue full, or the disk refusing writes). Cheap: the gateway asks
    /// on every new session.
    public var isFailing: Bool { failing.load(ordering: .relaxed) }

    /// Queues `record`; never blocks on I/O. The time is taken here; the sequence number when it is written.
    public func record(_ record: AuditRecord) {
        condition.lock()
        guard !stopping else {
            condition.unlock()
            return
        }
        guard pending.count < settings.queueCapacity else {
            droppedSinceLook += 1
            droppedTotal += 1
            let first = failure == nil
            if first {
                let detail = "the audit queue is full (\(settings.queueCapacity) records): the writer cannot keep up"
                failure = ("audit_queue_full", detail, Date())
                failing.store(true, ordering: .relaxed)
                notify(.failing(reason: "audit_queue_full", detail: detail))
            }
            condition.unlock()
            return
        }
        enqueued += 1
        pending.append((record, Date()))
        // The writer only waits while the queue is empty: waking it for every record would cost a futex call each.
        if pending.count == 1 { condition.signal() }
        condition.unlock()
    }

    /// Blocks until every record queued before the call is written and synced as the policy says. Returns the
    /// write error instead when the disk refuses the records (they stay queued and are retried). Not for
    /// event-loop threads.
    @discardableResult
    public func flush() -> String? {
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
        return durable < target ? writeError : nil
    }

    /// Flushes, signs a final checkpoint and stops the writer thread, waiting for it; later records are ignored.
    /// Returns the write error when records could not be written (they are then lost, and said so on stderr).
    @discardableResult
    public func close() -> String? {
        let error = flush()
        condition.lock()
        let wasStopping = stopping
        stopping = true
        condition.broadcast()
        condition.unlock()
        if !wasStopping { finished.wait() }
        return error
    }

    public func statistics() -> AuditStatistics {
        condition.lock()
        defer { condition.unlock() }
        return AuditStatistics(
            queueDepth: pending.count, written: writtenTotal, dropped: droppedTotal, failure: failure?.detail,
            lastWriteLatency: lastWriteLatency)
    }

    private func notify(_ change: AuditHealthChange) {
        guard let onHealthChange else { return }
        notifications.async { onHealthChange(change) }
    }

    // MARK: - The writer thread

    private func run() {
        // The records of a failed write, written first (and alone) at the next attempt.
        var retry: [Entry] = []
        var batch: [Entry] = []
        var retryCount: UInt64 = 0
        var retryAt = ContinuousClock.now
        // Callers' records written since the last fsync, and when the first of them was.
        var unsynced: UInt64 = 0
        var unsyncedSince = ContinuousClock.now
        // Records dropped since the log started failing.
        var lost = 0
        // The last write failed: the next attempt waits for `retryAt`.
        var backingOff = false

        while true {
            condition.lock()
            while true {
                let now = ContinuousClock.now
                var deadline: ContinuousClock.Instant?
                func due(_ instant: ContinuousClock.Instant) -> Bool {
                    deadline = deadline.map { min($0, instant) } ?? instant
                    return now >= instant
                }
                if stopping { break }
                if backingOff {
                    if due(retryAt) { break }
                } else if !pending.isEmpty || failure != nil {
                    break
                }
                if unsynced > 0, syncRequested || due(unsyncedSince.advanced(by: settings.fsyncInterval)) { break }
                if uncheckpointed > 0, signer != nil, due(lastCheckpointAt.advanced(by: settings.checkpointInterval)) {
                    break
                }
                if uncheckpointed == 0, signer != nil, due(lastLatestAt.advanced(by: settings.checkpointInterval)) {
                    break
                }
                if let deadline {
                    _ = condition.wait(until: Date().addingTimeInterval(seconds(deadline - now)))
                } else {
                    condition.wait()
                }
            }
            let closing = stopping
            var counted: UInt64 = 0
            var oldest: Date?
            batch.removeAll(keepingCapacity: true)
            if retry.isEmpty {
                counted = UInt64(pending.count)
                oldest = pending.first?.queuedAt
                swap(&batch, &pending)
            } else {
                swap(&batch, &retry)
                counted = retryCount
            }
            let droppedNow = droppedSinceLook
            droppedSinceLook = 0
            lost += droppedNow
            let failed = failure
            let syncAsked = syncRequested
            let finished = closing && pending.isEmpty && retry.isEmpty && unsynced == 0 && failed == nil
                && (uncheckpointed == 0 || signer == nil) && batch.isEmpty
            condition.unlock()
            if finished {
                // Everything is signed: mark checkpoint.json closed, so that a stopped log is not taken for stale.
                _ = withLock { append([], then: nil, closing: true) }
                return
            }

            // The loss is audited once writing works again and nothing more is being dropped.
            let recovering = failed != nil && (droppedNow == 0 || closing)
            var notice: Entry?
            if let failed, recovering {
                var record = AuditRecord(
                    event: "audit_recovered", reason: failed.reason,
                    detail: "audit records could not be written from \(AuditTime.format(failed.since)): \(failed.detail); "
                        + "\(lost) records were lost")
                record.dropped = lost
                notice = (record, Date())
            }
            if unsynced == 0 { unsyncedSince = .now }
            let error = withLock { append(batch, then: notice, closing: closing) }

            if let error {
                condition.lock()
                writeError = error
                if failure == nil {
                    failure = ("audit_write_failed", error, Date())
                    failing.store(true, ordering: .relaxed)
                    notify(.failing(reason: "audit_write_failed", detail: error))
                    FileHandle.standardError.write(Data("portcullis: audit log write failed: \(error)\n".utf8))
                }
                if closing {
                    // Nothing will retry them: say what is lost rather than hang the shutdown.
                    FileHandle.standardError.write(Data(
                        "portcullis: \(counted) audit records could not be written and are lost: \(error)\n".utf8))
                    durable += counted
                    condition.broadcast()
                    condition.unlock()
                    return
                }
                swap(&retry, &batch)
                retryCount = counted
                backingOff = true
                retryAt = .now.advanced(by: .seconds(1))
                condition.broadcast()
                condition.unlock()
                continue
            }
            retryCount = 0
            backingOff = false
            unsynced += counted

            let syncNow: Bool
            switch settings.fsync {
            case .always: syncNow = true
            case .never: syncNow = false
            case .batch:
                syncNow = syncAsked || closing || unsynced >= UInt64(settings.fsyncRecords)
                    || ContinuousClock.now >= unsyncedSince.advanced(by: settings.fsyncInterval)
            }
            var syncError: String?
            if syncNow, segmentFD >= 0, fsync(segmentFD) != 0 { syncError = String(cString: strerror(errno)) }

            condition.lock()
            writtenTotal += counted
            if let oldest { lastWriteLatency = Date().timeIntervalSince(oldest) }
            if syncNow || settings.fsync == .never {
                syncRequested = false
                durable += unsynced
                unsynced = 0
            }
            if recovering, let failed {
                failure = nil
                writeError = nil
                failing.store(false, ordering: .relaxed)
                notify(.recovered(reason: failed.reason, dropped: lost))
                lost = 0
            }
            if let syncError, failure == nil {
                // The records may not be on disk; they cannot be written again, but the failure is audited.
                failure = ("audit_write_failed", "fsync: \(syncError)", Date())
                failing.store(true, ordering: .relaxed)
                notify(.failing(reason: "audit_write_failed", detail: "fsync: \(syncError)"))
            }
            condition.broadcast()
            condition.unlock()
        }
    }

    private func withLock(_ body: () -> String?) -> String? {
        while flock(lockFD, LOCK_EX) != 0 {
            if errno != EINTR { return "cannot lock \(layout.lockFile): \(String(cString: strerror(errno)))" }
        }
        defer { flock(lockFD, LOCK_UN) }
        return body()
    }

    /// Signs the head of the log (an `audit_checkpoint` record: only called with nothing unsigned after it)
    /// into `checkpoint.json`. Under the lock.
    private func writeLatestCheckpoint(closed: Bool) {
        guard let signer else { return }
        let time = AuditTime.format(Date())
        var checkpoint = Checkpoint(
            seq: headSeq, hash: String(decoding: headHash, as: UTF8.self), time: time, key: signer.keyID, signature: "",
            closed: closed ? true : nil)
        do {
            checkpoint.signature = try signer.sign(kind: checkpoint.kind, seq: headSeq, hash: headHash, time: time)
            try checkpoint.write(to: layout)
            lastLatestAt = .now
        } catch {
            FileHandle.standardError.write(Data("portcullis: \(error)\n".utf8))
        }
    }

    /// Numbers, seals and appends `records` (after any notes about the log itself), rotating first when the
    /// segment is due and adding a signed checkpoint when one is due. Under the lock. On failure nothing of the
    /// batch stays in the file.
    private func append(_ entries: [Entry], then notice: Entry?, closing: Bool) -> String? {
        if let error = openSegmentIfChanged() { return error }
        let now = Date()
        if knownSize > 0,
            knownSize >= settings.segmentMaxBytes
                || segmentStartedAt.map({ now.timeIntervalSince($0) >= seconds(settings.segmentMaxAge) }) == true
        {
            if let error = rotate() { return error }
        }
        let count = notes.count + entries.count + (notice == nil ? 0 : 1)
        let total = uncheckpointed + count
        let checkpointDue = signer != nil && total > 0
            && (closing || total >= settings.checkpointRecords
                || ContinuousClock.now >= lastCheckpointAt.advanced(by: settings.checkpointInterval))
        guard count > 0 || checkpointDue else {
            // Nothing to write. checkpoint.json is still re-signed with a fresh time every checkpoint interval
            // (and marked closed at the end), so that an old copy put back in its place is seen as stale.
            if closing || ContinuousClock.now >= lastLatestAt.advanced(by: settings.checkpointInterval) {
                if uncheckpointed == 0, headSeq > 0 { writeLatestCheckpoint(closed: closing) }
                // Even when nothing was signed (or writing failed): the writer must not wake for it at once again.
                lastLatestAt = .now
            }
            return nil
        }

        batchBuffer.removeAll(keepingCapacity: true)
        var seq = headSeq
        var hash = headHash
        func add(_ entry: Entry) {
            seq += 1
            stamper.format(entry.queuedAt, into: &timeBuffer)
            lineBuffer.removeAll(keepingCapacity: true)
            entry.record.encodeBody(into: &lineBuffer, seq: seq, time: timeBuffer)
            hash = AuditChain.seal(&lineBuffer, prev: hash)
            batchBuffer.append(contentsOf: lineBuffer)
            batchBuffer.append(0x0A)
        }
        notes.forEach(add)
        entries.forEach(add)
        if let notice { add(notice) }
        var checkpointed = false
        if checkpointDue, let signer {
            do {
                // The record's own time is signed with it: the verifier reads it back from the line.
                stamper.format(now, into: &timeBuffer)
                let time = String(decoding: timeBuffer, as: UTF8.self)
                var record = AuditRecord(event: "audit_checkpoint", detail: "signs the log up to seq \(seq)")
                record.key = signer.keyID
                record.signature = try signer.sign(kind: "record", seq: seq, hash: hash, time: time)
                add((record, now))
                checkpointed = true
            } catch {
                FileHandle.standardError.write(Data("portcullis: cannot sign an audit checkpoint: \(error)\n".utf8))
            }
        }
        if let error = writeAll(segmentFD, batchBuffer) {
            // A partial batch would leave a torn line in the middle of the log: take it back.
            if knownSize >= 0 { _ = ftruncate(segmentFD, knownSize) }
            knownSize = -1
            return error
        }
        knownSize += off_t(batchBuffer.count)
        headSeq = seq
        headHash = hash
        notes = []
        if segmentStartedAt == nil { segmentStartedAt = now }
        if checkpointed {
            // checkpoint.json must never name a record that a crash could still take away. The batch itself is
            // written: returning an error here would have it retried, and appended a second time.
            if fsync(segmentFD) != 0 {
                FileHandle.standardError.write(Data(
                    "portcullis: \(layout.latestCheckpoint) not updated: fsync: \(String(cString: strerror(errno)))\n".utf8))
            } else {
                writeLatestCheckpoint(closed: closing)
            }
            uncheckpointed = 0
            lastCheckpointAt = .now
        } else {
            uncheckpointed = total
        }
        return nil
    }

    /// Re-reads the chain's head when the active segment is not exactly as this writer left it (another process
    /// appended or rotated, a crash tore the last line, or this is the first write), repairing a torn tail.
    private func openSegmentIfChanged() -> String? {
        var status = stat()
        let exists = stat(layout.activeSegment, &status) == 0
        let identity = (device: UInt64(status.st_dev), inode: UInt64(status.st_ino))
        if segmentFD >= 0, exists, segmentIdentity.map({ $0 == identity }) == true, status.st_size == knownSize {
            return nil
        }
        if segmentFD < 0 || !exists || segmentIdentity.map({ $0 == identity }) != true {
            if segmentFD >= 0 { Glibc.close(segmentFD) }
            segmentFD = open(layout.activeSegment, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
            guard segmentFD >= 0 else { return String(cString: strerror(errno)) }
            guard fstat(segmentFD, &status) == 0 else { return String(cString: strerror(errno)) }
            segmentIdentity = (UInt64(status.st_dev), UInt64(status.st_ino))
        } else if fstat(segmentFD, &status) != 0 {
            return String(cString: strerror(errno))
        }
        knownSize = status.st_size
        repairTornTail()
        if let head = layout.head() {
            (headSeq, headHash) = head
        } else {
            (headSeq, headHash) = (0, Array(AuditChain.genesis.utf8))
        }
        if let first = layout.firstRecord(in: layout.activeSegment) {
            segmentFirstSeq = first.seq
            segmentStartedAt = first.time ?? Date()
        } else {
            segmentFirstSeq = headSeq + 1
            segmentStartedAt = nil
        }
        return nil
    }

    /// A crash in the middle of an append can leave a final line without its newline. It was never reported as
    /// written, so it is cut off, and a note records what was removed.
    private func repairTornTail() {
        guard knownSize > 0 else { return }
        var last: UInt8 = 0
        guard pread(segmentFD, &last, 1, knownSize - 1) == 1, last != 0x0A else { return }
        // Find the last newline, reading backwards.
        var end = knownSize
        var keep: off_t = 0
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        search: while end > 0 {
            let start = max(0, end - off_t(chunk.count))
            let count = Int(end - start)
            let read = chunk.withUnsafeMutableBytes { pread(segmentFD, $0.baseAddress, count, start) }
            guard read == count else { return }
            for index in stride(from: count - 1, through: 0, by: -1) where chunk[index] == 0x0A {
                keep = start + off_t(index) + 1
                break search
            }
            end = start
        }
        let tornLength = Int(knownSize - keep)
        var torn = [UInt8](repeating: 0, count: min(tornLength, 512))
        _ = torn.withUnsafeMutableBytes { pread(segmentFD, $0.baseAddress, $0.count, keep) }
        guard ftruncate(segmentFD, keep) == 0 else { return }
        knownSize = keep
        let note = AuditRecord(
            event: "audit_repaired", reason: "torn_final_line",
            detail: "removed a torn final line of \(tornLength) bytes at offset \(keep) of "
                + "\((layout.activeSegment as NSString).lastPathComponent), left by a write a crash interrupted; "
                + "it began: \(String(decoding: torn.prefix(200), as: UTF8.self))")
        notes.append((note, Date()))
    }

    /// Closes the active segment under its first sequence number and starts a new one; the chain carries on.
    private func rotate() -> String? {
        guard fsync(segmentFD) == 0 else { return String(cString: strerror(errno)) }
        let closed = layout.closedSegment(firstSeq: segmentFirstSeq)
        guard !FileManager.default.fileExists(atPath: closed) else { return "cannot rotate: \(closed) exists" }
        guard rename(layout.activeSegment, closed) == 0 else { return String(cString: strerror(errno)) }
        syncDirectory(directory)
        Glibc.close(segmentFD)
        segmentFD = -1
        segmentIdentity = nil
        knownSize = -1
        // Reopening creates the new active segment and finds the head in the closed one.
        return openSegmentIfChanged()
    }

    private func seconds(_ duration: Duration) -> Double {
        Double(duration / .microseconds(1)) / 1e6
    }

    /// Reads every complete record of one segment file; for tests.
    public static func read(path: String) throws -> [AuditRecord] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let decoder = JSONDecoder()
        return data.split(separator: 0x0A).compactMap { try? decoder.decode(AuditRecord.self, from: Data($0)) }
    }

    /// Reads every complete record of every segment of `directory`, in order; for tests.
    public static func readAll(directory: String) throws -> [AuditRecord] {
        try AuditDirectory(path: directory).segments().flatMap { try read(path: $0) }
    }
}
