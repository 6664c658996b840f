import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A set of file writes that lands whole or not at all.
///
/// Each file is first written and fsync'd beside its target as `<name>.pending`; a failure there removes every
/// pending file, so nothing changed. Then a journal (`.transaction`) naming the targets is written, the
/// pending files are renamed over their targets, and the journal is removed. A crash during the renames
/// leaves the journal: ``recover(in:)`` (run under the PKI lock before every operation) rolls it forward.
struct FileTransaction {
    struct Write {
        var path: String
        var bytes: [UInt8]
        var mode: mode_t
    }

    private(set) var writes: [Write] = []
    var removals: [String] = []

    mutating func write(_ text: String, to path: String, mode: mode_t = 0o644) {
        writes.append(Write(path: path, bytes: Array(text.utf8), mode: mode))
    }

    mutating func removeWrites(to path: String) {
        writes.removeAll { $0.path == path }
    }

    static func journalPath(in directory: String) -> String { "\(directory)/.transaction" }

    /// Commits the writes (and removals). `directory` holds the journal.
    func commit(in directory: String) throws {
        var written: [String] = []
        do {
            for write in writes {
                try AtomicFile.write(write.bytes, to: write.path + ".pending", mode: write.mode)
                written.append(write.path + ".pending")
            }
        } catch {
            for path in written { unlink(path) }
            throw error
        }
        let journal = (writes.map { "W " + $0.path } + removals.map { "D " + $0 }).joined(separator: "\n") + "\n"
        try AtomicFile.write(journal, to: Self.journalPath(in: directory), mode: 0o600)
        try Self.rollForward(journal: journal, directory: directory)
    }

    /// Completes a transaction a crash interrupted.
    static func recover(in directory: String) throws {
        guard let journal = try? String(contentsOfFile: journalPath(in: directory), encoding: .utf8) else { return }
        try rollForward(journal: journal, directory: directory)
    }

    private static func rollForward(journal: String, directory: String) throws {
        for line in journal.split(separator: "\n") {
            let path = String(line.dropFirst(2))
            if line.hasPrefix("W ") {
                if FileManager.default.fileExists(atPath: path + ".pending") {
                    guard rename(path + ".pending", path) == 0 else {
                        throw AtomicFile.WriteError(path: path, operation: "rename to", code: errno)
                    }
                }
            } else if line.hasPrefix("D ") {
                unlink(path)
            }
        }
        unlink(journalPath(in: directory))
    }
}
