import Foundation
import PortcullisAudit
import PortcullisConfig
import PortcullisPKI
import PortcullisPolicy
import X509

/// What admission decides with: one runtime's checks and caches, and the gateway's shared session count.
public struct AdmissionEnvironment: Sendable {
    public var admission: Admission
    public var verifier: ClientCertificateVerifier
    /// Chains the verifier accepted, with their leaf's facts: where a resumed session's chain is found.
    public var verifiedChains: VerifiedChainCache<CertificateFacts>
    /// Intermediates of verified chains, to rebuild a resumed session's chain the cache no longer holds.
    public var seenIntermediates: SeenIntermediates
    public var sessions: any SessionSlots
    /// `on_audit_failure: refuse_new_sessions`: while the audit log fails, every request is answered 503.
    public var refusesWhileAuditFails: Bool
    /// `handshake_timeout`, for the record of a connection that did not make it in time.
    public var handshakeTimeout: Double

    public init(
        admission: Admission, verifier: ClientCertificateVerifier, verifiedChains: VerifiedChainCache<CertificateFacts>,
        seenIntermediates: SeenIntermediates, sessions: any SessionSlots, refusesWhileAuditFails: Bool,
        handshakeTimeout: Double
    ) {
        self.admission = admission
        self.verifier = verifier
        self.verifiedChains = verifiedChains
        self.seenIntermediates = seenIntermediates
        self.sessions = sessions
        self.refusesWhileAuditFails = refusesWhileAuditFails
        self.handshakeTimeout = handshakeTimeout
    }
}

/// What happened to a connection in admission, as the NIO handlers see it.
public enum AdmissionEvent: Sendable {
    /// A trusted load balancer's PROXY protocol header named the client: from now on the records give its
    /// address as `peer`, and the balancer's as `proxy`.
    case clientCarried(peer: String, proxy: String)
    /// Refused before the TLS handshake began: a PROXY header problem (`proxy_header_*`) or, for a client a
    /// load balancer carried, a per-address limit.
    case refusedBeforeTLS(reason: String, detail: String)
    /// The TLS verification callback's result on a full handshake, with the presented leaf's facts (verified
    /// or not, for the records).
    case certificateVerified(ClientVerification, presented: CertificateFacts?)
    case handshakeCompleted(tlsVersion: String?)
    /// The leaf of a resumed TLS session (asked for with ``AdmissionAction/readResumedLeaf``); nil when the
    /// session carries none.
    case resumedLeaf(der: [UInt8]?)
    /// The TLS handshake failed; `error` is the TLS library's description of why.
    case handshakeFailed(error: String)
    /// The upgrade request's head. `auditFailing`: the audit log cannot write right now.
    case upgradeRequested(UpgradeRequest, auditFailing: Bool)
    /// The HTTP layer hands on a request it did not upgrade: declined by admission, by the upgrader's own
    /// checks, or not asking for an upgrade at all.
    case requestNotUpgraded(UpgradeRequest, auditFailing: Bool)
    /// The HTTP parser could not read the request: its head grew past `max_header_bytes` (`tooLarge`), or it
    /// is not HTTP.
    case unreadableRequest(tooLarge: Bool, detail: String)
    /// An upstream route's backend accepted the upgrade, choosing `subprotocol`.
    case backendAccepted(subprotocol: String?)
    /// An upstream route's backend cannot be reached or refused the upgrade.
    case backendFailed(detail: String)
    /// The 101 answer went out: the connection is a WebSocket session now.
    case upgraded
    /// The handshake deadline passed.
    case deadlinePassed
    case shutdown
    case closed
}

/// What the NIO handlers do in answer to an event.
public enum AdmissionAction: Sendable {
    /// Count the completed handshake in the metrics.
    case countHandshake(resumed: Bool)
    /// Read the resumed session's leaf and hand it back as ``AdmissionEvent/resumedLeaf(der:)``.
    case readResumedLeaf
    /// Write the record that concludes admission (the first conclusion only: later ones are consequences).
    case conclude(AuditRecord)
    /// Answer the request with the refusal's status, message and headers, then close.
    case respond(Refusal)
    /// Close the connection.
    case close
    /// Agree to the upgrade; the answer carries the session's subprotocol.
    case upgrade(AdmittedSession)
    /// Decline the upgrade: the refusal is answered when the request reaches the responder.
    case decline
    /// Connect the upstream route's backend, with the session's identity in headers, before agreeing.
    case connectBackend(AdmittedSession)
    /// Close the backend leg opened for a connection that will not become a session, with this close code.
    case closeBackend(code: UInt16)
    /// Install the session's handlers.
    case startSession(AdmittedSession)
}

/// One connection's way through admission, from TCP accept to a WebSocket session or a refusal.
///
/// The handlers feed it what happens (TLS verified, handshake done, request, backend answer, deadline,
/// close) and carry out the actions it returns; it touches no socket, so every refusal path is tested
/// without one. It keeps what the connection's audit records say (peer, TLS, certificate, path, Origin,
/// identity and rule) and concludes admission with exactly one record.
public struct AdmissionStateMachine: Sendable {
    enum State: Sendable {
        /// TCP accepted; TLS under way.
        case handshaking
        /// TLS done, no request yet.
        case awaitingRequest
        /// Admitted; waiting for the 101 to go out (and, on an upstream route, for the backend first).
        case admitted(AdmittedSession, backend: BackendLeg)
        /// Refused; the refusal is answered when the request reaches the responder.
        case refused(Refusal, identity: Identity?)
        /// A WebSocket session.
        case session(AdmittedSession)
        /// Closed.
        case ended
    }

    enum BackendLeg: Sendable {
        case notNeeded, connecting, accepted
    }

    private let environment: AdmissionEnvironment
    private(set) var state = State.handshaking
    /// What every record of this connection starts from; filled in as admission learns more.
    private var template: AuditRecord
    private var verification: ClientVerification?
    private var presentedFacts: CertificateFacts?
    private var resumedChain: (chain: [Certificate], facts: CertificateFacts, refusal: Refusal?)?
    public private(set) var tlsCompleted = false
    private var concluded = false
    /// The identity whose session slot this connection holds, released when it closes.
    private var sessionSlot: String?

    /// `peer` is the client's address and port; `proxy` the load balancer's, when a PROXY header gave `peer`.
    public init(environment: AdmissionEnvironment, peer: String, proxy: String? = nil, sessionID: String) {
        self.environment = environment
        template = AuditRecord(event: "")
        template.peer = peer
        template.proxy = proxy
        template.session = sessionID
    }

    /// The admitted session, once the connection is one.
    public var session: AdmittedSession? {
        if case .session(let session) = state { return session }
        return nil
    }

    public var isSession: Bool { session != nil }

    public mutating func handle(_ event: AdmissionEvent) -> [AdmissionAction] {
        switch event {
        case .certificateVerified(let verification, let presented):
            self.verification = verification
            presentedFacts = presented
            note(facts: presented)
            return []
        case .handshakeCompleted(let tlsVersion):
            guard case .handshaking = state else { return [] }
            state = .awaitingRequest
            tlsCompleted = true
            template.tlsVersion = tlsVersion
            let resumed = verification == nil
            template.resumed = resumed
            return resumed ? [.countHandshake(resumed: true), .readResumedLeaf] : [.countHandshake(resumed: false)]
        case .resumedLeaf(let der):
            resumedChain = der.flatMap(rebuildResumedChain)
            note(facts: resumedChain?.facts)
            return []
        case .handshakeFailed(let error):
            guard !tlsCompleted else { return [] }
            let (reason, detail) = Self.classifyHandshakeFailure(error, verification: verification)
            return conclude(event: "tls_refused", reason: reason, detail: detail) + [.close]
        case .upgradeRequested(let request, let auditFailing):
            guard case .awaitingRequest = state else { return [.decline] }
            decide(request, auditFailing: auditFailing)
            switch state {
            case .admitted(let session, _) where session.route.kind == .upstream:
                state = .admitted(session, backend: .connecting)
                return [.connectBackend(session)]
            case .admitted(let session, _):
                return [.upgrade(session)]
            default:
                return [.decline]
            }
        case .requestNotUpgraded(let request, let auditFailing):
            if case .awaitingRequest = state { decide(request, auditFailing: auditFailing) }
            let refusal: Refusal
            switch state {
            case .refused(let decided, _):
                refusal = decided
            case .admitted(let session, _):
                // The upgrader declined a request admission accepted: its own header checks are stricter.
                refusal = Refusal(
                    status: 400, reason: "invalid_upgrade_request", message: "invalid WebSocket upgrade",
                    detail: "the WebSocket upgrader rejected the request headers")
                state = .refused(refusal, identity: session.identity)
            case .handshaking, .awaitingRequest, .session, .ended:
                return []
            }
            var refused = record(event: "http_refused", decision: "deny", reason: refusal.reason, detail: refusal.detail)
            refused.status = refusal.status
            return conclude(refused) + [.respond(refusal)]
        case .unreadableRequest(let tooLarge, let detail):
            guard case .awaitingRequest = state else { return [.close] }
            let refusal =
                tooLarge
                ? Refusal(
                    status: 431, reason: "headers_too_large", message: "request headers too large",
                    detail: "request head over \(environment.admission.maxHeaderBytes) bytes, stopped while parsing")
                : Refusal(status: 400, reason: "malformed_request", message: "malformed request", detail: detail)
            refuse(refusal)
            var refused = record(event: "http_refused", decision: "deny", reason: refusal.reason, detail: refusal.detail)
            refused.status = refusal.status
            return conclude(refused) + [.respond(refusal)]
        case .backendAccepted(let answered):
            // The client may have left while the backend answered.
            guard case .admitted(var session, .connecting) = state else { return [.closeBackend(code: 1001), .decline] }
            guard case .askBackend(let offers) = session.subprotocol else {
                state = .admitted(session, backend: .accepted)
                return [.upgrade(session)]
            }
            switch Admission.backendSubprotocol(answered, offers: offers, on: session.route) {
            case .success(let chosen):
                session.subprotocol = chosen.map(SubprotocolChoice.chosen) ?? .none
                state = .admitted(session, backend: .accepted)
                return [.upgrade(session)]
            case .failure(let mismatch):
                refuseBackend(session, detail: "the backend \(Self.backendName(session)) answered the upgrade, but \(mismatch.detail)")
                return [.closeBackend(code: 1002), .decline]
            }
        case .backendFailed(let detail):
            guard case .admitted(let session, .connecting) = state else { return [] }
            refuseBackend(session, detail: detail)
            return [.decline]
        case .upgraded:
            guard case .admitted(let session, _) = state else { return [.close] }
            state = .session(session)
            return [.startSession(session)] + conclude(record(event: "session_opened", decision: "allow", reason: "admitted"))
        case .clientCarried(let peer, let proxy):
            guard case .handshaking = state, !tlsCompleted else { return [] }
            template.peer = peer
            template.proxy = proxy
            return []
        case .refusedBeforeTLS(let reason, let detail):
            guard case .handshaking = state, !tlsCompleted else { return [] }
            return conclude(event: "connection_refused", reason: reason, detail: detail) + [.close]
        case .deadlinePassed:
            if isSession { return [] }
            return conclude(
                event: tlsCompleted ? "http_refused" : "tls_refused", reason: "handshake_timeout",
                detail: "TLS and the WebSocket upgrade were not completed within \(environment.handshakeTimeout) s")
                + [.close]
        case .shutdown:
            if isSession { return [] }
            return conclude(
                event: tlsCompleted ? "http_refused" : "tls_refused", reason: "shutdown",
                detail: "the gateway is shutting down") + [.close]
        case .closed:
            if let identity = sessionSlot {
                environment.sessions.releaseSession(identity)
                sessionSlot = nil
            }
            let wasSession = isSession
            var backendOpen = false
            if case .admitted(_, let backend) = state { backendOpen = backend != .notNeeded }
            state = .ended
            if wasSession { return [] }
            // The upgrade never happened (the client left while the backend was connecting): the backend goes too.
            return (backendOpen ? [.closeBackend(code: 1001)] : [])
                + (tlsCompleted
                    ? conclude(
                        event: "http_refused", reason: "closed_before_upgrade",
                        detail: "the client closed the connection without completing a WebSocket upgrade")
                    : conclude(
                        event: "tls_refused", reason: "handshake_incomplete",
                        detail: "the client closed the connection before completing the TLS handshake"))
        }
    }

    /// A record of this connection with what is known of it so far.
    private func record(event: String, decision: String? = nil, reason: String? = nil, detail: String? = nil)
        -> AuditRecord
    {
        template.with(event: event, decision: decision, reason: reason, detail: detail)
    }

    // MARK: - Deciding

    /// Admission of `request`, in the order of the design: audit availability, the request's own checks, the
    /// certificate (verified in the handshake, or re-checked when resumed), route, identity, Origin, policy,
    /// subprotocol, and the identity's session limit. Leaves the state `.admitted` or `.refused`.
    private mutating func decide(_ request: UpgradeRequest, auditFailing: Bool) {
        template.path = request.path
        template.origin = request.values("Origin").first
        if environment.refusesWhileAuditFails, auditFailing {
            return refuse(
                Refusal(
                    status: 503, reason: "audit_unavailable", message: "the gateway cannot audit new sessions right now",
                    detail: "the audit log is failing (on_audit_failure: refuse_new_sessions)",
                    headers: [("Retry-After", "1")]))
        }
        let admission = environment.admission
        if let refusal = admission.validate(request) { return refuse(refusal) }

        let facts: CertificateFacts
        let chain: [Certificate]
        if case .trusted(let verified) = verification, let presentedFacts {
            (facts, chain) = (presentedFacts, verified)
        } else if let resumedChain {
            if let refusal = resumedChain.refusal { return refuse(refusal) }
            (facts, chain) = (resumedChain.facts, resumedChain.chain)
        } else {
            return refuse(
                Refusal(
                    status: 403, reason: "no_client_certificate", message: "a client certificate is required",
                    detail: "no verified client certificate on this TLS session"))
        }
        switch admission.decideValidated(request, certificate: facts) {
        case .refuse(let refusal, let identity):
            refuse(refusal, identity: identity)
        case .admit(let identity, let rule, let route):
            template.identity = identity.name
            template.rule = rule
            let subprotocol: SubprotocolChoice
            switch Admission.subprotocol(for: request, on: route) {
            case .success(let choice):
                subprotocol = choice
            case .failure(var refusal):
                refusal.rule = rule
                return refuse(refusal, identity: identity)
            }
            let permissions = admission.policies.permissions(for: identity, route: route.path, origin: template.origin)
            guard environment.sessions.reserveSession(identity.name, limit: permissions.limits.sessions) else {
                return refuse(
                    Refusal(
                        status: 429, reason: "session_limit", message: "too many open sessions for this identity",
                        detail: "'\(identity.name)' already has \(permissions.limits.sessions ?? 0) open sessions (rule \(rule))",
                        rule: rule),
                    identity: identity)
            }
            sessionSlot = identity.name
            state = .admitted(
                AdmittedSession(
                    identity: identity, rule: rule, route: route, permissions: permissions, facts: facts, chain: chain,
                    origin: template.origin, subprotocol: subprotocol, recordTemplate: template),
                backend: .notNeeded)
        }
    }

    private mutating func refuse(_ refusal: Refusal, identity: Identity? = nil) {
        template.identity = identity?.name
        template.rule = refusal.rule
        state = .refused(refusal, identity: identity)
    }

    private mutating func refuseBackend(_ session: AdmittedSession, detail: String) {
        refuse(
            Refusal(
                status: 502, reason: "upstream_unavailable", message: "the backend is unavailable", detail: detail,
                rule: session.rule),
            identity: session.identity)
    }

    private static func backendName(_ session: AdmittedSession) -> String {
        session.route.upstream?.url ?? session.route.path
    }

    /// The whole chain of a resumed session's leaf and the verdict on it now: from the cache of verified
    /// chains, or rebuilt from the trust set and the intermediates seen in verified chains (after a reload
    /// the cache starts empty while the session tickets stay valid). Validity and revocation are what can
    /// have changed since the chain was verified.
    private func rebuildResumedChain(leafDER der: [UInt8]) -> (chain: [Certificate], facts: CertificateFacts, refusal: Refusal?)? {
        let chain: [Certificate]
        let facts: CertificateFacts
        if let known = environment.verifiedChains.entry(forLeaf: der) {
            (chain, facts) = (known.chain, known.value)
        } else if let leaf = try? Certificate(derEncoded: der) {
            chain = environment.verifier.rebuildChain(leaf: leaf, seen: environment.seenIntermediates.all) ?? []
            facts = CertificateFacts(certificate: leaf, derBytes: der)
        } else {
            return nil
        }
        let verdict =
            chain.isEmpty
            ? .refused(.untrusted, detail: "its chain cannot be rebuilt from the trusted CAs; reconnect without resuming")
            : environment.verifier.recheck(chain: chain)
        guard case .refused(let reason, let detail) = verdict else {
            // The next resumption of this leaf finds its chain without rebuilding it.
            environment.verifiedChains.insert(.init(certificates: [der]), chain: chain, value: facts)
            return (chain, facts, nil)
        }
        return (
            chain, facts,
            Refusal(status: 403, reason: reason.rawValue, message: "certificate not accepted", detail: "resumed TLS session: " + detail)
        )
    }

    // MARK: - Records

    private mutating func note(facts: CertificateFacts?) {
        guard let facts else { return }
        template.subject = facts.subject
        template.fingerprint = facts.fingerprint
        template.serial = facts.serial
        let sans = facts.sanURIs + facts.sanDNSNames + facts.sanEmails
        template.sans = sans.isEmpty ? nil : sans
    }

    private mutating func conclude(event: String, reason: String, detail: String) -> [AdmissionAction] {
        conclude(record(event: event, decision: "deny", reason: reason, detail: detail))
    }

    /// The first conclusion wins: a refusal's consequences (the close that follows it) are not concluded again.
    private mutating func conclude(_ record: AuditRecord) -> [AdmissionAction] {
        guard !concluded else { return [] }
        concluded = true
        return [.conclude(record)]
    }

    /// A handshake failure as a stable reason code and a detail: the verifier's own refusal when it made one,
    /// else what the TLS library's error says.
    static func classifyHandshakeFailure(_ error: String, verification: ClientVerification?) -> (String, String) {
        if case .refused(let refusal, let detail) = verification {
            return (refusal.rawValue, detail)
        }
        let known: [(String, String, String)] = [
            ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_client_certificate", "the client presented no certificate"),
            ("UNSUPPORTED_PROTOCOL", "tls_version_not_allowed", "the client's TLS versions are below the minimum"),
            ("NO_SHARED_CIPHER", "no_shared_cipher", "no cipher suite in common (ECDHE with AEAD only)"),
            ("NO_SHARED_GROUP", "no_shared_cipher", "no key-exchange group in common"),
            ("HTTP_REQUEST", "not_tls", "plain HTTP sent to the TLS port"),
            ("WRONG_VERSION_NUMBER", "not_tls", "the client did not speak TLS"),
            ("EOF during handshake", "handshake_incomplete", "the client closed the connection during the handshake"),
        ]
        for (marker, reason, detail) in known where error.contains(marker) {
            return (reason, detail)
        }
        return ("tls_handshake_failed", error)
    }
}
