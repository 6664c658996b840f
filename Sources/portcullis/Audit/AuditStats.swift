import ArgumentParser
import Foundation
import PortcullisAudit

/// `audit stats`: what happened, counted.
struct AuditStats: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Count records by event, decision and reason; list the most refused identities (or certificate subjects), origins and peers.",
        discussion: "Takes the same filters as 'audit query', e.g. --since 24h.")

    @OptionGroup var directory: AuditDirectoryOption
    @OptionGroup var filters: AuditFilterOptions

    @Option(help: "How many entries each top list shows.")
    var top = 10

    @Flag(help: "Print JSON.")
    var json = false

    struct Summary: Encodable {
        var records = 0
        var first: String?
        var last: String?
        var events: [String: Int] = [:]
        var decisions: [String: Int] = [:]
        var reasons: [String: Int] = [:]
        var refusedIdentities: [String: Int] = [:]
        var refusedOrigins: [String: Int] = [:]
        var refusedPeers: [String: Int] = [:]

        enum CodingKeys: String, CodingKey {
            case records, first, last, events, decisions, reasons
            case refusedIdentities = "refused_identities"
            case refusedOrigins = "refused_origins"
            case refusedPeers = "refused_peers"
        }
    }

    func run() throws {
        let reader = AuditReader(directory: directory.existing())
        var summary = Summary()
        // In the writer's key order, so that one pass over each line finds them all.
        let needles = ["time", "event", "decision", "reason", "identity", "peer", "origin", "subject"].map(AuditChain.memberNeedle)
        try reader.forEachLine(matching: try filters.filter()) { line in
            let values = AuditChain.rawStrings(needles, in: line).map { $0.map { terminalSafe(unescaped($0)) } }
            summary.records += 1
            if summary.first == nil { summary.first = values[0] }
            summary.last = values[0]
            summary.events[values[1] ?? "?", default: 0] += 1
            if let decision = values[2] { summary.decisions[decision, default: 0] += 1 }
            if let reason = values[3] { summary.reasons[reason, default: 0] += 1 }
            if values[2] == "deny" {
                // Refused in the TLS handshake, a certificate has no identity yet: its subject stands in.
                summary.refusedIdentities[values[4] ?? values[7] ?? "(no certificate)", default: 0] += 1
                if let origin = values[6] { summary.refusedOrigins[origin, default: 0] += 1 }
                if let peer = values[5] { summary.refusedPeers[Self.host(of: peer), default: 0] += 1 }
            }
            return true
        }
        if json {
            printJSON(summary)
            return
        }
        var out = "\(summary.records) records"
        if let first = summary.first, let last = summary.last { out += ", \(first) to \(last)" }
        out += "\n"
        func section(_ title: String, _ counts: [String: Int], limit: Int? = nil) {
            guard !counts.isEmpty else { return }
            let sorted = counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            let shown = limit.map { Array(sorted.prefix($0)) } ?? sorted
            let rows = table(shown.map { [$0.key, String($0.value)] }).split(separator: "\n")
            out += "\n\(title):\n" + rows.map { "  " + $0 + "\n" }.joined()
        }
        section("By event", summary.events)
        section("By decision", summary.decisions)
        section("By reason", summary.reasons)
        section("Most refused identities", summary.refusedIdentities, limit: top)
        section("Most refused origins", summary.refusedOrigins, limit: top)
        section("Most refused peers", summary.refusedPeers, limit: top)
        StandardStreams.output(out)
    }

    /// `10.0.0.7:51234` → `10.0.0.7`, `[::1]:443` → `::1`: a client reconnects from a new port each time.
    static func host(of peer: String) -> String {
        guard let colon = peer.lastIndex(of: ":") else { return peer }
        let host = peer[..<colon]
        return host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : String(host)
    }
}
