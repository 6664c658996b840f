import ArgumentParser
import Foundation
import PortcullisAudit

/// `audit query`: the records that match, oldest first.
struct AuditQuery: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "query",
        abstract: "Show the records that match every filter given (a table, or --json / --jsonl).",
        discussion: """
            Example: one certificate's whole history (its issue, sessions, refusals and revocation):
              portcullis audit query --serial 4f2a...
            Refused sessions of the last two hours:
              portcullis audit query --since 2h --decision deny
            """)

    @OptionGroup var directory: AuditDirectoryOption
    @OptionGroup var filters: AuditFilterOptions
    @OptionGroup var output: AuditOutputOptions

    @Option(help: ArgumentHelp("Stop after this many records.", valueName: "n"))
    var limit: Int?

    func run() throws {
        let reader = AuditReader(directory: directory.existing())
        let printer = RecordPrinter(output)
        var count = 0
        try reader.forEachLine(matching: try filters.filter()) { line in
            printer.add(line)
            count += 1
            return limit.map { count < $0 } ?? true
        }
        printer.finish()
    }
}
