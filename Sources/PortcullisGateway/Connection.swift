import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import PortcullisAudit
import PortcullisClient
import PortcullisConfig
import PortcullisPKI
import PortcullisPolicy
import Synchronization
import SwiftASN1
import X509

/// The state one accepted connection carries from TCP accept to session end, shared by its handlers.
///
/// Only ever touched on the channel's event loop (the handlers, the verification callback's completion and
/// the upgrader's closures all run there), which is why the unchecked `Sendable` is sound.
final class Connection: @unchecked Sendable {
    let gateway: Gateway
    /// The runtime (TLS context, trust, policies) this connection was accepted under.
    let runtime: GatewayRuntime
    let id: String
    let peer: String
    /// The client's address without its port: what connection limits and refusal aggregation count by.
    let address: String
    let acceptedAt: NIODeadline
    let eventLoop: any EventLoop

    /// Set by the TLS verification callback on a full handshake.
    var verification: ClientVerification?
    var tlsCompleted = false
    var tlsVersion: String?
    var resumed = false
    var facts: CertificateFacts?
    /// The verified chain, leaf first: what a re-check after a reload verifies again, and whose earliest
    /// not-after ends the session.
    var chain: [Certificate] = []
    var outcome: AdmissionOutcome?
    /// The upgrade request's path and `Origin`, carried into every later record of this connection.
    var path: String?
    var origin: String?
    var upgraded = false
    /// Whether the end of this connection's admission has been audited already.
    var concluded = false
    var handshakeTimeout: Scheduled<Void>?
    /// The admitted session's topic permissions and limits.
    var permissions = MessagePermissions()
    /// The identity whose open-session count this connection holds (released when it closes).
    var sessionSlot: String?
    /// The subprotocol of the 101 answer, or the offers an upstream backend chooses from.
    var subprotocol = SubprotocolChoice.none
    /// permessage-deflate as agreed in the 101 answer; nil for none.
    var compression: PerMessageDeflate?
    /// The backend connection of an `upstream` route, opened before the client's upgrade is answered.
    var upstream: BackendRelay?
    /// Set when the connection closes (the client left, or the handshake deadline closed it): a verification
    /// still waiting for a thread is then not started. Read off the event loop, hence atomic.
    let closed = Atomic<Bool>(false)

    init(gateway: Gateway, runtime: GatewayRuntime, peer: String, address: String, eventLoop: any EventLoop) {
        self.gateway = gateway
        self.runtime = runtime
        self.id = String(UInt64.random(in: 0...UInt64.max), radix: 16)
        self.peer = peer
        self.address = address
        self.acceptedAt = .now()
        self.eventLoop = eventLoop
    }

    /// Admission for the upgrade request `head` (memoised: the upgrader and the responder may both ask).
    func evaluate(_ head: HTTPRequestHead, channel: any Channel) -> AdmissionOutcome {
        if let outcome { return outcome }
        path = String(head.uri.prefix { $0 != "?" && $0 != "#" })
        origin = head.headers["Origin"].first
        let outcome = decide(head, channel: channel)
        self.outcome = outcome
        return outcome
    }

    private func decide(_ head: HTTPRequestHead, channel: any Channel) -> AdmissionOutcome {
        let request = UpgradeRequest(
            method: head.method.rawValue, uri: head.uri, version: (head.version.major, head.version.minor),
            headers: head.headers.map { ($0.name, $0.value) })
        if runtime.configuration.onAuditFailure == .refuseNewSessions, gateway.auditLog.isFailing {
            return .refuse(
                Refusal(status: 503, reason: "audit_unavailable", message: "the gateway cannot audit new sessions right now",
                        detail: "the audit log is failing (on_audit_failure: refuse_new_sessions)",
                        headers: [("Retry-After", "1")]),
                identity: nil)
        }
        if let refusal = runtime.admission.validate(request) { return .refuse(refusal, identity: nil) }

        // On a full handshake our callback verified the chain moments ago. A resumed session skips the callback,
        // so its leaf comes from the TLS session and gets the checks that can have changed since: validity and
        // revocation, of the whole chain when the leaf's verified chain is still known.
        let facts: CertificateFacts
        if case .trusted(let verified) = verification, let presentedFacts {
            facts = presentedFacts
            chain = verified
        } else if let ssl = try? channel.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self),
            let der = try? ssl.peerCertificate?.toDERBytes(),
            let (chain, leafFacts) = resumedChain(leafDER: der)
        {
            resumed = true
            self.chain = chain
            let verdict =
                chain.isEmpty
                ? .refused(.untrusted, detail: "its chain cannot be rebuilt from the trusted CAs; reconnect without resuming")
                : runtime.verifier.recheck(chain: chain)
            if case .refused(let reason, let detail) = verdict {
                self.facts = leafFacts
                return .refuse(
                    Refusal(status: 403, reason: reason.rawValue, message: "certificate not accepted",
                            detail: "resumed TLS session: " + detail),
                    identity: nil)
            }
            facts = leafFacts
        } else {
            return .refuse(
                Refusal(status: 403, reason: "no_client_certificate", message: "a client certificate is required",
                        detail: "no verified client certificate on this TLS session"),
                identity: nil)
        }
        self.facts = facts
        let outcome = runtime.admission.decideValidated(request, certificate: facts)
        guard case .admit(let identity, let rule, let route) = outcome else { return outcome }
        switch Admission.subprotocol(for: request, on: route) {
        case .success(let choice):
            subprotocol = choice
        case .failure(var refusal):
            refusal.rule = rule
            return .refuse(refusal, identity: identity)
        }
        permissions = runtime.admission.policies.permissions(for: identity, route: route.path, origin: request.values("Origin").first)
        guard gateway.usage.reserveSession(identity.name, limit: permissions.limits.sessions) else {
            return .refuse(
                Refusal(status: 429, reason: "session_limit", message: "too many open sessions for this identity",
                        detail: "'\(identity.name)' already has \(permissions.limits.sessions ?? 0) open sessions (rule \(rule))",
                        rule: rule),
                identity: identity)
        }
        sessionSlot = identity.name
        return outcome
    }

    /// What the 101 answer says of the agreed extension and subprotocol.
    var upgradeAnswerHeaders: HTTPHeaders {
        var headers = HTTPHeaders()
        if let compression { headers.add(name: "Sec-WebSocket-Extensions", value: compression.responseHeader) }
        if case .chosen(let name) = subprotocol { headers.add(name: "Sec-WebSocket-Protocol", value: name) }
        return headers
    }

    /// The chain to re-check for a resumed session's leaf, and the leaf's facts: from the cache of verified
    /// chains when the leaf is in it, else parsed from the leaf alone.
    /// The whole chain of a resumed session's leaf: from the cache of verified chains, or rebuilt from the
    /// trust set and the intermediates seen in verified chains (after a reload the cache starts empty while
    /// the session tickets stay valid). The chain is empty when it cannot be rebuilt.
    private func resumedChain(leafDER der: [UInt8]) -> ([Certificate], CertificateFacts)? {
        if let known = runtime.verifiedChains.entry(forLeaf: der) { return (known.chain, known.value) }
        guard let leaf = try? Certificate(derEncoded: der) else { return nil }
        let chain = runtime.verifier.rebuildChain(leaf: leaf, seen: runtime.seenIntermediates.all) ?? []
        return (chain, CertificateFacts(certificate: leaf, derBytes: der))
    }

    /// An audit record pre-filled with what this connection knows: peer, session id, certificate, identity.
    func auditRecord(event: String, decision: String? = nil, reason: String? = nil, detail: String? = nil)
        -> AuditRecord
    {
        var record = AuditRecord(event: event, decision: decision, reason: reason, detail: detail)
        record.peer = peer
        record.session = id
        record.tlsVersion = tlsVersion
        if tlsCompleted { record.resumed = resumed }
        record.path = path
        record.origin = origin
        if let facts = facts ?? presentedFacts {
            record.subject = facts.subject
            record.fingerprint = facts.fingerprint
            record.serial = facts.serial
            let sans = facts.sanURIs + facts.sanDNSNames + facts.sanEmails
            record.sans = sans.isEmpty ? nil : sans
        }
        switch outcome {
        case .admit(let identity, let rule, _):
            record.identity = identity.name
            record.rule = rule
        case .refuse(let refusal, let identity):
            record.identity = identity?.name
            record.rule = refusal.rule
        case nil:
            break
        }
        return record
    }

    /// Facts of the leaf the client presented in a full handshake, verified or not, for audit records made
    /// before admission looks at the request.
    var presentedFacts: CertificateFacts?

    /// Records the end of admission once: the first refusal wins over later consequences of it.
    func conclude(_ record: AuditRecord) {
        guard !concluded else { return }
        concluded = true
        handshakeTimeout?.cancel()
        if record.decision == "deny", let reason = record.reason { gateway.metrics.refused(reason) }
        if record.event == "tls_refused" {
            // Before authentication anyone can cause these: they are aggregated, so a flood cannot fill the disk.
            gateway.metrics.handshakesFailed.increment()
            gateway.auditUnauthenticated(record, address: address)
        } else {
            gateway.audit(record)
        }
    }

    /// The earliest not-after of the verified chain: the session cannot outlive any of its certificates.
    var notValidAfter: Date? {
        chain.map(\.notValidAfter).min()
    }

    /// What a re-check needs, once this connection is an admitted session; nil before.
    var snapshot: SessionSnapshot? {
        guard upgraded, let facts, case .admit(let identity, _, let route) = outcome else { return nil }
        return SessionSnapshot(chain: chain, facts: facts, identity: identity.name, route: route.path, origin: origin)
    }
}

extension Connection {
    /// Opens the backend leg of an `upstream` route for an admitted client, passing its verified identity in
    /// headers. Nothing the client sent is forwarded, so it cannot forge them. On failure the outcome becomes
    /// a 502 refusal; the future says whether to upgrade.
    func connectUpstream(_ upstream: GatewayConfiguration.Upstream, head: HTTPRequestHead, channel: any Channel)
        -> EventLoopFuture<HTTPHeaders?>
    {
        guard case .admit(let identity, _, let route) = outcome else { return channel.eventLoop.makeSucceededFuture(nil) }
        var headers: [(String, String)] = [
            ("X-Portcullis-Identity", identity.name),
            ("X-Portcullis-Fingerprint", identity.certificate.fingerprint),
            ("X-Portcullis-Serial", identity.certificate.serial),
        ]
        if let origin { headers.append(("X-Portcullis-Origin", origin)) }
        var offers: [String] = []
        if case .askBackend(let offered) = subprotocol {
            offers = offered
            headers.append(("Sec-WebSocket-Protocol", offered.joined(separator: ", ")))
        }
        let query = head.uri.firstIndex(of: "?").map { String(head.uri[$0...]) } ?? ""
        let tls = upstream.secure
            ? GatewayClient.TLSOptions(
                certificateChain: upstream.certificate ?? runtime.configuration.tls.certificateChain,
                privateKey: upstream.key ?? runtime.configuration.tls.privateKey,
                trustRoots: upstream.trustRoots ?? runtime.configuration.tls.clientCA, serverName: upstream.host)
            : nil
        let identityHeaders = headers
        let maxMessageBytes = runtime.configuration.maxMessageBytes
        let eventLoop = channel.eventLoop
        let connecting = eventLoop.makeFutureWithTask {
            // On the client's event loop, so that the relay's two sides call each other directly.
            try await GatewayClient.connect(
                host: upstream.host, port: upstream.port, path: upstream.target + query, headers: identityHeaders, tls: tls,
                frameHandler: {
                    let relay = BackendRelay(maxMessageBytes: maxMessageBytes)
                    eventLoop.preconditionInEventLoop()
                    self.upstream = relay
                    return relay
                },
                group: eventLoop)
        }
        return connecting.map { answer -> HTTPHeaders? in
            if case .upgraded(let backend) = answer, self.upstream != nil {
                switch Admission.backendSubprotocol(backend.subprotocol, offers: offers, on: route) {
                case .success(let chosen):
                    self.subprotocol = chosen.map(SubprotocolChoice.chosen) ?? .none
                    return HTTPHeaders()
                case .failure(let mismatch):
                    self.upstream?.close(code: 1002)
                    self.upstream = nil
                    self.refuseUpstream("the backend \(upstream.url) answered the upgrade, but \(mismatch.detail)")
                    return nil
                }
            }
            self.refuseUpstream("the backend \(upstream.url) answered \(answer.status) to the upgrade")
            return nil
        }.recover { error in
            self.refuseUpstream("cannot reach the backend \(upstream.url): \(error)")
            return nil
        }
    }

    private func refuseUpstream(_ detail: String) {
        guard case .admit(let identity, let rule, _) = outcome else { return }
        outcome = .refuse(
            Refusal(status: 502, reason: "upstream_unavailable", message: "the backend is unavailable", detail: detail,
                    rule: rule),
            identity: identity)
    }

    /// The TLS verification callback: the full chain validation, revocation included, off the event loop's
    /// call stack (swift-certificates' verifier is async); the handshake waits on `promise`.
    ///
    /// A chain presented before under the same trust set is taken from the runtime's cache and only
    /// re-checked for validity and revocation, on the event loop: no parsing, no path building, no hop to
    /// another thread.
    func verify(
        _ presented: [NIOSSLCertificate], promise: EventLoopPromise<NIOSSLVerificationResultWithMetadata>
    ) {
        if let refusal = ClientCertificateVerifier.refusal(presenting: presented.count) {
            settle(refusal, promise: promise)
            return
        }
        var ders: [[UInt8]] = []
        ders.reserveCapacity(presented.count)
        for certificate in presented {
            guard let der = try? certificate.toDERBytes() else {
                refuseUnparseable(promise)
                return
            }
            ders.append(der)
        }
        let key = VerifiedChainCache<CertificateFacts>.Presented(certificates: ders)
        if let known = runtime.verifiedChains.entry(for: key) {
            presentedFacts = known.value
            settle(runtime.verifier.recheck(chain: known.chain) ?? .trusted(chain: known.chain), promise: promise)
            return
        }
        var certificates: [Certificate] = []
        for der in ders {
            guard let parsed = try? Certificate(derEncoded: der) else {
                refuseUnparseable(promise)
                return
            }
            if certificates.isEmpty { presentedFacts = CertificateFacts(certificate: parsed, derBytes: der) }
            certificates.append(parsed)
        }
        let runtime = self.runtime
        let eventLoop = self.eventLoop
        Task {
            let result =
                self.closed.load(ordering: .relaxed)
                ? .refused(.untrusted, detail: "the connection closed before its certificate was verified")
                : await runtime.verifier.verify(presented: certificates)
            eventLoop.execute {
                if case .trusted(let chain) = result, let facts = self.presentedFacts {
                    runtime.verifiedChains.insert(key, chain: chain, value: facts)
                    runtime.seenIntermediates.learn(from: chain)
                }
                self.settle(result, promise: promise)
            }
        }
    }

    private func settle(_ result: ClientVerification, promise: EventLoopPromise<NIOSSLVerificationResultWithMetadata>) {
        verification = result
        if case .trusted = result {
            promise.succeed(.certificateVerified(VerificationMetadata(nil)))
        } else {
            promise.succeed(.failed)
        }
    }

    private func refuseUnparseable(_ promise: EventLoopPromise<NIOSSLVerificationResultWithMetadata>) {
        settle(.refused(.untrusted, detail: "the client sent a certificate that does not parse"), promise: promise)
    }
}
