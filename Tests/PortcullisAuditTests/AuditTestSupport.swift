import Foundation
@testable import PortcullisAudit
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A fresh audit directory under the system's temporary directory, removed by `remove()`.
struct ScratchAudit {
    let path: String
    var layout: AuditDirectory { AuditDirectory(path: path) }
    var active: String { layout.activeSegment }

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("portcullis-audit-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Writes `count` records (`device-0`, `device-1`, ...), each flushed on its own so that batches, and so
    /// checkpoints, fall at predictable places.
    func write(_ count: Int, settings: AuditSettings = AuditSettings(), from first: Int = 0) throws {
        let log = try AuditLog(directory: path, settings: settings)
        for index in first..<(first + count) {
            log.record(Self.sample(index))
            log.flush()
        }
        log.close()
    }

    static func sample(_ index: Int) -> AuditRecord {
        var record = AuditRecord(event: "session_opened", decision: "allow", reason: "admitted")
        record.identity = "device-\(index)"
        record.peer = "10.0.0.\(index % 250 + 1):\(40_000 + index)"
        record.serial = String(format: "%08x", index)
        return record
    }

    func lines(_ file: String? = nil) throws -> [String] {
        try String(contentsOfFile: file ?? active, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            .dropLast().map(String.init)
    }

    func replace(_ lines: [String], in file: String? = nil) throws {
        try (lines.joined(separator: "\n") + "\n").write(toFile: file ?? active, atomically: false, encoding: .utf8)
    }

    func verify(publicKeyPEM: String? = nil) throws -> AuditVerification {
        try AuditVerifier(directory: path, publicKeyPEM: publicKeyPEM).verify()
    }
}

/// Recomputes the hash of `lines[from...]` and chains each to the one before, as someone who can edit the files
/// (but not sign) would after changing a record.
func reseal(_ lines: [String], from start: Int) -> [String] {
    var result = lines
    var prev = start == 0 ? Array(AuditChain.genesis.utf8) : link(lines[start - 1]).hash
    for index in start..<lines.count {
        var body = Array(lines[index].utf8)
        body.removeLast(AuditChain.hashSuffixLength + AuditChain.prevMemberLength)
        prev = AuditChain.seal(&body, prev: prev)
        result[index] = String(decoding: body, as: UTF8.self)
    }
    return result
}

func link(_ line: String) -> AuditChain.Link {
    Array(line.utf8).withUnsafeBytes { AuditChain.link(of: $0)! }
}
