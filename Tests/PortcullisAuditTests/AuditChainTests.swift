import Crypto
import Foundation
@testable import PortcullisAudit
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Audit log chain and checkpoints")
struct AuditChainTests {
    @Test("Each record's hash is the SHA-256 of its line without the hash member, and names the previous one")
    func chainFormat() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        try audit.write(3)
        let lines = try audit.lines()
        var previous = AuditChain.genesis
        for line in lines {
            let record = try JSONDecoder().decode(AuditRecord.self, from: Data(line.utf8))
            let cut = try #require(line.range(of: #","hash":""#, options: .backwards))
            let canonical = String(line[..<cut.lowerBound]) + "}"
            let digest = SHA256.hash(data: Data(canonical.utf8)).map { String(format: "%02x", $0) }.joined()
            #expect(record.hash == digest)
            #expect(record.prev == previous)
            previous = digest
        }
        #expect(lines.count == 4)  // three records and the checkpoint close() signs
        let report = try audit.verify()
        #expect(report.problem == nil)
        #expect(report.records == 4 && report.lastSeq == 4 && report.signedThrough == 4)
    }

    enum Tampering: String, CaseIterable, CustomTestStringConvertible {
        case editedInPlace, editedAndRehashed, deleted, reordered, truncatedAfterCheckpoint, malformedLine,
            checkpointForged, tornLineInTheMiddle
        var testDescription: String { rawValue }
    }

    @Test("verify names the first problem: file, line, seq and what is wrong", arguments: Tampering.allCases)
    func tampering(_ tampering: Tampering) throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        var settings = AuditSettings()
        settings.checkpointRecords = 4
        try audit.write(10, settings: settings)
        var lines = try audit.lines()
        // Records 1-4, checkpoint (5), records 6-9, checkpoint (10), records 11-12, final checkpoint (13).
        #expect(lines.count == 13)
        #expect(lines[4].contains(#""event":"audit_checkpoint""#))
        #expect(try audit.verify().problem == nil)

        let expected: (AuditVerification.Problem.Kind, line: Int?, seq: UInt64?, message: String)
        switch tampering {
        case .editedInPlace:
            lines[2] = lines[2].replacingOccurrences(of: "device-2", with: "device-X")
            expected = (.edited, 3, 3, "the record does not match its hash")
        case .editedAndRehashed:
            lines[2] = lines[2].replacingOccurrences(of: "device-2", with: "device-X")
            lines = reseal(lines, from: 2).enumerated().map { $0.offset == 2 ? $0.element : lines[$0.offset] }
            expected = (.edited, 3, 3, "the record was replaced and re-hashed")
        case .deleted:
            lines.remove(at: 6)
            expected = (.deleted, 7, 8, "seq 7 is missing")
        case .reordered:
            lines.swapAt(6, 7)
            expected = (.reordered, 7, 8, "comes before seq 7")
        case .truncatedAfterCheckpoint:
            lines.removeLast(3)
            expected = (.truncated, nil, 11, "seq 11–13 were removed")
        case .malformedLine:
            lines.insert("{\"seq\":3,\"event\":\"injected\"}", at: 2)
            expected = (.malformed, 3, nil, "not a sealed audit record")
        case .checkpointForged:
            // Rewritten from record 3 on with every hash recomputed: only the signatures give it away.
            lines[2] = lines[2].replacingOccurrences(of: "device-2", with: "device-X")
            lines = reseal(lines, from: 2)
            expected = (.checkpointSignatureInvalid, 5, 5, "does not verify")
        case .tornLineInTheMiddle:
            lines[5] = String(lines[5].prefix(40))
            try (lines[0...5].joined(separator: "\n")).write(toFile: audit.layout.closedSegment(firstSeq: 1), atomically: false, encoding: .utf8)
            lines = Array(lines[6...])
            expected = (.truncated, 6, nil, "ends in the middle of a line")
        }
        try audit.replace(lines)
        let problem = try #require(try audit.verify().problem)
        #expect(problem.kind == expected.0, "\(problem)")
        #expect(problem.location?.line == expected.line, "\(problem)")
        #expect(problem.seq == expected.seq, "\(problem)")
        #expect(problem.message.contains(expected.message), "\(problem)")
    }

    @Test("A torn final line is reported as such, and the next writer cuts it off, says so and continues the chain")
    func tornFinalLine() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        try audit.write(3)
        let handle = try #require(FileHandle(forWritingAtPath: audit.active))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(#"{"seq":5,"time":"2026-12-01T10:00:00.000Z","event":"sess"#.utf8))
        try handle.close()

        let torn = try audit.verify()
        #expect(torn.problem == nil)
        #expect(torn.tornFinalLine == .init(file: audit.active, line: 5))
        #expect(torn.records == 4)

        try audit.write(1, from: 3)
        let records = try AuditLog.readAll(directory: audit.path)
        let repaired = try #require(records.first { $0.event == "audit_repaired" })
        #expect(repaired.seq == 5)
        #expect(repaired.reason == "torn_final_line")
        #expect(repaired.detail?.contains("removed a torn final line of 56 bytes") == true, "\(repaired.detail ?? "")")
        #expect(records.map(\.seq) == Array(1...7))
        #expect(records[5].identity == "device-3")
        let report = try audit.verify()
        #expect(report.problem == nil && report.tornFinalLine == nil)
    }

    @Test("Segments rotate by size with the chain carried across; a deleted segment is found")
    func rotationBySize() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        var settings = AuditSettings()
        settings.segmentMaxBytes = 4096
        try audit.write(60, settings: settings)
        let segments = audit.layout.segments()
        #expect(segments.count >= 4, "\(segments)")
        #expect(segments.first == audit.layout.closedSegment(firstSeq: 1))
        #expect(segments.last == audit.active)
        for (earlier, later) in zip(segments, segments.dropFirst()) {
            let last = link(try audit.lines(earlier).last!)
            let first = link(try audit.lines(later).first!)
            #expect(first.prev == last.hash)
            #expect(first.seq == last.seq + 1)
            #expect(later == audit.active || later == audit.layout.closedSegment(firstSeq: first.seq))
            #expect(try FileManager.default.attributesOfItem(atPath: earlier)[.size] as! Int >= 4096)
        }
        let report = try audit.verify()
        #expect(report.problem == nil && report.records == 61 && report.segments == segments.count)

        let removedFirst = link(try audit.lines(segments[1]).first!).seq
        let removedLast = link(try audit.lines(segments[1]).last!).seq
        try FileManager.default.removeItem(atPath: segments[1])
        let problem = try #require(try audit.verify().problem)
        #expect(problem.kind == .deleted)
        #expect(problem.location?.file == segments[2] && problem.location?.line == 1)
        #expect(problem.message == "seq \(removedFirst)–\(removedLast) are missing")
    }

    @Test("Segments rotate by age")
    func rotationByAge() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        var settings = AuditSettings()
        // Long enough that writing a few records never takes it, on however loaded a machine.
        settings.segmentMaxAge = .seconds(3)
        try audit.write(2, settings: settings)
        Thread.sleep(forTimeInterval: 3.2)
        try audit.write(1, settings: settings, from: 2)
        #expect(audit.layout.segments() == [audit.layout.closedSegment(firstSeq: 1), audit.active])
        #expect(try audit.lines().first.map(link)?.seq == 4)
        #expect(try audit.verify().problem == nil)
    }

    @Test("Checkpoints are signed with the audit directory's own Ed25519 key and mirrored in checkpoint.json")
    func checkpoints() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        var settings = AuditSettings()
        settings.checkpointRecords = 3
        try audit.write(7, settings: settings)
        let mode = { (path: String) in (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue }
        #expect(try mode(audit.layout.checkpointKey) == 0o600)
        #expect(try mode(audit.layout.checkpointPublicKey) == 0o644)

        let records = try AuditLog.readAll(directory: audit.path)
        let checkpoints = records.filter { $0.event == "audit_checkpoint" }
        #expect(checkpoints.map(\.seq) == [4, 8, 10])
        let verifier = try CheckpointVerifier(publicKeyPEM: String(contentsOfFile: audit.layout.checkpointPublicKey, encoding: .utf8))
        for checkpoint in checkpoints {
            #expect(checkpoint.key == verifier.keyID)
            #expect(checkpoint.signature?.hasPrefix("v2:") == true)
            let signed = records[Int(checkpoint.seq) - 2]
            #expect(verifier.isValid(
                signature: checkpoint.signature!, kind: "record", seq: signed.seq, hash: Array(signed.hash!.utf8),
                time: checkpoint.time))
            // The time is signed: the same signature does not verify for another time, or as another statement.
            #expect(!verifier.isValid(
                signature: checkpoint.signature!, kind: "record", seq: signed.seq, hash: Array(signed.hash!.utf8),
                time: "2020-01-01T00:00:00.000Z"))
            #expect(!verifier.isValid(
                signature: checkpoint.signature!, kind: "latest", seq: signed.seq, hash: Array(signed.hash!.utf8),
                time: checkpoint.time))
        }
        // checkpoint.json signs through the last checkpoint record itself, as a statement of its own, and says
        // the writer closed the log.
        let latest = try #require(try Checkpoint.read(from: audit.layout))
        #expect(latest.seq == 10 && latest.hash == records[9].hash && latest.signature != checkpoints.last?.signature)
        #expect(latest.closed == true && latest.kind == "closed")
        let report = try audit.verify()
        #expect(report.checkpoints == 3 && report.signedThrough == 10 && report.latestClosed)
    }

    @Test("Truncation to an earlier checkpoint, a deleted, older or stale checkpoint.json: verify fails on each")
    func rollback() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        var settings = AuditSettings()
        settings.checkpointRecords = 3
        let log = try AuditLog(directory: audit.path, settings: settings)
        for index in 0..<3 {
            log.record(ScratchAudit.sample(index))
            log.flush()
        }
        // What an attacker keeps of the running log: through its checkpoint at seq 4, and checkpoint.json.
        let early = try audit.lines()
        let earlyLatest = try String(contentsOfFile: audit.layout.latestCheckpoint, encoding: .utf8)
        let earlyCheckpoint = try JSONDecoder().decode(Checkpoint.self, from: Data(earlyLatest.utf8))
        #expect(early.count == 4 && earlyCheckpoint.seq == 4 && earlyCheckpoint.closed == nil)
        for index in 3..<9 {
            log.record(ScratchAudit.sample(index))
            log.flush()
        }
        log.close()
        let verifier = try AuditVerifier(directory: audit.path)
        #expect(try verifier.verify(maximumAge: 3600).problem == nil)
        let full = try audit.lines()

        // 1. Cut back to the earlier checkpoint with its checkpoint.json: every signature is genuine, but the
        //    signed time says the writer was running then, and it re-signs every checkpoint interval.
        try audit.replace(early)
        try earlyLatest.write(toFile: audit.layout.latestCheckpoint, atomically: true, encoding: .utf8)
        #expect(try verifier.verify().problem == nil, "without an age bound an earlier state looks whole")
        let rolledBack = try verifier.verify(maximumAge: 600, now: Date().addingTimeInterval(3600)).problem
        #expect(rolledBack?.kind == .checkpointStale, "\(String(describing: rolledBack))")
        // Claiming it was closed instead needs a new signature.
        var closedClaim = earlyCheckpoint
        closedClaim.closed = true
        try JSONEncoder().encode(closedClaim).write(to: URL(fileURLWithPath: audit.layout.latestCheckpoint))
        #expect(try verifier.verify().problem?.kind == .checkpointSignatureInvalid)

        // 2. The full log with checkpoint.json deleted.
        try audit.replace(full)
        try FileManager.default.removeItem(atPath: audit.layout.latestCheckpoint)
        let missing = try verifier.verify().problem
        #expect(missing?.kind == .checkpointMissing, "\(String(describing: missing))")

        // 3. The full log with the earlier checkpoint.json: older than the log's last checkpoint record.
        try earlyLatest.write(toFile: audit.layout.latestCheckpoint, atomically: true, encoding: .utf8)
        let stale = try verifier.verify().problem
        #expect(stale?.kind == .checkpointStale, "\(String(describing: stale))")

        // 4. A checkpoint.json made from a checkpoint record's signature (the statement the log holds) fails.
        let records = try AuditLog.readAll(directory: audit.path)
        let lastCheckpoint = try #require(records.last { $0.event == "audit_checkpoint" })
        let forged = Checkpoint(
            seq: lastCheckpoint.seq - 1, hash: records[Int(lastCheckpoint.seq) - 2].hash!, time: lastCheckpoint.time,
            key: lastCheckpoint.key!, signature: lastCheckpoint.signature!)
        try JSONEncoder().encode(forged).write(to: URL(fileURLWithPath: audit.layout.latestCheckpoint))
        #expect(try verifier.verify().problem?.kind == .checkpointSignatureInvalid)
    }

    @Test("A log re-signed with a substituted key verifies only against that key; the pinned key catches it")
    func substitutedKey() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        try audit.write(3)
        let pinned = try String(contentsOfFile: audit.layout.checkpointPublicKey, encoding: .utf8)
        // The forger edits a record, replaces the key pair and lets a writer sign the rewritten log anew.
        var lines = try audit.lines()
        lines.removeLast()  // the old checkpoint
        lines[1] = lines[1].replacingOccurrences(of: "device-1", with: "device-X")
        try audit.replace(reseal(lines, from: 1))
        for file in [audit.layout.checkpointKey, audit.layout.checkpointPublicKey, audit.layout.latestCheckpoint] {
            try FileManager.default.removeItem(atPath: file)
        }
        try audit.write(1, from: 3)
        #expect(try audit.verify().problem == nil)

        let problem = try #require(try audit.verify(publicKeyPEM: pinned).problem)
        #expect(problem.kind == .checkpointSignatureInvalid)
        #expect(problem.message.contains("not by the trusted key"), "\(problem)")
    }

    @Test("Two writers appending at once make one chain, across rotations")
    func concurrentWriters() throws {
        let audit = try ScratchAudit()
        defer { audit.remove() }
        var settings = AuditSettings()
        settings.segmentMaxBytes = 8192
        settings.checkpointRecords = 50
        let logs = try (0..<2).map { _ in try AuditLog(directory: audit.path, settings: settings) }
        DispatchQueue.concurrentPerform(iterations: 2) { writer in
            for index in 0..<300 {
                logs[writer].record(ScratchAudit.sample(writer * 1000 + index))
                if index % 7 == 0 { logs[writer].flush() }
            }
        }
        logs.forEach { $0.close() }
        let records = try AuditLog.readAll(directory: audit.path)
        #expect(records.filter { $0.event == "session_opened" }.count == 600)
        #expect(records.map(\.seq) == Array(1...UInt64(records.count)))
        #expect(audit.layout.segments().count > 3)
        let report = try audit.verify()
        #expect(report.problem == nil, "\(String(describing: report.problem))")
    }
}

@Suite("Audit output on a terminal")
struct TerminalSafeTests {
    @Test("Escape sequences, C1 controls and bidi overrides from certificate names are printed visibly, never raw")
    func tableCells() {
        #expect(terminalSafe("device-42") == "device-42")
        #expect(terminalSafe("evil\u{1B}[2J\u{1B}]0;owned\u{7}") == "evil\\u{1b}[2J\\u{1b}]0;owned\\u{7}")
        #expect(terminalSafe("csi\u{9B}31m") == "csi\\u{9b}31m")
        #expect(terminalSafe("abc\u{202E}fed") == "abc\\u{202e}fed")
        #expect(terminalSafe("café ✓") == "café ✓")
    }

    @Test("JSON lines keep their value: characters JSON leaves raw become \\u escapes; safe lines are untouched")
    func jsonLines() throws {
        let line = Array(#"{"subject":"CN=x\u001b[1m","name":"a"#.utf8) + Array("\u{9B}1m\u{7F}\u{2066}".utf8) + Array(#""}"#.utf8)
        let safe = try #require(line.withUnsafeBytes { terminalSafeJSON($0) })
        #expect(!safe.contains(0x7F) && !safe.contains(0x9B) && !safe.contains(0x1B))
        #expect(String(decoding: safe, as: UTF8.self).contains(#"a\u009b1m\u007f\u2066"#))
        let decoded = try JSONSerialization.jsonObject(with: Data(safe)) as? [String: String]
        #expect(decoded?["name"] == "a\u{9B}1m\u{7F}\u{2066}")
        #expect(Array("{\"a\":\"café\"}".utf8).withUnsafeBytes { terminalSafeJSON($0) } == nil)
    }
}
