import ArgumentParser
import Foundation
import PortcullisAudit
import PortcullisYAML

/// `portcullis audit`: read, search and verify the audit log the gateway and `portcullis pki` write.
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Search, follow, summarise and verify the tamper-evident audit log.",
        discussion: """
            Every command reads --audit-dir DIR (default ./audit, or $PORTCULLIS_AUDIT_DIR), the directory \
            'serve' and 'pki' write to. The format, the hash chain and the checkpoints are described in \
            docs/audit-log.md.

            Exit status: 0 on success; 2 for a bad option value or a directory with no log; 'audit verify' \
            exits 1 when the log does not verify.
            """,
        subcommands: [AuditQuery.self, AuditTail.self, AuditStats.self, AuditVerify.self]
    )
}

struct AuditDirectoryOption: ParsableArguments {
    @Option(name: .customLong("audit-dir"), help: ArgumentHelp("Audit log directory (default ./audit, or $PORTCULLIS_AUDIT_DIR).", valueName: "dir"))
    var directory: String?

    var path: String {
        directory ?? ProcessInfo.processInfo.environment["PORTCULLIS_AUDIT_DIR"] ?? "audit"
    }

    /// The directory, or exit 2 with one line when it holds no audit log.
    func existing() -> String {
        guard !AuditDirectory(path: path).segments().isEmpty else {
            fail("no audit log in \(path) (give --audit-dir DIR)")
        }
        return path
    }
}

/// The record filters `query`, `tail` and `stats` share. Repeat an option to accept any of its values.
struct AuditFilterOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Records at or after this time: RFC 3339 (2026-12-01T10:00:00Z) or a duration back from now (30m, 2h, 7d).", valueName: "time"))
    var since: String?

    @Option(help: ArgumentHelp("Records before this time (same forms as --since).", valueName: "time"))
    var until: String?

    @Option(help: ArgumentHelp("Identity name, as the policies map it.", valueName: "name"))
    var identity: [String] = []

    @Option(help: ArgumentHelp("Certificate serial (hex; case and colons do not matter): its issue, sessions, refusals, revocation.", valueName: "hex"))
    var serial: [String] = []

    @Option(help: ArgumentHelp("Certificate SHA-256 fingerprint (hex).", valueName: "hex"))
    var fingerprint: [String] = []

    @Option(help: ArgumentHelp("Event, e.g. session_opened, tls_refused, pki_operation.", valueName: "event"))
    var event: [String] = []

    @Option(help: ArgumentHelp("allow or deny.", valueName: "decision"))
    var decision: [String] = []

    @Option(help: ArgumentHelp("Reason code, e.g. origin_not_allowed, certificate_revoked.", valueName: "code"))
    var reason: [String] = []

    @Option(help: ArgumentHelp("The Origin header, exactly.", valueName: "origin"))
    var origin: [String] = []

    @Option(help: ArgumentHelp("Client address, with or without its port (10.0.0.7, 10.0.0.7:51234, [::1]).", valueName: "address"))
    var peer: [String] = []

    @Option(help: ArgumentHelp("Request path, e.g. /v1/messages.", valueName: "path"))
    var path: [String] = []

    /// Bad values exit 2 with one line, like every refused `pki` command.
    func validate() throws {
        for value in decision where value != "allow" && value != "deny" {
            fail("--decision must be allow or deny, not '\(value)'")
        }
        do {
            _ = try filter()
        } catch let error as ValidationError {
            fail(error.message)
        }
    }

    func filter(now: Date = Date()) throws -> AuditFilter {
        var filter = AuditFilter()
        filter.since = try since.map { AuditTime.format(try timeBound($0, option: "--since", now: now)) }
        filter.until = try until.map { AuditTime.format(try timeBound($0, option: "--until", now: now)) }
        func hex(_ text: String) -> String {
            var value = text.lowercased().replacingOccurrences(of: ":", with: "")
            if value.hasPrefix("0x") { value.removeFirst(2) }
            if value.hasPrefix("sha256") { value.removeFirst(6) }
            return value
        }
        filter.require("identity", anyOf: identity)
        filter.require("serial", anyOf: serial.map(hex))
        filter.require("fingerprint", anyOf: fingerprint.map(hex))
        filter.require("event", anyOf: event)
        filter.require("decision", anyOf: decision)
        filter.require("reason", anyOf: reason)
        filter.require("origin", anyOf: origin)
        filter.require("path", anyOf: path)
        filter.requirePeer(anyOf: peer)
        return filter
    }

}

/// A time bound as operators write it for the audit log (`audit` filters, `pki report --since`): RFC 3339, a date,
/// or a duration back from `now` (`500ms`, `30m`, `2h`, `7d`, `2w`).
func timeBound(_ text: String, option: String, now: Date) throws -> Date {
    if let seconds = parseDuration(text) ?? parseWindow(text), seconds >= 0 { return now.addingTimeInterval(-seconds) }
    if let date = AuditTime.parse(text) { return date }
    if let date = AuditTime.parse(text + "T00:00:00Z") { return date }
    throw ValidationError(
        "\(option) '\(text)' is neither RFC 3339 (2026-12-01T10:00:00Z, or a date) nor a duration such as 30m, 2h or 7d")
}

/// How `query` and `tail` print records.
struct AuditOutputOptions: ParsableArguments {
    @Flag(help: "Print one JSON array of the records.")
    var json = false

    @Flag(help: "Print the records as stored, one per line (with their chain fields).")
    var jsonl = false

    func validate() throws {
        if json && jsonl { throw ValidationError("--json and --jsonl exclude each other") }
    }
}

/// Prints records as they are found: raw lines for tools, or a table for people (columns sized per batch).
final class RecordPrinter {
    private let output: AuditOutputOptions
    private var out = BufferedOutput()
    private var printed = 0
    private var rows: [[String]] = []

    init(_ output: AuditOutputOptions) {
        self.output = output
        if output.json { out.write("[") }
    }

    func add(_ line: UnsafeRawBufferPointer) {
        if output.jsonl || output.json {
            if output.json { out.write(printed == 0 ? "\n" : ",\n") }
            if let safe = terminalSafeJSON(line) {
                safe.withUnsafeBytes { out.write($0) }
            } else {
                out.write(line)
            }
            if output.jsonl { out.write("\n") }
        } else if let record = AuditReader.decode(line) {
            rows.append(Self.row(record))
        }
        printed += 1
    }

    /// Prints what has been added so far (a table is laid out per call).
    func finish(emptyMessage: String? = "(no matching records)") {
        if output.json {
            out.write(printed == 0 ? "]\n" : "\n]\n")
        } else if !output.jsonl {
            if !rows.isEmpty {
                out.write(table([["SEQ", "TIME", "EVENT", "DECISION", "REASON", "WHO", "PEER", "DETAIL"]] + rows))
            } else if printed == 0, let emptyMessage {
                out.write(emptyMessage + "\n")
            }
            rows = []
        }
        out.flush()
    }

    /// Prints rows added since the last call without a header (for `tail -f`).
    func flushFollowing() {
        if !output.jsonl && !output.json && !rows.isEmpty {
            out.write(table(rows))
            rows = []
        }
        out.flush()
    }

    static func row(_ record: AuditRecord) -> [String] {
        var event = record.event
        if let operation = record.operation { event += " " + operation }
        var detail = record.detail ?? ""
        if let code = record.closeCode {
            detail = "close \(code) after \(record.durationMs ?? 0) ms, \(record.messagesIn ?? 0) in, \(record.messagesOut ?? 0) out"
        } else if detail.isEmpty, let rule = record.rule {
            detail = "rule \(rule)"
        }
        if let status = record.status { detail = "\(status) " + detail }
        let who = record.identity ?? record.name ?? "-"
        return [String(record.seq), record.time, event, record.decision ?? "-", record.reason ?? "-", who, record.peer ?? "-", detail]
            .map(terminalSafe)
    }
}

/// Columns padded to their widest cell, two spaces apart.
func table(_ rows: [[String]]) -> String {
    guard let columns = rows.first?.count else { return "" }
    let widths = (0..<columns).map { column in rows.map { $0[column].count }.max() ?? 0 }
    return rows.map { row in
        row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }
            .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
    }.joined(separator: "\n") + "\n"
}

/// Standard output in 64 KiB writes: a query can print a million lines.
struct BufferedOutput {
    private var buffer: [UInt8] = []

    mutating func write(_ text: String) {
        buffer.append(contentsOf: text.utf8)
        if buffer.count >= 64 * 1024 { flush() }
    }

    mutating func write(_ bytes: UnsafeRawBufferPointer) {
        buffer.append(contentsOf: bytes)
        if buffer.count >= 64 * 1024 { flush() }
    }

    mutating func flush() {
        guard !buffer.isEmpty else { return }
        StandardStreams.output(buffer)
        buffer.removeAll(keepingCapacity: true)
    }
}

/// The string value of a raw (still escaped) JSON member.
func unescaped(_ raw: UnsafeRawBufferPointer) -> String {
    guard raw.contains(UInt8(ascii: "\\")) else { return String(decoding: raw, as: UTF8.self) }
    let quoted = Data([UInt8(ascii: "\"")] + Array(raw) + [UInt8(ascii: "\"")])
    return (try? JSONDecoder().decode(String.self, from: quoted)) ?? String(decoding: raw, as: UTF8.self)
}
