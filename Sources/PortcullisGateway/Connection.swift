import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import PortcullisAdmission
import PortcullisAudit
import PortcullisClient
import PortcullisConfig
import PortcullisPKI
import PortcullisPolicy
import Synchronization
import SwiftASN1
import X509

/// One accepted connection from TCP accept to session end: its admission state machine, and the glue that
/// carries out what the machine decides (records, metrics, closing, the upstream backend leg).
///
/// Only ever touched on the channel's event loop (the handlers, the verification callback's completion and
/// the upgrader's closures all run there), which is why the unchecked `Sendable` is sound.
final class Connection: @unchecked Sendable {
    let gateway: Gateway
    /// The runtime (TLS context, trust, policies) this connection was accepted under.
    let runtime: GatewayRuntime
    /// The client's address without its port: what connection limits and refusal aggregation count by. A trusted
    /// load balancer's PROXY header replaces its own address with the client's (``carry(_:port:)``).
    private(set) var address: String
    /// The address and port the connection came from: the client's, or a load balancer's.
    let peer: String
    let acceptedAt: NIODeadline
    let eventLoop: any EventLoop
    /// The timers of the connection's event loop.
    let timers: LoopTimers
    private var admission: AdmissionStateMachine
    var handshakeTimeout: LoopTimers.Timer?
    /// permessage-deflate as agreed in the 101 answer; nil for none.
    private(set) var compression: PerMessageDeflate?
    /// The backend connection of an `upstream` route, opened before the client's upgrade is answered.
    private(set) var upstream: BackendRelay?
    /// Set when the connection closes (the client left, or the handshake deadline closed it): a verification
    /// still waiting for a thread is then not started. Read off the event loop, hence atomic.
    let closed = Atomic<Bool>(false)

    init(gateway: Gateway, runtime: GatewayRuntime, peer: String, address: String, eventLoop: any EventLoop) {
        self.gateway = gateway
        self.runtime = runtime
        self.address = address
        self.peer = peer
        self.acceptedAt = .now()
        self.eventLoop = eventLoop
        self.timers = gateway.timers(for: eventLoop)
        admission = AdmissionStateMachine(
            environment: AdmissionEnvironment(
                admission: runtime.admission, verifier: runtime.verifier, verifiedChains: runtime.verifiedChains,
                seenIntermediates: runtime.seenIntermediates, sessions: gateway.usage,
                refusesWhileAuditFails: runtime.configuration.onAuditFailure == .refuseNewSessions,
                handshakeTimeout: runtime.configuration.handshakeTimeout),
            peer: peer, sessionID: String(UInt64.random(in: 0...UInt64.max), radix: 16))
    }

    /// The admitted session, once the connection is one.
    var session: AdmittedSession? { admission.session }
    var tlsCompleted: Bool { admission.tlsCompleted }

    /// Feeds `event` to admission and carries out what every handler does alike (records, metrics, closing,
    /// the backend leg); returns the actions only the calling handler can carry out.
    @discardableResult
    func handle(_ event: AdmissionEvent, channel: any Channel) -> [AdmissionAction] {
        var left: [AdmissionAction] = []
        for action in admission.handle(event) {
            switch action {
            case .countHandshake(let resumed):
                let metrics = gateway.metrics
                (resumed ? metrics.handshakesResumed : metrics.handshakesFull).increment()
                metrics.handshakeDuration.recordNanoseconds(Int64((NIODeadline.now() - acceptedAt).nanoseconds))
            case .readResumedLeaf:
                let ssl = try? channel.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)
                left += handle(.resumedLeaf(der: try? ssl?.peerCertificate?.toDERBytes()), channel: channel)
            case .conclude(let record):
                conclude(record)
            case .close:
                channel.close(promise: nil)
            case .closeBackend(let code):
                upstream?.close(code: code)
                upstream = nil
            case .respond, .upgrade, .decline, .connectBackend, .startSession:
                left.append(action)
            }
        }
        return left
    }

    /// Writes the record that concludes admission, and counts a refusal.
    private func conclude(_ record: AuditRecord) {
        timers.cancel(handshakeTimeout)
        handshakeTimeout = nil
        if record.decision == "deny", let reason = record.reason { gateway.metrics.refused(reason) }
        if record.event == "tls_refused" || record.event == "connection_refused" {
            // Before authentication anyone can cause these: they are aggregated, so a flood cannot fill the disk.
            if record.event == "tls_refused" { gateway.metrics.handshakesFailed.increment() }
            gateway.auditUnauthenticated(record, address: address)
        } else {
            gateway.audit(record)
        }
    }

    /// Takes the client a trusted load balancer's PROXY header named: its address for the records, the limits and
    /// refusal aggregation, with the balancer's as `proxy`.
    func carry(_ clientAddress: String, port: Int, channel: any Channel) {
        let peer = clientAddress.contains(":") ? "[\(clientAddress)]:\(port)" : "\(clientAddress):\(port)"
        handle(.clientCarried(peer: peer, proxy: self.peer), channel: channel)
        address = clientAddress
    }

    /// Agrees permessage-deflate for `session` when its route has it and the client offers it.
    func negotiateCompression(for session: AdmittedSession, offers: [String]) {
        let configuration = runtime.configuration
        guard configuration.compression(of: session.route) == .perMessageDeflate else { return }
        compression = PerMessageDeflate.negotiate(offers: offers, contextTakeover: configuration.compressionContextTakeover)
    }

    /// What the 101 answer says of the agreed extension and subprotocol.
    func upgradeAnswerHeaders(_ session: AdmittedSession) -> HTTPHeaders {
        var headers: HTTPHeaders = ["Date": HTTPDate.format()]
        if let compression { headers.add(name: "Sec-WebSocket-Extensions", value: compression.responseHeader) }
        if case .chosen(let name) = session.subprotocol { headers.add(name: "Sec-WebSocket-Protocol", value: name) }
        return headers
    }
}

extension UpgradeRequest {
    init(_ head: HTTPRequestHead) {
        self.init(
            method: head.method.rawValue, uri: head.uri, version: (head.version.major, head.version.minor),
            headers: head.headers.map { ($0.name, $0.value) })
    }
}

extension Connection {
    /// Opens the backend leg of an `upstream` route for an admitted client, passing its verified identity in
    /// headers. Nothing the client sent is forwarded, so it cannot forge them. The future says whether to
    /// upgrade, with the 101 answer's headers; admission refuses 502 when the backend is not there.
    func connectUpstream(for session: AdmittedSession, head: HTTPRequestHead, channel: any Channel)
        -> EventLoopFuture<HTTPHeaders?>
    {
        guard let upstream = session.route.upstream else { return channel.eventLoop.makeSucceededFuture(nil) }
        let identity = session.identity
        var headers: [(String, String)] = [
            ("X-Portcullis-Identity", identity.name),
            ("X-Portcullis-Fingerprint", identity.certificate.fingerprint),
            ("X-Portcullis-Serial", identity.certificate.serial),
        ]
        if let origin = session.origin { headers.append(("X-Portcullis-Origin", origin)) }
        if case .askBackend(let offered) = session.subprotocol {
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
        return connecting.map { answer -> AdmissionEvent in
            if case .upgraded(let backend) = answer, self.upstream != nil {
                return .backendAccepted(subprotocol: backend.subprotocol)
            }
            return .backendFailed(detail: "the backend \(upstream.url) answered \(answer.status) to the upgrade")
        }.recover { error in
            .backendFailed(detail: "cannot reach the backend \(upstream.url): \(error)")
        }.map { event in
            for case .upgrade(let session) in self.handle(event, channel: channel) {
                return self.upgradeAnswerHeaders(session)
            }
            return nil
        }
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
            settle(refusal, presented: nil, promise: promise)
            return
        }
        var ders: [[UInt8]] = []
        ders.reserveCapacity(presented.count)
        for certificate in presented {
            guard let der = try? certificate.toDERBytes() else {
                settle(unparseable, presented: nil, promise: promise)
                return
            }
            ders.append(der)
        }
        let key = VerifiedChainCache<CertificateFacts>.Presented(certificates: ders)
        if let known = runtime.verifiedChains.entry(for: key) {
            settle(
                runtime.verifier.recheck(chain: known.chain) ?? .trusted(chain: known.chain), presented: known.value,
                promise: promise)
            return
        }
        var certificates: [Certificate] = []
        var presentedFacts: CertificateFacts?
        for der in ders {
            guard let parsed = try? Certificate(derEncoded: der) else {
                settle(unparseable, presented: presentedFacts, promise: promise)
                return
            }
            if certificates.isEmpty { presentedFacts = CertificateFacts(certificate: parsed, derBytes: der) }
            certificates.append(parsed)
        }
        let runtime = self.runtime
        let eventLoop = self.eventLoop
        let leafFacts = presentedFacts
        Task {
            let result =
                self.closed.load(ordering: .relaxed)
                ? .refused(.untrusted, detail: "the connection closed before its certificate was verified")
                : await runtime.verifier.verify(presented: certificates)
            eventLoop.execute {
                if case .trusted(let chain) = result, let leafFacts {
                    runtime.verifiedChains.insert(key, chain: chain, value: leafFacts)
                    runtime.seenIntermediates.learn(from: chain)
                }
                self.settle(result, presented: leafFacts, promise: promise)
            }
        }
    }

    private func settle(
        _ result: ClientVerification, presented: CertificateFacts?,
        promise: EventLoopPromise<NIOSSLVerificationResultWithMetadata>
    ) {
        _ = admission.handle(.certificateVerified(result, presented: presented))
        if case .trusted = result {
            promise.succeed(.certificateVerified(VerificationMetadata(nil)))
        } else {
            promise.succeed(.failed)
        }
    }

    private var unparseable: ClientVerification {
        .refused(.untrusted, detail: "the client sent a certificate that does not parse")
    }
}
