import PortcullisAdmission
import PortcullisConfig
import PortcullisPKI
import PortcullisPolicy
import X509

/// Whether an open session may go on under a newer runtime.
enum SessionVerdict: Sendable {
    /// It may, with the permissions the new policies give it.
    case keep(MessagePermissions)
    /// It must end: `reason` is the stable code (the same as admission's), `detail` the full reason.
    case end(reason: String, detail: String)
}

extension GatewayRuntime {
    /// Checks an open session as admission would check it now: the chain (fully again when the CA bundle
    /// changed, else validity and revocation), the identity it maps to, its route, and the policy for both.
    func recheck(_ session: AdmittedSession, trustChanged: Bool) async -> SessionVerdict {
        let verification: ClientVerification
        if trustChanged || session.chain.isEmpty {
            verification = await verifier.verify(presented: session.chain)
        } else {
            verification = verifier.recheck(chain: session.chain) ?? .trusted(chain: session.chain)
        }
        if case .refused(let reason, let detail) = verification {
            return .end(reason: reason.rawValue, detail: detail)
        }
        let policies = admission.policies
        guard let identity = policies.identify(session.facts) else {
            return .end(
                reason: PolicyRefusal.noIdentityMapping.rawValue,
                detail: policies.mappingFailure(session.facts) + " (after a reload)")
        }
        guard identity.name == session.identity.name else {
            return .end(
                reason: "identity_changed",
                detail: "the certificate now maps to identity '\(identity.name)', not '\(session.identity.name)'")
        }
        guard admission.routes.contains(where: { $0.path == session.route.path }) else {
            return .end(reason: "unknown_route", detail: "route \(session.route.path) is no longer configured")
        }
        switch policies.decide(
            identity: identity, route: session.route.path, origin: session.origin, gatewayOrigins: admission.gatewayOrigins)
        {
        case .admit:
            return .keep(policies.permissions(for: identity, route: session.route.path, origin: session.origin))
        case .refuse(let reason, _, let detail):
            return .end(reason: reason.rawValue, detail: detail)
        }
    }
}
