import ArgumentParser
import Foundation
import PortcullisPolicy
import PortcullisYAML

/// `policy check [DIR]`: what the gateway would refuse in a policies directory, plus the lints of what it
/// would accept, as `file:line:` lines for people and editors or JSON for CI.
struct PolicyCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "List what the gateway would refuse in a policies directory, and warn about likely mistakes.",
        discussion: """
            Reads DIR with the gateway's own loader: every problem that would stop 'serve' (or make a reload \
            keep the old policies) is printed as 'file:line: error: message'. A set that loads is then linted; \
            each warning is 'file:line: warning: message [code]', with one of these codes:

              shadowed-rule       a deny or an earlier broader allow covers the rule
              grants-nothing      an allow rule admits no session
              unknown-identity    no identity mapping can give a named identity
              unknown-group       no identity mapping gives a named group
              duplicate-identity  two mappings can give one identity to two certificates
              broad-publish       a publish grant of a whole subtree ('#')
              broad-group-grant   '+' or '#' for a group where grants put {identity}

            policies/README.md explains each code.

            Exit status: 0 when the gateway would load the set (warnings are listed but do not fail); 1 when it \
            would refuse it; 2 when there are warnings and --strict is given; 64 for a usage error.
            """)

    @Argument(help: ArgumentHelp("Policies directory (default ./policies, where 'serve' looks without --policies).", valueName: "dir"))
    var directory = "policies"

    @Flag(help: "Fail (exit 2) when there are warnings.")
    var strict = false

    @Flag(help: "Print JSON: directory, files, errors, warnings and status.")
    var json = false

    func run() throws {
        var errors: [Diagnostic] = []
        var warnings: [PolicyFinding] = []
        do {
            warnings = PolicyLint(try PolicySet.load(directory: directory)).findings()
        } catch let error as DiagnosticsError {
            errors = error.diagnostics
        } catch {
            errors = [Diagnostic(file: directory, line: nil, message: "cannot read: \(error.localizedDescription)")]
        }
        let status: Status = !errors.isEmpty ? .errors : (strict && !warnings.isEmpty) ? .warnings : .ok
        if json {
            printJSON(
                Report(
                    directory: directory, files: (try? PolicySet.fileNames(in: directory)) ?? [],
                    errors: errors.map(DiagnosticView.init), warnings: warnings, status: status.rawValue))
        } else {
            for error in errors {
                let place = [error.file, error.line.map(String.init)].compactMap { $0 }.joined(separator: ":")
                say("\(place): error: \(error.message)")
            }
            for warning in warnings { say(warning.description) }
            say(summary(errors: errors.count, warnings: warnings.count))
        }
        if status != .ok { throw ExitCode(status.exitCode) }
    }

    enum Status: String {
        case ok, errors, warnings

        var exitCode: Int32 {
            switch self {
            case .ok: 0
            case .errors: 1
            case .warnings: 2
            }
        }
    }

    struct Report: Encodable {
        var directory: String
        var files: [String]
        var errors: [DiagnosticView]
        var warnings: [PolicyFinding]
        var status: String
    }

    private func summary(errors: Int, warnings: Int) -> String {
        if errors > 0 { return "\(directory): \(errors) error(s); the gateway would refuse these policies" }
        if warnings > 0 { return "\(directory): loads, with \(warnings) warning(s)" }
        return "\(directory): OK"
    }
}
