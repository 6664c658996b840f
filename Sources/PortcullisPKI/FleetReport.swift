import Foundation

/// What the gateway saw of one certificate at one moment, taken from the audit log.
public struct Sighting: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case opened, closed, refused(reason: String)
    }
    public var serial: String
    public var time: Date
    public var kind: Kind
    /// `host:port` as audited.
    public var peer: String?
    /// Shared by the records of one connection.
    public var session: String?

    public init(serial: String, time: Date, kind: Kind, peer: String?, session: String?) {
        self.serial = serial
        self.time = time
        self.kind = kind
        self.peer = peer
        self.session = session
    }

    /// The address without its port: a device reconnects from a new port each time.
    public var host: String? {
        guard let peer, let colon = peer.lastIndex(of: ":") else { return peer }
        return String(peer[..<colon])
    }
}

/// The inventory joined with what the gateway saw: `pki report`.
public struct FleetReport: Sendable {
    /// Active client certificates whose serial the gateway never saw.
    public var neverSeen: [InventoryEntry] = []
    /// A certificate in sessions from two different addresses at the same time (a copied key, or a NAT change).
    public var concurrentPeers: [(entry: InventoryEntry?, serial: String, hosts: [String], at: Date)] = []
    /// A superseded certificate still used after it was replaced.
    public var supersededInUse: [(entry: InventoryEntry, replacement: InventoryEntry?, sessions: Int, last: Date)] = []
    /// A revoked certificate still trying to connect (refused in the handshake, or after its revocation).
    public var revokedAttempts: [(entry: InventoryEntry?, serial: String, attempts: Int, last: Date, hosts: [String])] = []

    /// Whether anything needs an operator's attention (never-seen certificates alone do not).
    public var needsAttention: Bool { !concurrentPeers.isEmpty || !supersededInUse.isEmpty || !revokedAttempts.isEmpty }

    /// Builds the report from the inventory and the sightings (in log order); `now` ends sessions still open.
    public init(inventory: [InventoryEntry], sightings: [Sighting], now: Date = Date()) {
        let bySerial = Dictionary(inventory.map { ($0.serial, $0) }, uniquingKeysWith: { first, _ in first })
        let seen = Set(sightings.map(\.serial))
        neverSeen = inventory.filter { $0.state == .active && $0.profile == "client" && !seen.contains($0.serial) }

        // Sessions as intervals, per serial.
        var closedAt: [String: Date] = [:]
        for sighting in sightings where sighting.kind == .closed {
            if let session = sighting.session { closedAt[session] = sighting.time }
        }
        var sessions: [String: [(start: Date, end: Date, host: String)]] = [:]
        for sighting in sightings where sighting.kind == .opened {
            guard let host = sighting.host else { continue }
            let end = sighting.session.flatMap { closedAt[$0] } ?? now
            sessions[sighting.serial, default: []].append((sighting.time, end, host))
        }
        for (serial, intervals) in sessions.sorted(by: { $0.key < $1.key }) {
            let ordered = intervals.sorted { $0.start < $1.start }
            var found: (hosts: [String], at: Date)?
            for (index, first) in ordered.enumerated() where found == nil {
                // Sorted by start: once one starts after `first` ended, so do all the rest.
                for second in ordered[(index + 1)...] {
                    guard second.start < first.end else { break }
                    if second.host != first.host {
                        found = ([first.host, second.host].sorted(), second.start)
                        break
                    }
                }
            }
            if let found { concurrentPeers.append((bySerial[serial], serial, found.hosts, found.at)) }
        }

        // One pass over the sightings, not one per certificate: a fleet's log holds millions.
        var openedBySerial: [String: [Date]] = [:]
        for sighting in sightings where sighting.kind == .opened {
            openedBySerial[sighting.serial, default: []].append(sighting.time)
        }
        let activeByName = Dictionary(
            inventory.filter { $0.state == .active }.map { ($0.name, $0) }, uniquingKeysWith: { _, last in last })
        for entry in inventory {
            if let supersededAt = entry.supersededAt {
                let uses = (openedBySerial[entry.serial] ?? []).filter { $0 > supersededAt }
                if let last = uses.last {
                    supersededInUse.append((entry, activeByName[entry.name], uses.count, last))
                }
            }
        }

        var attempts: [String: [Sighting]] = [:]
        for sighting in sightings {
            let refusedAsRevoked = sighting.kind == .refused(reason: "certificate_revoked")
            let afterRevocation = bySerial[sighting.serial]?.revokedAt.map { sighting.time > $0 } ?? false
            if refusedAsRevoked || (afterRevocation && sighting.kind != .closed) {
                attempts[sighting.serial, default: []].append(sighting)
            }
        }
        revokedAttempts = attempts.sorted { $0.key < $1.key }.map { serial, tries in
            (bySerial[serial], serial, tries.count, tries.last!.time, Array(Set(tries.compactMap(\.host))).sorted())
        }
    }
}
