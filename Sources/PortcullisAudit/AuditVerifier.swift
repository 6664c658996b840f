import Foundation

/// What `portcullis audit verify` found.
public struct AuditVerification: Sendable {
    public var records = 0
    public var segments = 0
    public var lastSeq: UInt64 = 0
    /// The last valid checkpoint record (it and every record before it are proven unaltered), if any.
    public var signedThrough: UInt64?
    public var checkpoints = 0
    /// The key the checkpoints were checked with.
    public var keyID: String?
    /// A final line a crash left without its newline: reported, not held against the log.
    public var tornFinalLine: Location?
    /// `checkpoint.json`'s time, and whether the writer had stopped (a running writer re-signs it every
    /// checkpoint interval, so an old time on a running log means an old copy was put back).
    public var latestTime: String?
    public var latestClosed = false
    /// Checkpoints of the first format, whose time is not signed (logs written before the second).
    public var legacyCheckpoints = 0
    /// The first problem, when the log does not verify.
    public var problem: Problem?

    public struct Location: Sendable, Equatable, CustomStringConvertible {
        public var file: String
        public var line: Int
        public var description: String { "\(file):\(line)" }
    }

    public struct Problem: Sendable, Equatable, CustomStringConvertible {
        public enum Kind: String, Sendable {
            case edited, deleted, reordered, truncated, malformed
            case checkpointSignatureInvalid = "checkpoint signature invalid"
            case checkpointKeyMissing = "checkpoint key missing"
            case checkpointMissing = "checkpoint missing"
            case checkpointStale = "checkpoint stale"
        }
        public var kind: Kind
        public var location: Location?
        public var seq: UInt64?
        public var message: String
        public var description: String {
            var parts: [String] = []
            if let location { parts.append(location.description) }
            if let seq { parts.append("seq \(seq)") }
            parts.append(kind.rawValue)
            return parts.joined(separator: ": ") + ": " + message
        }
    }
}

/// Checks a whole audit directory: every line's hash, the chain from record 1 through every segment, every
/// checkpoint's signature, and `checkpoint.json` against the end of the log.
public struct AuditVerifier: Sendable {
    public let layout: AuditDirectory
    let key: CheckpointVerifier?

    /// - Parameter publicKeyPEM: the checkpoint key to trust; by default the one in the audit directory. Pass
    ///   one kept elsewhere to catch a log re-signed with a substituted key.
    public init(directory: String, publicKeyPEM: String? = nil) throws {
        layout = AuditDirectory(path: directory)
        if let publicKeyPEM {
            key = try CheckpointVerifier(publicKeyPEM: publicKeyPEM)
        } else if let text = try? String(contentsOfFile: layout.checkpointPublicKey, encoding: .utf8) {
            key = try CheckpointVerifier(publicKeyPEM: text)
        } else {
            key = nil
        }
    }

    /// - Parameters:
    ///   - maximumAge: when given, a `checkpoint.json` of a running writer older than this (or none at all) fails
    ///     as stale: the writer re-signs it every checkpoint interval, so an old one was put back, or the log
    ///     was rolled back to an earlier state.
    ///   - now: the time `maximumAge` is measured from.
    public func verify(maximumAge: TimeInterval? = nil, now: Date = Date()) throws -> AuditVerification {
        var report = AuditVerification()
        report.keyID = key?.keyID
        let segments = layout.segments()
        report.segments = segments.count
        let latest: Checkpoint?
        do {
            latest = try Checkpoint.read(from: layout)
        } catch {
            report.problem = .init(kind: .malformed, location: nil, seq: nil, message: "\(layout.latestCheckpoint) is unreadable: \(error)")
            return report
        }
        var expected: UInt64 = 1
        var prev = Array(AuditChain.genesis.utf8)
        var previousLocation: AuditVerification.Location?
        let eventNeedle = AuditChain.memberNeedle("event")
        let timeNeedle = AuditChain.memberNeedle("time")
        // The last `audit_checkpoint` record: checkpoint.json, written right after it, must cover it.
        var lastCheckpointRecord: (seq: UInt64, legacy: Bool)?
        let signatureNeedle = AuditChain.memberNeedle("signature")
        let keyNeedle = AuditChain.memberNeedle("key")

        for (segmentIndex, segment) in segments.enumerated() {
            let data = try Data(contentsOf: URL(fileURLWithPath: segment), options: .alwaysMapped)
            let name = segment
            let lastSegment = segmentIndex == segments.count - 1
            data.withUnsafeBytes { bytes in
                forEachLine(bytes) { line, number, terminated in
                    let location = AuditVerification.Location(file: name, line: number)
                    func fail(_ kind: AuditVerification.Problem.Kind, _ seq: UInt64?, _ message: String,
                              at place: AuditVerification.Location? = nil) -> Bool {
                        report.problem = .init(kind: kind, location: place ?? location, seq: seq, message: message)
                        return false
                    }
                    guard terminated else {
                        if lastSegment {
                            report.tornFinalLine = location
                            return false
                        }
                        return fail(.truncated, nil, "a closed segment ends in the middle of a line")
                    }
                    guard let link = AuditChain.link(of: line) else {
                        return fail(.malformed, nil, "not a sealed audit record (seq, prev and hash missing or malformed)")
                    }
                    guard link.intact else {
                        return fail(.edited, link.seq, "the record does not match its hash: its contents were changed")
                    }
                    if link.seq < expected {
                        return fail(.reordered, link.seq, "comes after seq \(expected - 1)")
                    }
                    if link.seq > expected {
                        if Self.occurs(seq: expected, after: line, in: bytes) {
                            return fail(.reordered, link.seq, "comes before seq \(expected)")
                        }
                        let missing = link.seq - expected == 1 ? "seq \(expected) is" : "seq \(expected)–\(link.seq - 1) are"
                        return fail(.deleted, link.seq, "\(missing) missing")
                    }
                    if link.prev != prev {
                        return fail(
                            .edited, link.seq - 1,
                            "its hash is not the one seq \(link.seq) chains to: the record was replaced and re-hashed",
                            at: previousLocation)
                    }
                    if let event = AuditChain.rawString(eventNeedle, in: line),
                        String(decoding: event, as: UTF8.self) == "audit_checkpoint"
                    {
                        guard let key else {
                            return fail(.checkpointKeyMissing, link.seq,
                                        "cannot check the checkpoint: \(layout.checkpointPublicKey) is missing (give --public-key)")
                        }
                        let signer = AuditChain.rawString(keyNeedle, in: line).map { String(decoding: $0, as: UTF8.self) }
                        let signature = AuditChain.rawString(signatureNeedle, in: line).map { String(decoding: $0, as: UTF8.self) }
                        guard signer == key.keyID else {
                            return fail(.checkpointSignatureInvalid, link.seq,
                                        "signed by key \(signer ?? "(none)"), not by the trusted key \(key.keyID)")
                        }
                        let time = AuditChain.rawString(timeNeedle, in: line).map { String(decoding: $0, as: UTF8.self) } ?? ""
                        guard let signature,
                            key.isValid(signature: signature, kind: "record", seq: link.seq - 1, hash: link.prev, time: time)
                        else {
                            return fail(.checkpointSignatureInvalid, link.seq,
                                        "the signature over the log up to seq \(link.seq - 1) and its time does not verify")
                        }
                        let legacy = CheckpointVerifier.isLegacy(signature)
                        if legacy { report.legacyCheckpoints += 1 }
                        lastCheckpointRecord = (link.seq, legacy)
                        report.checkpoints += 1
                        report.signedThrough = link.seq
                    }
                    if let latest, latest.seq == link.seq, Array(latest.hash.utf8) != link.hash {
                        return fail(.edited, link.seq, "\(layout.latestCheckpoint) signs a different record with this seq: the log was rewritten")
                    }
                    prev = link.hash
                    previousLocation = location
                    report.records += 1
                    report.lastSeq = link.seq
                    expected += 1
                    return true
                }
            }
            if report.problem != nil { return report }
        }
        guard let latest else {
            if let last = lastCheckpointRecord {
                report.problem = .init(
                    kind: .checkpointMissing, location: nil, seq: last.seq,
                    message: "\(layout.latestCheckpoint) is missing, but the log has a checkpoint at seq \(last.seq): it "
                        + "was deleted, and records after the last checkpoint may have been removed with it")
            } else if maximumAge != nil, report.records > 0 {
                report.problem = .init(
                    kind: .checkpointMissing, location: nil, seq: nil,
                    message: "\(layout.latestCheckpoint) is missing and the log has no checkpoint")
            }
            return report
        }
        do {  // checkpoint.json
            guard let key else {
                report.problem = .init(kind: .checkpointKeyMissing, location: nil, seq: latest.seq,
                                       message: "cannot check \(layout.latestCheckpoint): \(layout.checkpointPublicKey) is missing")
                return report
            }
            guard latest.key == key.keyID,
                key.isValid(
                    signature: latest.signature, kind: latest.kind, seq: latest.seq, hash: Array(latest.hash.utf8),
                    time: latest.time)
            else {
                report.problem = .init(kind: .checkpointSignatureInvalid, location: nil, seq: latest.seq,
                                       message: "\(layout.latestCheckpoint) does not verify with the trusted key")
                return report
            }
            if latest.seq > report.lastSeq {
                let last = report.lastSeq
                report.problem = .init(
                    kind: .truncated, location: nil, seq: last + 1,
                    message: "the log ends at seq \(last), but the checkpoint of \(latest.time) signs it up to seq "
                        + "\(latest.seq): seq \(last + 1)–\(latest.seq) were removed")
                return report
            }
            let legacy = CheckpointVerifier.isLegacy(latest.signature)
            report.latestTime = latest.time
            report.latestClosed = latest.closed == true
            if let last = lastCheckpointRecord {
                // A second-format checkpoint.json covers the checkpoint record it was written with; a first-format
                // one, the record before it. One older than that is an earlier checkpoint.json put back.
                let covers = legacy ? last.seq - 1 : last.seq
                if legacy && !last.legacy {
                    report.problem = .init(
                        kind: .checkpointStale, location: nil, seq: latest.seq,
                        message: "\(layout.latestCheckpoint) is of the first format (its time is not signed) while the log's "
                            + "checkpoints are of the second: an old copy was put back")
                    return report
                }
                if latest.seq < covers {
                    report.problem = .init(
                        kind: .checkpointStale, location: nil, seq: latest.seq,
                        message: "\(layout.latestCheckpoint) signs the log up to seq \(latest.seq), but the log has a checkpoint "
                            + "at seq \(last.seq): an older checkpoint.json was put back")
                    return report
                }
            }
            if let maximumAge, latest.closed != true {
                guard let signed = AuditTime.parse(latest.time), !legacy else {
                    report.problem = .init(
                        kind: .checkpointStale, location: nil, seq: latest.seq,
                        message: "\(layout.latestCheckpoint) has no signed time to check its age against")
                    return report
                }
                if now.timeIntervalSince(signed) > maximumAge {
                    report.problem = .init(
                        kind: .checkpointStale, location: nil, seq: latest.seq,
                        message: "\(layout.latestCheckpoint) was signed at \(latest.time), more than \(formatAge(maximumAge)) ago, and "
                            + "says the writer was still running: the log was rolled back to an earlier state, or its "
                            + "writer stopped without closing it")
                    return report
                }
            }
            report.signedThrough = max(report.signedThrough ?? 0, latest.seq)
        }
        return report
    }

    /// Whether a line with `seq` follows `line` in `bytes` (a record moved later rather than deleted).
    private static func occurs(seq: UInt64, after line: UnsafeRawBufferPointer, in bytes: UnsafeRawBufferPointer) -> Bool {
        let offset = bytes.baseAddress!.distance(to: line.baseAddress!) + line.count
        guard offset < bytes.count else { return false }
        var found = false
        forEachLine(UnsafeRawBufferPointer(rebasing: bytes[offset...])) { candidate, _, _ in
            if AuditChain.link(of: candidate, checkHash: false)?.seq == seq { found = true }
            return !found
        }
        return found
    }
}

/// `maximumAge` in words for a message: seconds, minutes or hours.
private func formatAge(_ seconds: TimeInterval) -> String {
    if seconds >= 3600, let hours = Int(exactly: (seconds / 3600).rounded()) { return "\(hours) h" }
    if seconds >= 60, let minutes = Int(exactly: (seconds / 60).rounded()) { return "\(minutes) min" }
    return "\(Int(exactly: seconds.rounded()) ?? 0) s"
}
