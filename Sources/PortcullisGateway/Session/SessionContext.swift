import Foundation
import PortcullisAdmission
import PortcullisAudit
import PortcullisConfig
import PortcullisPolicy

/// What an admitted session is, fixed at admission: who, on which route, under which settings, and the
/// gateway services it reports to. The session's handlers read it; none reaches back into the connection's
/// admission state or the gateway.
final class SessionContext: Sendable {
    let identity: String
    let route: GatewayConfiguration.Route
    /// The configuration of the runtime the session was admitted under.
    let configuration: GatewayConfiguration
    /// The topic grants and limits at admission (a reload may replace them; see ``SessionLifetimeHandler``).
    let permissions: MessagePermissions
    /// permessage-deflate as negotiated at the upgrade; nil for none.
    let compression: PerMessageDeflate?
    /// The earliest not-after of the verified chain: the session cannot outlive any of its certificates.
    let notValidAfter: Date?
    let metrics: GatewayMetrics
    let broker: Broker
    /// The shared broker's link to the other gateways; nil for a broker in-process only.
    let cluster: ClusterLink?
    let usage: IdentityUsage
    /// The timers of the session's event loop.
    let timers: LoopTimers
    private let auditLog: AuditLog
    /// Peer, session id, certificate, identity, rule, path and origin: what every record of the session carries.
    private let recordTemplate: AuditRecord

    init(
        identity: String, route: GatewayConfiguration.Route, configuration: GatewayConfiguration,
        permissions: MessagePermissions = MessagePermissions(), compression: PerMessageDeflate? = nil,
        notValidAfter: Date? = nil, metrics: GatewayMetrics, broker: Broker, cluster: ClusterLink? = nil, usage: IdentityUsage,
        timers: LoopTimers, auditLog: AuditLog, recordTemplate: AuditRecord
    ) {
        self.identity = identity
        self.route = route
        self.configuration = configuration
        self.permissions = permissions
        self.compression = compression
        self.notValidAfter = notValidAfter
        self.metrics = metrics
        self.broker = broker
        self.cluster = cluster
        self.usage = usage
        self.timers = timers
        self.auditLog = auditLog
        self.recordTemplate = recordTemplate
    }

    /// The session `admitted` has become, reporting to `gateway`.
    convenience init(
        _ admitted: AdmittedSession, configuration: GatewayConfiguration, compression: PerMessageDeflate?, gateway: Gateway,
        timers: LoopTimers
    ) {
        self.init(
            identity: admitted.identity.name, route: admitted.route, configuration: configuration,
            permissions: admitted.permissions, compression: compression, notValidAfter: admitted.notValidAfter,
            metrics: gateway.metrics, broker: gateway.broker, cluster: gateway.cluster, usage: gateway.usage, timers: timers, auditLog: gateway.auditLog,
            recordTemplate: admitted.recordTemplate)
    }

    /// An audit record of this session.
    func record(event: String, decision: String? = nil, reason: String? = nil, detail: String? = nil) -> AuditRecord {
        recordTemplate.with(event: event, decision: decision, reason: reason, detail: detail)
    }

    func audit(_ record: AuditRecord) {
        auditLog.record(record)
    }
}
