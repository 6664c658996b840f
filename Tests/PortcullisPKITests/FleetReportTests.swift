import Foundation
import PortcullisPKI
import Testing

@Suite("Fleet report")
struct FleetReportTests {
    static let t0 = Date(timeIntervalSince1970: 1_796_000_000)

    /// An inventory entry as `pki/inventory.json` holds it.
    static func entry(_ name: String, _ serial: String, state: String = "active", profile: String = "client",
                      supersededAt: Date? = nil, revokedAt: Date? = nil) throws -> InventoryEntry {
        var fields: [String: Any] = [
            "name": name, "serial": serial, "profile": profile, "subject": "CN=\(name)", "sans": [String](),
            "fingerprint": serial, "key_algorithm": "p256", "issued_at": t0.timeIntervalSinceReferenceDate,
            "not_before": t0.timeIntervalSinceReferenceDate, "not_after": t0.addingTimeInterval(86400 * 90).timeIntervalSinceReferenceDate,
            "renew_after": t0.addingTimeInterval(86400 * 60).timeIntervalSinceReferenceDate, "state": state,
            "auto_renew": false, "certificate_pem": "",
        ]
        if let supersededAt { fields["superseded_at"] = supersededAt.timeIntervalSinceReferenceDate }
        if let revokedAt { fields["revoked_at"] = revokedAt.timeIntervalSinceReferenceDate }
        return try JSONDecoder().decode(InventoryEntry.self, from: JSONSerialization.data(withJSONObject: fields))
    }

    static func at(_ seconds: Double) -> Date { t0.addingTimeInterval(seconds) }

    static func session(_ serial: String, _ id: String, from host: String, _ start: Double, _ end: Double?) -> [Sighting] {
        [Sighting(serial: serial, time: at(start), kind: .opened, peer: "\(host):4000", session: id)]
            + (end.map { [Sighting(serial: serial, time: at($0), kind: .closed, peer: "\(host):4000", session: id)] } ?? [])
    }

    @Test("Two addresses count only when their sessions overlap; a session still open lasts until now")
    func concurrentPeers() throws {
        let inventory = [try Self.entry("a", "01"), try Self.entry("b", "02"), try Self.entry("c", "03")]
        let sightings = Self.session("01", "s1", from: "10.0.0.1", 10, 20) + Self.session("01", "s2", from: "10.0.0.2", 30, 40)
            + Self.session("02", "s3", from: "10.0.0.1", 10, 50) + Self.session("02", "s4", from: "10.0.0.2", 20, 30)
            + Self.session("03", "s5", from: "10.0.0.1", 10, nil) + Self.session("03", "s6", from: "10.0.0.1", 20, 30)
        let report = FleetReport(inventory: inventory, sightings: sightings.sorted { $0.time < $1.time }, now: Self.at(100))
        #expect(report.concurrentPeers.map(\.serial) == ["02"])
        #expect(report.concurrentPeers.first?.hosts == ["10.0.0.1", "10.0.0.2"])
        #expect(report.concurrentPeers.first?.at == Self.at(20))
        #expect(report.neverSeen.isEmpty)
        #expect(report.needsAttention)
    }

    @Test("Never seen: active client certificates only; superseded and revoked use is counted after the fact only")
    func lifecycle() throws {
        let inventory = [
            try Self.entry("gw", "10", profile: "server"),
            try Self.entry("idle", "11"),
            try Self.entry("dev", "12", state: "superseded", supersededAt: Self.at(100)),
            try Self.entry("dev", "13"),
            try Self.entry("lost", "14", state: "revoked", revokedAt: Self.at(100)),
        ]
        let sightings = Self.session("12", "a", from: "10.0.0.1", 50, 60) + Self.session("12", "b", from: "10.0.0.1", 150, 160)
            + Self.session("13", "c", from: "10.0.0.1", 170, 180) + Self.session("14", "d", from: "10.0.0.9", 90, 95)
            + [Sighting(serial: "14", time: Self.at(200), kind: .refused(reason: "certificate_revoked"), peer: "10.0.0.9:5000", session: "e"),
               Sighting(serial: "14", time: Self.at(210), kind: .refused(reason: "certificate_revoked"), peer: "10.0.0.8:5000", session: "f")]
        let report = FleetReport(inventory: inventory, sightings: sightings, now: Self.at(300))
        #expect(report.neverSeen.map(\.name) == ["idle"])
        #expect(report.supersededInUse.count == 1)
        #expect(report.supersededInUse.first?.sessions == 1 && report.supersededInUse.first?.replacement?.serial == "13")
        #expect(report.revokedAttempts.count == 1)
        #expect(report.revokedAttempts.first?.attempts == 2 && report.revokedAttempts.first?.hosts == ["10.0.0.8", "10.0.0.9"])
        #expect(report.revokedAttempts.first?.last == Self.at(210))

        let quiet = FleetReport(inventory: [try Self.entry("idle", "11")], sightings: [], now: Self.at(300))
        #expect(quiet.neverSeen.count == 1 && !quiet.needsAttention)
    }
}
