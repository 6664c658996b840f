import ArgumentParser
import Foundation
import PortcullisAudit

/// `audit verify`: is the log as it was written?
struct AuditVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check every record's hash, the chain across all segments and every signed checkpoint.",
        discussion: """
            Prints "OK, N records, chain intact up to checkpoint K" (records 1 to K are signed), or the first \
            problem: file, line, seq and what is wrong (edited, deleted, reordered, truncated, malformed, \
            checkpoint signature invalid). A final line a crash left unfinished is reported, not held against \
            the log. Give --public-key with a copy of checkpoint-key.pub.pem kept elsewhere to also catch a log \
            re-signed with a substituted key.

            Exit status: 0 when the log verifies, 1 when it does not, 2 when it cannot be read.
            """)

    @OptionGroup var directory: AuditDirectoryOption

    @Option(name: .customLong("public-key"), help: ArgumentHelp("The checkpoint public key to trust (PEM).", valueName: "file"))
    var publicKey: String?

    func run() throws {
        let path = directory.existing()
        var pem: String?
        if let publicKey {
            guard let text = try? String(contentsOfFile: publicKey, encoding: .utf8) else { fail("cannot read \(publicKey)") }
            pem = text
        }
        let report: AuditVerification
        do {
            report = try AuditVerifier(directory: path, publicKeyPEM: pem).verify()
        } catch {
            fail("\(error)")
        }
        let segments = report.segments == 1 ? "1 segment" : "\(report.segments) segments"
        if let problem = report.problem {
            say("FAIL: \(problem)")
            say("(\(report.records) records before it verified, in \(segments))")
            throw ExitCode(1)
        }
        var line = "OK, \(report.records) records, chain intact"
        if let signed = report.signedThrough {
            line += " up to checkpoint \(signed)"
            if report.lastSeq > signed { line += " (\(report.lastSeq - signed) later records not yet signed)" }
        } else {
            line += " (no checkpoint yet: nothing proves the records were not rewritten as a whole)"
        }
        say(line)
        var details = "\(segments), last seq \(report.lastSeq)"
        if let key = report.keyID { details += ", checkpoints by key \(key.prefix(16))…" }
        say(details)
        if let torn = report.tornFinalLine {
            say("note: \(torn): torn final line, a write a crash interrupted; the next start of the gateway or "
                + "any pki command removes it and audits the repair")
        }
    }
}
