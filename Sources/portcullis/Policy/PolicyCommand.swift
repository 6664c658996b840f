import ArgumentParser
import Foundation
import PortcullisYAML

/// `portcullis policy`: check a policies directory before deploying it, and explain what it decides.
struct PolicyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Check policy files and explain the decisions they make.",
        discussion: """
            'policy check' lists what the gateway would refuse at load (file:line) and lints what it would accept; \
            'policy explain' answers whether a certificate would be admitted, by which rule, with which grants, \
            and what a policy change would change for it. Both read policies with the gateway's own loader and \
            decide with its own code. Exit codes are listed in each command's --help.
            """,
        subcommands: [PolicyCheck.self, PolicyExplain.self]
    )
}

/// A loader diagnostic as `--json` writes it.
struct DiagnosticView: Encodable {
    var file: String
    var line: Int?
    var message: String

    init(_ diagnostic: Diagnostic) {
        file = diagnostic.file
        line = diagnostic.line
        message = diagnostic.message
    }
}

/// Prints `lines` on stderr, each prefixed `portcullis: `, and exits with `status`: for inputs a command cannot
/// work with (an unreadable certificate, a configuration or policy set the gateway would refuse).
func failure(_ lines: [String], status: Int32) -> Never {
    StandardStreams.error(lines.map { "portcullis: \($0)\n" }.joined())
    Foundation.exit(status)
}
