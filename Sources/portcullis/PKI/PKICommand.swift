import ArgumentParser
@preconcurrency import Foundation
import PortcullisAudit
import PortcullisPKI

#if canImport(Glibc)
import Glibc
#endif

/// `portcullis pki`: the fleet's certificates, from a plain `pki/` directory anyone can inspect.
struct PKICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pki",
        abstract: "Issue, sign, renew, rotate and revoke certificates; list them and watch their expiry.",
        discussion: """
            Every command works on --pki DIR (default ./pki, or $PORTCULLIS_PKI) and appends an audit record to \
            --audit-dir (default ./audit, or $PORTCULLIS_AUDIT_DIR), the log the gateway writes.

            Exit status: 0 on success; 2 when the command is refused or fails (one line on stderr says why, and \
            nothing was written); 'pki expiry' exits 1 when a certificate expires within the window.
            """,
        subcommands: [
            PKIInit.self, PKIIssue.self, PKICsr.self, PKISign.self, PKIRenew.self, PKIRotate.self, PKIRevoke.self,
            PKICrl.self, PKIList.self, PKIInspect.self, PKIExpiry.self, PKIWatch.self, PKIReport.self,
        ]
    )
}

/// Options every `pki` command takes.
struct PKIOptions: ParsableArguments {
    @Option(name: .customLong("pki"), help: ArgumentHelp("PKI directory (default ./pki, or $PORTCULLIS_PKI).", valueName: "dir"))
    var directory: String?

    @Option(name: .customLong("audit-dir"), help: ArgumentHelp("Audit log directory (default ./audit, or $PORTCULLIS_AUDIT_DIR).", valueName: "dir"))
    var auditDirectory: String?

    var pki: PKIDirectory {
        PKIDirectory(path: directory ?? ProcessInfo.processInfo.environment["PORTCULLIS_PKI"] ?? "pki")
    }

    var auditPath: String {
        auditDirectory ?? ProcessInfo.processInfo.environment["PORTCULLIS_AUDIT_DIR"] ?? "audit"
    }

    /// Runs `operation`, turning any refusal into one line on stderr and exit status 2. The audit log is
    /// opened first: an operation that cannot be audited is not performed.
    func perform<T>(_ operation: (PKIAudit) throws -> T) throws -> T {
        let audit: PKIAudit
        do {
            audit = try PKIAudit(directory: auditPath)
        } catch {
            fail("cannot open the audit log in \(auditPath): \(error)")
        }
        defer { audit.close() }
        do {
            return try operation(audit)
        } catch let error as ExitCode {
            throw error
        } catch {
            fail("\(error)")
        }
    }
}

func fail(_ message: String) -> Never {
    StandardStreams.error("portcullis: \(message)\n")
    Foundation.exit(2)
}

/// Writes `pki_operation` records to the shared audit log.
struct PKIAudit {
    let log: AuditLog

    init(directory: String) throws {
        log = try AuditLog(directory: directory)
    }

    init(log: AuditLog) {
        self.log = log
    }

    func record(_ operation: String, _ entry: InventoryEntry?, reason: String? = nil, detail: String? = nil) {
        var record = AuditRecord(event: "pki_operation", reason: reason, detail: detail)
        record.operation = operation
        record.user = localUser
        if let entry {
            record.name = entry.name
            record.serial = entry.serial
            record.fingerprint = entry.fingerprint
            record.subject = entry.subject
            record.sans = entry.sans.isEmpty ? nil : entry.sans
        }
        log.record(record)
    }

    /// Records that `new` replaced `old`: one record under each serial, so that `audit query --serial` of either
    /// shows the hand-over.
    func recordReplacement(_ operation: String, new: InventoryEntry, old: InventoryEntry, context: String? = nil) {
        let prefix = context.map { "\($0); " } ?? ""
        record(operation, new, detail: prefix + "supersedes serial \(old.serial)")
        record("supersede", old, detail: prefix + "superseded by serial \(new.serial) (\(operation))")
    }

    /// Flushes the records; when the disk refuses them, says so and exits 2 (the operation itself was done).
    func close() {
        if let error = log.close() {
            fail("the operation was done, but its audit record could not be written to \(log.directory): \(error)")
        }
    }

    var localUser: String {
        if let entry = getpwuid(geteuid()), let name = entry.pointee.pw_name { return String(cString: name) }
        return ProcessInfo.processInfo.environment["USER"] ?? "uid \(geteuid())"
    }
}

/// `--json` output of certificates: the inventory entry without its PEM, plus status and file paths.
struct CertificateView: Encodable {
    var name: String
    var serial: String
    var profile: String
    var status: String
    var subject: String
    var sans: [String]
    var fingerprint: String
    var notBefore: Date
    var notAfter: Date
    var daysLeft: Int
    var renewAfter: Date
    var autoRenew: Bool
    var certificate: String?
    var chain: String?
    var key: String?
    var revokedAt: Date?
    var revocationReason: String?

    enum CodingKeys: String, CodingKey {
        case name, serial, profile, status, subject, sans, fingerprint, certificate, chain, key
        case notBefore = "not_before"
        case notAfter = "not_after"
        case daysLeft = "days_left"
        case renewAfter = "renew_after"
        case autoRenew = "auto_renew"
        case revokedAt = "revoked_at"
        case revocationReason = "revocation_reason"
    }

    init(_ entry: InventoryEntry, pki: PKIDirectory, now: Date = Date()) {
        name = entry.name
        serial = entry.serial
        profile = entry.profile
        status = entry.status(at: now).rawValue
        subject = entry.subject
        sans = entry.sans
        fingerprint = entry.fingerprint
        notBefore = entry.notBefore
        notAfter = entry.notAfter
        daysLeft = entry.daysLeft(at: now)
        renewAfter = entry.renewAfter
        autoRenew = entry.autoRenew
        revokedAt = entry.revokedAt
        revocationReason = entry.revocationReason
        if entry.state == .active {
            certificate = pki.certificatePath(entry.name)
            chain = pki.chainPath(entry.name)
            key = FileManager.default.fileExists(atPath: pki.keyPath(entry.name)) ? pki.keyPath(entry.name) : nil
        }
    }
}

func printJSON<T: Encodable>(_ value: T) {
    let encoder = JSONEncoder()
    encoder.dateEncodingStrategy = .iso8601
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    let data = (try? encoder.encode(value)) ?? Data("null".utf8)
    StandardStreams.output(Array(data) + [10])
}

func say(_ text: String) {
    StandardStreams.output(text + "\n")
}

func day(_ date: Date) -> String {
    date.formatted(.iso8601.year().month().day())
}

/// One line describing an issued certificate, for human output.
func describe(_ entry: InventoryEntry, pki: PKIDirectory) -> String {
    var lines = [
        "  name:        \(entry.name) (\(entry.profile))",
        "  serial:      \(entry.serial)",
        "  valid until: \(day(entry.notAfter)) (\(entry.daysLeft(at: Date())) days; renew after \(day(entry.renewAfter)))",
    ]
    if !entry.sans.isEmpty { lines.append("  SANs:        \(entry.sans.joined(separator: ", "))") }
    lines.append("  certificate: \(pki.certificatePath(entry.name))")
    lines.append("  chain:       \(pki.chainPath(entry.name))")
    if FileManager.default.fileExists(atPath: pki.keyPath(entry.name)) {
        lines.append("  key:         \(pki.keyPath(entry.name)) (0600)")
    }
    return lines.joined(separator: "\n")
}

/// Prints an issued certificate: as JSON for tools, or a headline and its details for people.
func show(_ entry: InventoryEntry, pki: PKIDirectory, json: Bool, headline: String) {
    if json { printJSON(CertificateView(entry, pki: pki)) } else { say(headline + "\n" + describe(entry, pki: pki)) }
}

/// Parses `30d`, `12h`, `90m`, `1w` into seconds.
func parseWindow(_ text: String) -> TimeInterval? {
    let units: [Character: TimeInterval] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400]
    guard let unit = text.last, let factor = units[unit], let number = Double(text.dropLast()), number >= 0 else {
        return nil
    }
    // At most a century: a CRL's nextUpdate, a sleep or a date a window leads to must stay representable
    // (`--interval 1e300d` trapped converting it).
    let seconds = number * factor
    return seconds <= 100 * 365 * 86400 ? seconds : nil
}
