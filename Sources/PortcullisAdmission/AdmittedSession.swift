import Foundation
import PortcullisAudit
import PortcullisConfig
import PortcullisPolicy
import X509

/// What an admitted session is, fixed when admission decides: who, on which route, with which grants and
/// limits, from which certificate. Sessions and re-checks after a reload read it; nothing in it changes
/// once the session is open.
public struct AdmittedSession: Sendable {
    public let identity: Identity
    /// The allow rule that admitted the session.
    public let rule: String
    public let route: GatewayConfiguration.Route
    /// The topic grants and limits of the rules whose conditions hold for this session.
    public let permissions: MessagePermissions
    /// The leaf's facts.
    public let facts: CertificateFacts
    /// The verified chain, leaf first: what a re-check after a reload verifies again.
    public let chain: [Certificate]
    /// The upgrade request's `Origin`, which the policy decided with.
    public let origin: String?
    /// The subprotocol of the 101 answer, or the offers an upstream backend chooses from.
    public internal(set) var subprotocol: SubprotocolChoice
    /// Peer, session id, TLS, certificate, identity, rule, path and origin: what every record of the session
    /// carries.
    public let recordTemplate: AuditRecord

    /// The earliest not-after of the verified chain: the session cannot outlive any of its certificates.
    public var notValidAfter: Date {
        chain.map(\.notValidAfter).min() ?? facts.notValidAfter
    }

    public init(
        identity: Identity, rule: String, route: GatewayConfiguration.Route, permissions: MessagePermissions,
        facts: CertificateFacts, chain: [Certificate], origin: String?, subprotocol: SubprotocolChoice = .none,
        recordTemplate: AuditRecord
    ) {
        self.identity = identity
        self.rule = rule
        self.route = route
        self.permissions = permissions
        self.facts = facts
        self.chain = chain
        self.origin = origin
        self.subprotocol = subprotocol
        self.recordTemplate = recordTemplate
    }
}

/// Open sessions per identity, against each identity's session limit: the count the gateway shares across
/// connections.
public protocol SessionSlots: Sendable {
    /// Takes one of `identity`'s session slots, unless `limit` are taken already.
    func reserveSession(_ identity: String, limit: Int?) -> Bool
    func releaseSession(_ identity: String)
}
