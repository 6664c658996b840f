import ArgumentParser
import Foundation
import PortcullisAudit

#if canImport(Glibc)
import Glibc
#endif

/// `audit tail [-f]`: the last records, then (with -f) each new one as it is written, across rotations.
struct AuditTail: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tail",
        abstract: "Show the last records; with -f, keep showing new ones as they are written.")

    @OptionGroup var directory: AuditDirectoryOption
    @OptionGroup var filters: AuditFilterOptions
    @OptionGroup var output: AuditOutputOptions

    @Option(name: [.customShort("n"), .customLong("lines")], help: "How many of the last records to show first.")
    var count = 10

    @Flag(name: [.customShort("f"), .customLong("follow")], help: "Keep following the log as it grows (Ctrl-C stops).")
    var follow = false

    func validate() throws {
        if count < 0 { throw ValidationError("-n must be 0 or more") }
        if follow && output.json { throw ValidationError("--follow prints a stream: use --jsonl rather than --json") }
    }

    func run() throws {
        let path = directory.existing()
        let layout = AuditDirectory(path: path)
        let filter = try filters.filter()
        let printer = RecordPrinter(output)

        // Opened before reading the last records, so nothing written in between is missed.
        var active = open(layout.activeSegment, O_RDONLY | O_CLOEXEC)
        var offset: off_t = 0
        var status = stat()
        if active >= 0, fstat(active, &status) == 0 { offset = status.st_size }

        // The newest segments first, until enough records are found.
        var last: [[UInt8]] = []
        for segment in layout.segments().reversed() where last.count < count {
            var found: [[UInt8]] = []
            let data = try Data(contentsOf: URL(fileURLWithPath: segment), options: .alwaysMapped)
            let end = segment == layout.activeSegment ? min(Int(offset), data.count) : data.count
            data.prefix(end).withUnsafeBytes { bytes in
                forEachLine(bytes) { line, _, terminated in
                    if terminated, filter.matches(line) { found.append(Array(line)) }
                    return true
                }
            }
            last = found.suffix(count - last.count) + last
        }
        for line in last { line.withUnsafeBytes { printer.add($0) } }
        guard follow else {
            printer.finish()
            return
        }
        printer.finish(emptyMessage: nil)

        var partial: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 256 * 1024)
        while true {
            if active >= 0 {
                while true {
                    let read = chunk.withUnsafeMutableBytes { pread(active, $0.baseAddress, $0.count, offset) }
                    guard read > 0 else { break }
                    offset += off_t(read)
                    partial.append(contentsOf: chunk[0..<read])
                }
                if let lastNewline = partial.lastIndex(of: 0x0A) {
                    partial[...lastNewline].withUnsafeBytes { bytes in
                        forEachLine(bytes) { line, _, terminated in
                            if terminated, filter.matches(line) { printer.add(line) }
                            return true
                        }
                    }
                    partial.removeSubrange(...lastNewline)
                    printer.flushFollowing()
                }
            }
            // Rotated (or created): everything of the old file has been read above; go on with the new one.
            var current = stat()
            var mine = stat()
            if stat(layout.activeSegment, &current) == 0,
                active < 0 || fstat(active, &mine) != 0 || mine.st_ino != current.st_ino || mine.st_dev != current.st_dev
            {
                if active >= 0 { close(active) }
                active = open(layout.activeSegment, O_RDONLY | O_CLOEXEC)
                offset = 0
                partial = []
                continue
            }
            usleep(200_000)
        }
    }
}
