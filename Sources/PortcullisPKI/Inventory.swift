import Foundation

/// One certificate the PKI issued, as `pki/inventory.json` records it (the answer to "what did we issue?").
public struct InventoryEntry: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        case active
        /// Replaced by a rotation; revoked automatically once `revokeAfter` passes.
        case superseded
        case revoked
    }

    public var name: String
    /// Lowercase hex, as in audit records.
    public var serial: String
    public var profile: String
    public var subject: String
    public var sans: [String]
    public var fingerprint: String
    public var keyAlgorithm: String
    public var issuedAt: Date
    public var notBefore: Date
    public var notAfter: Date
    /// When the certificate becomes due for renewal (the profile's `renew_at` of its lifetime).
    public var renewAfter: Date
    public var state: State
    public var supersededAt: Date?
    public var revokeAfter: Date?
    public var revokedAt: Date?
    public var revocationReason: String?
    /// Renewed by `pki watch --renew` at its renewal point.
    public var autoRenew: Bool
    /// The certificate itself (PEM), so the inventory alone can rebuild `issued/` and the CRL.
    public var certificatePEM: String

    enum CodingKeys: String, CodingKey {
        case name, serial, profile, subject, sans, fingerprint, state
        case keyAlgorithm = "key_algorithm"
        case issuedAt = "issued_at"
        case notBefore = "not_before"
        case notAfter = "not_after"
        case renewAfter = "renew_after"
        case supersededAt = "superseded_at"
        case revokeAfter = "revoke_after"
        case revokedAt = "revoked_at"
        case revocationReason = "revocation_reason"
        case autoRenew = "auto_renew"
        case certificatePEM = "certificate_pem"
    }

    /// What `pki list` shows: the stored state, or for active certificates where they stand in their life.
    public enum Status: String, Sendable, CaseIterable {
        case valid
        case renewDue = "renew-due"
        /// Seven days or fewer left.
        case expiring
        case expired
        case revoked
        case superseded
    }

    public func status(at now: Date) -> Status {
        switch state {
        case .revoked: return .revoked
        case .superseded: return now > notAfter ? .expired : .superseded
        case .active:
            if now > notAfter { return .expired }
            if notAfter.timeIntervalSince(now) <= 7 * 86400 { return .expiring }
            if now >= renewAfter { return .renewDue }
            return .valid
        }
    }

    public func daysLeft(at now: Date) -> Int {
        Int((notAfter.timeIntervalSince(now) / 86400).rounded(.down))
    }
}

/// `pki/inventory.json`: every certificate issued, and the number of the last CRL.
public struct Inventory: Codable, Sendable {
    public var version = 1
    public var crlNumber: UInt64 = 0
    public var entries: [InventoryEntry] = []

    enum CodingKeys: String, CodingKey {
        case version, entries
        case crlNumber = "crl_number"
    }

    public init() {}

    /// The active certificate of `name`, if any.
    public func active(_ name: String) -> InventoryEntry? {
        entries.last { $0.name == name && $0.state == .active }
    }

    public func entry(serial: String) -> InventoryEntry? {
        entries.first { $0.serial == serial }
    }

    static func decode(_ data: Data) throws -> Inventory {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(Inventory.self, from: data)
    }

    func encoded() throws -> String {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(self), as: UTF8.self) + "\n"
    }
}
