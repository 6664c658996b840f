import ArgumentParser
import Foundation
import PortcullisPKI

/// `pki expiry --within 30d`: for cron and monitoring, like `openssl x509 -checkend`.
struct PKIExpiry: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "expiry",
        abstract: "Exit 1 and list the active certificates that expire within the window; exit 0 when none do.",
        discussion: "Revoked and superseded certificates are not counted. Errors exit 2.")

    @OptionGroup var options: PKIOptions

    @Option(help: "The window, e.g. 30d, 12h, 2w.")
    var within = "30d"

    @Flag(help: "Print JSON.")
    var json = false

    func validate() throws {
        guard parseWindow(within) != nil else { throw ValidationError("--within must be a duration such as 30d, 12h or 2w") }
    }

    func run() throws {
        let pki = options.pki
        let now = Date()
        let horizon = now.addingTimeInterval(parseWindow(within)!)
        let due = try options.perform { _ in try pki.loadInventory().entries }
            .filter { $0.state == .active && $0.notAfter <= horizon }
            .sorted { $0.notAfter < $1.notAfter }
        if json {
            printJSON(due.map { CertificateView($0, pki: pki, now: now) })
        } else if due.isEmpty {
            say("no active certificate expires within \(within)")
        } else {
            say("\(due.count) active certificate(s) expire within \(within):")
            for entry in due {
                let when = entry.notAfter < now ? "EXPIRED \(day(entry.notAfter))" : "\(day(entry.notAfter)) (\(entry.daysLeft(at: now)) days)"
                say("  \(entry.name)  serial \(entry.serial)  \(when)")
            }
        }
        if !due.isEmpty { throw ExitCode(1) }
    }
}
