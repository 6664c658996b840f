import ArgumentParser
import Foundation
import PortcullisAudit
import PortcullisYAML

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

            A running gateway re-signs checkpoint.json with the time every checkpoint interval (60 s by \
            default) and marks it closed when it stops. --max-age 5m fails when the log's writer was running \
            and checkpoint.json is older than that, or missing: what a log rolled back to an earlier state \
            together with an old copy of checkpoint.json looks like.

            Exit status: 0 when the log verifies, 1 when it does not, 2 when it cannot be read.
            """)

    @OptionGroup var directory: AuditDirectoryOption

    @Option(name: .customLong("public-key"), help: ArgumentHelp("The checkpoint public key to trust (PEM).", valueName: "file"))
    var publicKey: String?

    @Option(
        name: .customLong("max-age"),
        help: ArgumentHelp("Fail when a running writer's checkpoint.json is older than this (e.g. 5m).", valueName: "duration"))
    var maxAge: String?

    func validate() throws {
        if let maxAge, !(parseDuration(maxAge).map { $0 > 0 && $0 <= 3650 * 86400 } ?? false) {
            throw ValidationError("--max-age must be a duration from 1ms to 3650d, such as 5m")
        }
    }

    func run() throws {
        let path = directory.existing()
        var pem: String?
        if let publicKey {
            guard let text = try? String(contentsOfFile: publicKey, encoding: .utf8) else { fail("cannot read \(publicKey)") }
            pem = text
        }
        let report: AuditVerification
        do {
            report = try AuditVerifier(directory: path, publicKeyPEM: pem).verify(maximumAge: maxAge.flatMap(parseDuration))
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
        if let time = report.latestTime {
            details += report.latestClosed ? ", closed at \(time)" : ", last signed at \(time) by a running writer"
        }
        say(details)
        if report.legacyCheckpoints > 0 {
            say("note: \(report.legacyCheckpoints) checkpoint(s) of the first format, which did not sign their time")
        }
        if let torn = report.tornFinalLine {
            say("note: \(torn): torn final line, a write a crash interrupted; the next start of the gateway or "
                + "any pki command removes it and audits the repair")
        }
    }
}
