import ArgumentParser
import Foundation
import PortcullisAudit
import PortcullisPKI

/// `pki report`: the inventory joined with what the gateway saw of each certificate.
struct PKIReport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Join the inventory with the audit log: certificates never seen, seen from two addresses at once, still used after rotation, revoked but still trying.",
        discussion: """
            Reads --audit-dir, the log the gateway writes. Exit status: 1 when a certificate was seen from two \
            addresses at once, used after it was superseded, or tried to connect after its revocation; 0 \
            otherwise (certificates never seen are listed but not counted); 2 on errors.
            """)

    @OptionGroup var options: PKIOptions

    @Option(help: ArgumentHelp("Only what the gateway saw since then: RFC 3339, a date, or a duration back from now (30d, 12h).", valueName: "time"))
    var since: String?

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let pki = options.pki
        let now = Date()
        var filter = AuditFilter()
        filter.require("event", anyOf: ["session_opened", "session_closed", "tls_refused", "http_refused"])
        if let since {
            do {
                filter.since = AuditTime.format(try timeBound(since, option: "--since", now: now))
            } catch let error as ValidationError {
                fail(error.message)
            }
        }
        let (inventory, sightings) = try options.perform { _ in
            (try pki.loadInventory().entries, try Self.sightings(in: options.auditPath, matching: filter))
        }
        let report = FleetReport(inventory: inventory, sightings: sightings, now: now)
        if json {
            printJSON(View(report))
        } else {
            say(Self.text(report, certificates: inventory.count, sightings: sightings.count))
        }
        if report.needsAttention { throw ExitCode(1) }
    }

    /// Every record about a certificate's connections, read from the raw lines.
    static func sightings(in directory: String, matching filter: AuditFilter) throws -> [Sighting] {
        guard !AuditDirectory(path: directory).segments().isEmpty else { return [] }
        // In the writer's key order: one pass over each line.
        let needles = ["time", "event", "reason", "peer", "session", "serial"].map(AuditChain.memberNeedle)
        var found: [Sighting] = []
        try AuditReader(directory: directory).forEachLine(matching: filter) { line in
            let values = AuditChain.rawStrings(needles, in: line).map { $0.map(unescaped) }
            guard let time = values[0].flatMap(AuditTime.parse), let event = values[1], let serial = values[5] else { return true }
            let kind: Sighting.Kind = switch event {
            case "session_opened": .opened
            case "session_closed": .closed
            default: .refused(reason: values[2] ?? "")
            }
            found.append(Sighting(serial: serial, time: time, kind: kind, peer: values[3], session: values[4]))
            return true
        }
        return found
    }

    static func text(_ report: FleetReport, certificates: Int, sightings: Int) -> String {
        func stamp(_ date: Date) -> String { AuditTime.format(date) }
        var lines = ["\(certificates) certificates in the inventory; \(sightings) connection records in the audit log"]
        func section(_ title: String, _ rows: [String]) {
            lines.append("")
            lines.append("\(title) (\(rows.count))" + (rows.isEmpty ? ": none" : ":"))
            lines += rows.map { "  " + $0 }
        }
        section("Issued but never seen", report.neverSeen.map { "\($0.name)  serial \($0.serial)  issued \(day($0.issuedAt))" })
        section("Seen from two addresses at once", report.concurrentPeers.map {
            "\($0.entry?.name ?? "(not in the inventory)")  serial \($0.serial)  \($0.hosts.joined(separator: " and ")) at \(stamp($0.at))"
        })
        section("Still connecting with a superseded certificate", report.supersededInUse.map {
            "\($0.entry.name)  serial \($0.entry.serial)  \($0.sessions) session(s) after it was superseded, last \(stamp($0.last))"
                + ($0.replacement.map { "; current serial \($0.serial)" } ?? "")
        })
        section("Revoked, still trying to connect", report.revokedAttempts.map {
            "\($0.entry?.name ?? "(not in the inventory)")  serial \($0.serial)  \($0.attempts) attempt(s), last \(stamp($0.last))"
                + ($0.hosts.isEmpty ? "" : ", from \($0.hosts.joined(separator: ", "))")
        })
        return lines.joined(separator: "\n")
    }

    /// `--json`: the four lists.
    struct View: Encodable {
        struct Row: Encodable {
            var name: String?
            var serial: String
            var detail: [String: String]
        }
        var neverSeen: [Row]
        var concurrentPeers: [Row]
        var supersededInUse: [Row]
        var revokedAttempts: [Row]

        enum CodingKeys: String, CodingKey {
            case neverSeen = "never_seen"
            case concurrentPeers = "concurrent_peers"
            case supersededInUse = "superseded_in_use"
            case revokedAttempts = "revoked_attempts"
        }

        init(_ report: FleetReport) {
            neverSeen = report.neverSeen.map { Row(name: $0.name, serial: $0.serial, detail: ["issued_at": AuditTime.format($0.issuedAt)]) }
            concurrentPeers = report.concurrentPeers.map {
                Row(name: $0.entry?.name, serial: $0.serial, detail: ["hosts": $0.hosts.joined(separator: ","), "at": AuditTime.format($0.at)])
            }
            supersededInUse = report.supersededInUse.map {
                Row(name: $0.entry.name, serial: $0.entry.serial,
                    detail: ["sessions": String($0.sessions), "last": AuditTime.format($0.last), "current_serial": $0.replacement?.serial ?? ""])
            }
            revokedAttempts = report.revokedAttempts.map {
                Row(name: $0.entry?.name, serial: $0.serial,
                    detail: ["attempts": String($0.attempts), "last": AuditTime.format($0.last), "hosts": $0.hosts.joined(separator: ",")])
            }
        }
    }
}
