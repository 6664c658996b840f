import Foundation
import PortcullisAdmission
import PortcullisAudit
import PortcullisConfig
import PortcullisPKI
import PortcullisPolicy
import SwiftASN1
import Synchronization
import Testing
import X509

/// Every way through admission, event by event, without a socket: what the handlers are told to do, and the
/// one record that concludes each connection.
@Suite("Admission as a state machine")
struct AdmissionStateMachineTests {
    /// Session counts the test can read.
    final class CountingSlots: SessionSlots {
        let open = Mutex([String: Int]())
        func reserveSession(_ identity: String, limit: Int?) -> Bool {
            open.withLock { open in
                if let limit, open[identity, default: 0] >= limit { return false }
                open[identity, default: 0] += 1
                return true
            }
        }
        func releaseSession(_ identity: String) {
            open.withLock { $0[identity, default: 0] -= 1 }
        }
        func count(_ identity: String) -> Int { open.withLock { $0[identity, default: 0] } }
    }

    /// A CA, and what admission needs around it.
    struct Fixture {
        let authority: CertificateAuthority
        let slots = CountingSlots()
        let verifiedChains = VerifiedChainCache<CertificateFacts>()
        let environment: AdmissionEnvironment

        init(sessionLimit: Int? = nil, refusesWhileAuditFails: Bool = true) throws {
            authority = try CertificateAuthority.makeRoot(name: "Admission Test CA", key: try KeyAlgorithm.p256.generate())
            let rules = [
                PolicyRule(
                    name: "devices", identities: ["device-1"], routes: ["/v1/echo", "/v1/backend", "/v1/mqtt"],
                    allowMissingOrigin: true, limits: Limits(sessions: sessionLimit)),
                PolicyRule(
                    name: "console", identities: ["operator"], routes: ["/v1/echo"],
                    origins: OriginMatcher(["https://console.example.test"])),
            ]
            let routes: [GatewayConfiguration.Route] = [
                .init(path: "/v1/echo", kind: .echo),
                .init(path: "/v1/backend", kind: .upstream, upstream: .init(url: "ws://127.0.0.1:9/backend"),
                      subprotocols: ["mqtt"]),
                .init(path: "/v1/mqtt", kind: .echo, subprotocols: ["mqtt"], subprotocolRequired: true),
            ]
            environment = AdmissionEnvironment(
                admission: Admission(
                    routes: routes,
                    policies: PolicySet(mappings: [IdentityMappingRule(source: .commonName)], rules: rules),
                    gatewayOrigins: OriginMatcher([]), maxHeaderBytes: 8192),
                verifier: ClientCertificateVerifier(trust: ClientTrust(roots: [authority.certificate])),
                verifiedChains: verifiedChains, seenIntermediates: SeenIntermediates(), sessions: slots,
                refusesWhileAuditFails: refusesWhileAuditFails, handshakeTimeout: 10)
        }

        func machine() -> AdmissionStateMachine {
            AdmissionStateMachine(environment: environment, peer: "192.0.2.7:50000", sessionID: "5e55")
        }

        func certificate(_ name: String, notValidAfter: Date = Date().addingTimeInterval(86400)) throws -> Certificate {
            try authority.issue(
                commonName: name, publicKey: try KeyAlgorithm.p256.generate().publicKey, profile: .client(),
                notValidAfter: notValidAfter)
        }

        /// A machine past a full handshake whose chain the verifier accepted.
        func verified(_ name: String) throws -> AdmissionStateMachine {
            let leaf = try certificate(name)
            var machine = machine()
            _ = machine.handle(.certificateVerified(.trusted(chain: [leaf, authority.certificate]), presented: facts(leaf)))
            _ = machine.handle(.handshakeCompleted(tlsVersion: "TLSv1.3"))
            return machine
        }
    }

    static func facts(_ certificate: Certificate) -> CertificateFacts {
        CertificateFacts(certificate: certificate, derBytes: der(certificate))
    }

    static func der(_ certificate: Certificate) -> [UInt8] {
        var serializer = DER.Serializer()
        try! serializer.serialize(certificate)
        return serializer.serializedBytes
    }

    static func request(
        method: String = "GET", path: String = "/v1/echo", origin: String? = nil, protocols: String? = nil,
        drop: String? = nil
    ) -> UpgradeRequest {
        var headers: [(name: String, value: String)] = [
            ("Host", "gateway.example.test"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
        ]
        if let origin { headers.append(("Origin", origin)) }
        if let protocols { headers.append(("Sec-WebSocket-Protocol", protocols)) }
        return UpgradeRequest(method: method, uri: path + "?v=1", headers: headers.filter { $0.name != drop })
    }

    /// The actions as short words, so expectations read as the sequence the handlers see.
    static func describe(_ actions: [AdmissionAction]) -> [String] {
        actions.map { action in
            switch action {
            case .countHandshake(let resumed): resumed ? "count resumed" : "count full"
            case .readResumedLeaf: "read resumed leaf"
            case .conclude(let record): "conclude \(record.event) \(record.decision ?? "-") \(record.reason ?? "-")"
            case .respond(let refusal): "respond \(refusal.status) \(refusal.reason)"
            case .close: "close"
            case .upgrade(let session): "upgrade \(session.identity.name)"
            case .decline: "decline"
            case .connectBackend(let session): "connect backend for \(session.identity.name)"
            case .closeBackend(let code): "close backend \(code)"
            case .startSession(let session): "start session \(session.identity.name)"
            }
        }
    }

    static func concluded(_ actions: [AdmissionAction]) -> AuditRecord? {
        for case .conclude(let record) in actions { return record }
        return nil
    }

    /// Declines the upgrade, then answers the request the responder receives: the refusal and its record.
    static func refusal(
        _ machine: inout AdmissionStateMachine, _ request: UpgradeRequest, auditFailing: Bool = false
    ) -> (response: String, record: AuditRecord?, refusal: Refusal?) {
        let upgrade = describe(machine.handle(.upgradeRequested(request, auditFailing: auditFailing)))
        #expect(upgrade == ["decline"])
        let answer = machine.handle(.requestNotUpgraded(request, auditFailing: auditFailing))
        var refusal: Refusal?
        for case .respond(let decided) in answer { refusal = decided }
        return (describe(answer).joined(separator: "; "), concluded(answer), refusal)
    }

    @Test("Admitted: upgrade, then the session starts with the one allow record; closing releases its slot")
    func admitted() throws {
        let fixture = try Fixture()
        var machine = try fixture.verified("device-1")
        let upgrade = machine.handle(.upgradeRequested(Self.request(), auditFailing: false))
        #expect(Self.describe(upgrade) == ["upgrade device-1"])
        #expect(fixture.slots.count("device-1") == 1)
        let opened = machine.handle(.upgraded)
        #expect(Self.describe(opened) == ["start session device-1", "conclude session_opened allow admitted"])
        let record = try #require(Self.concluded(opened))
        #expect(record.identity == "device-1" && record.rule == "devices" && record.path == "/v1/echo")
        #expect(record.tlsVersion == "TLSv1.3" && record.resumed == false && record.peer == "192.0.2.7:50000")
        #expect(record.subject == "CN=device-1" && record.session == "5e55")
        let session = try #require(machine.session)
        #expect(session.chain.count == 2 && session.recordTemplate.identity == "device-1")
        // Deadline and shutdown belong to the session now; closing ends it without another record.
        #expect(machine.handle(.deadlinePassed).isEmpty)
        #expect(machine.handle(.shutdown).isEmpty)
        #expect(machine.handle(.closed).isEmpty)
        #expect(fixture.slots.count("device-1") == 0)
    }

    @Test("Each refusal of the request is answered with its status and concluded once, with what was known")
    func requestRefusals() throws {
        let fixture = try Fixture()
        let cases: [(String, UpgradeRequest, String)] = [
            ("device-1", Self.request(method: "POST"), "405 method_not_allowed"),
            ("device-1", Self.request(drop: "Host"), "400 invalid_host_header"),
            ("device-1", Self.request(drop: "Upgrade"), "426 upgrade_required"),
            ("device-1", Self.request(drop: "Sec-WebSocket-Key"), "400 invalid_websocket_key"),
            ("device-1", Self.request(path: "/nowhere"), "404 unknown_route"),
            ("stranger", Self.request(), "403 no_matching_rule"),
            ("operator", Self.request(origin: "https://evil.example.test"), "403 origin_not_allowed"),
            ("device-1", Self.request(path: "/v1/mqtt", protocols: "chat"), "400 subprotocol_required"),
        ]
        for (name, request, expected) in cases {
            var machine = try fixture.verified(name)
            let (response, record, _) = Self.refusal(&machine, request)
            #expect(response == "conclude http_refused deny \(expected.split(separator: " ")[1]); respond \(expected)", "\(request.method) \(request.uri)")
            #expect(record?.status == Int(expected.prefix(3)))
            #expect(record?.subject == "CN=\(name)" && record?.path != nil)
            // The connection then closes: nothing more is recorded, and no slot stays taken.
            #expect(machine.handle(.closed).allSatisfy { if case .conclude = $0 { false } else { true } })
        }
        #expect(fixture.slots.count("device-1") == 0)
    }

    @Test("A refusal after the identity is known names it and the rule; a subprotocol refusal names the rule")
    func refusalsNameIdentityAndRule() throws {
        let fixture = try Fixture()
        var console = try fixture.verified("operator")
        let origin = Self.refusal(&console, Self.request(origin: "https://evil.example.test"))
        #expect(origin.record?.identity == "operator" && origin.record?.origin == "https://evil.example.test")
        var device = try fixture.verified("device-1")
        let subprotocol = Self.refusal(&device, Self.request(path: "/v1/mqtt"))
        #expect(subprotocol.record?.identity == "device-1" && subprotocol.record?.rule == "devices")
    }

    @Test("Past the identity's session limit: 429, and the slot taken by the admitted one is freed on close")
    func sessionLimit() throws {
        let fixture = try Fixture(sessionLimit: 1)
        var first = try fixture.verified("device-1")
        #expect(Self.describe(first.handle(.upgradeRequested(Self.request(), auditFailing: false))) == ["upgrade device-1"])
        var second = try fixture.verified("device-1")
        let refused = Self.refusal(&second, Self.request())
        #expect(refused.response == "conclude http_refused deny session_limit; respond 429 session_limit")
        #expect(refused.refusal?.rule == "devices")
        _ = first.handle(.closed)
        #expect(fixture.slots.count("device-1") == 0)
        var third = try fixture.verified("device-1")
        #expect(Self.describe(third.handle(.upgradeRequested(Self.request(), auditFailing: false))) == ["upgrade device-1"])
    }

    @Test("While the audit log fails under refuse_new_sessions: 503 with Retry-After; under continue: admitted")
    func auditFailing() throws {
        var refusing = try Fixture().verified("device-1")
        let refused = Self.refusal(&refusing, Self.request(), auditFailing: true)
        #expect(refused.response == "conclude http_refused deny audit_unavailable; respond 503 audit_unavailable")
        #expect(refused.refusal?.headers.contains { $0.0 == "Retry-After" } == true)
        var continuing = try Fixture(refusesWhileAuditFails: false).verified("device-1")
        #expect(Self.describe(continuing.handle(.upgradeRequested(Self.request(), auditFailing: true))) == ["upgrade device-1"])
    }

    @Test("A request the upgrader never offered (no Upgrade header) is decided at the responder")
    func notAnUpgrade() throws {
        var machine = try Fixture().verified("device-1")
        let answer = machine.handle(.requestNotUpgraded(Self.request(drop: "Upgrade"), auditFailing: false))
        #expect(Self.describe(answer) == ["conclude http_refused deny upgrade_required", "respond 426 upgrade_required"])
    }

    @Test("Admitted, but the upgrader's own checks declined it: 400 invalid_upgrade_request")
    func upgraderStricter() throws {
        let fixture = try Fixture()
        var machine = try fixture.verified("device-1")
        _ = machine.handle(.upgradeRequested(Self.request(), auditFailing: false))
        let answer = machine.handle(.requestNotUpgraded(Self.request(), auditFailing: false))
        #expect(Self.describe(answer) == ["conclude http_refused deny invalid_upgrade_request", "respond 400 invalid_upgrade_request"])
        #expect(Self.concluded(answer)?.identity == "device-1")
        _ = machine.handle(.closed)
        #expect(fixture.slots.count("device-1") == 0)
    }

    @Test("TLS failures: the verifier's own refusal wins; else the TLS library's error is classified")
    func handshakeFailures() throws {
        let fixture = try Fixture()
        var revoked = fixture.machine()
        _ = revoked.handle(.certificateVerified(.refused(.revoked, detail: "serial 01 is revoked"), presented: nil))
        let failed = revoked.handle(.handshakeFailed(error: "handshakeFailed(CERTIFICATE_VERIFY_FAILED)"))
        #expect(Self.describe(failed) == ["conclude tls_refused deny certificate_revoked", "close"])
        #expect(Self.concluded(failed)?.detail == "serial 01 is revoked")
        let classified: [(String, String)] = [
            ("sslError([PEER_DID_NOT_RETURN_A_CERTIFICATE])", "no_client_certificate"),
            ("sslError([UNSUPPORTED_PROTOCOL])", "tls_version_not_allowed"),
            ("sslError([NO_SHARED_CIPHER])", "no_shared_cipher"),
            ("sslError([HTTP_REQUEST])", "not_tls"),
            ("sslError([WRONG_VERSION_NUMBER])", "not_tls"),
            ("something else entirely", "tls_handshake_failed"),
        ]
        for (error, reason) in classified {
            var machine = fixture.machine()
            #expect(Self.describe(machine.handle(.handshakeFailed(error: error))) == ["conclude tls_refused deny \(reason)", "close"])
            // The close that follows is a consequence, not a second conclusion.
            #expect(machine.handle(.closed).isEmpty)
        }
        // After the handshake, a TLS error is the session's business, not admission's.
        var done = try fixture.verified("device-1")
        #expect(done.handle(.handshakeFailed(error: "sslError([DECRYPTION_FAILED])")).isEmpty)
    }

    @Test("Deadline, shutdown and close before the upgrade are each concluded by where the connection got to")
    func unfinished() throws {
        let fixture = try Fixture()
        var handshaking = fixture.machine()
        #expect(Self.describe(handshaking.handle(.deadlinePassed)) == ["conclude tls_refused deny handshake_timeout", "close"])
        var waiting = try fixture.verified("device-1")
        #expect(Self.describe(waiting.handle(.deadlinePassed)) == ["conclude http_refused deny handshake_timeout", "close"])
        var draining = try fixture.verified("device-1")
        #expect(Self.describe(draining.handle(.shutdown)) == ["conclude http_refused deny shutdown", "close"])
        var leaving = fixture.machine()
        #expect(Self.describe(leaving.handle(.closed)) == ["conclude tls_refused deny handshake_incomplete"])
        var idle = try fixture.verified("device-1")
        #expect(Self.describe(idle.handle(.closed)) == ["conclude http_refused deny closed_before_upgrade"])
        var malformed = try fixture.verified("device-1")
        let answer = malformed.handle(.unreadableRequest(tooLarge: false, detail: "HTTP parse error: invalid header"))
        #expect(Self.describe(answer) == ["conclude http_refused deny malformed_request", "respond 400 malformed_request"])
        #expect(Self.concluded(answer)?.status == 400)
        var huge = try fixture.verified("device-1")
        let overflow = huge.handle(.unreadableRequest(tooLarge: true, detail: "HTTP parse error: headerOverflow"))
        #expect(Self.describe(overflow) == ["conclude http_refused deny headers_too_large", "respond 431 headers_too_large"])
        #expect(Self.concluded(overflow)?.detail == "request head over 8192 bytes, stopped while parsing")
    }

    @Test("Resumed: the leaf's chain is found, or rebuilt, and re-checked; without a leaf or chain it is refused")
    func resumed() throws {
        let fixture = try Fixture()
        // A chain verified earlier in a full handshake is in the cache.
        let leaf = try fixture.certificate("device-1")
        fixture.verifiedChains.insert(
            .init(certificates: [Self.der(leaf)]), chain: [leaf, fixture.authority.certificate], value: Self.facts(leaf))
        var cached = fixture.machine()
        #expect(Self.describe(cached.handle(.handshakeCompleted(tlsVersion: "TLSv1.3"))) == ["count resumed", "read resumed leaf"])
        _ = cached.handle(.resumedLeaf(der: Self.der(leaf)))
        #expect(Self.describe(cached.handle(.upgradeRequested(Self.request(), auditFailing: false))) == ["upgrade device-1"])
        let opened = cached.handle(.upgraded)
        #expect(Self.concluded(opened)?.resumed == true)
        #expect(cached.session?.chain.count == 2)

        // Not in the cache (a reload emptied it): rebuilt from the trusted CA.
        let uncached = Self.der(try fixture.certificate("device-1"))
        #expect(fixture.verifiedChains.entry(forLeaf: uncached) == nil)
        var rebuilt = fixture.machine()
        _ = rebuilt.handle(.handshakeCompleted(tlsVersion: "TLSv1.3"))
        _ = rebuilt.handle(.resumedLeaf(der: uncached))
        #expect(Self.describe(rebuilt.handle(.upgradeRequested(Self.request(), auditFailing: false))) == ["upgrade device-1"])
        // The next resumption finds it without rebuilding.
        #expect(fixture.verifiedChains.entry(forLeaf: uncached)?.chain.count == 2)

        // Expired since: refused over the whole chain, naming the resumed session.
        var expired = fixture.machine()
        _ = expired.handle(.handshakeCompleted(tlsVersion: "TLSv1.3"))
        _ = expired.handle(.resumedLeaf(der: Self.der(try fixture.certificate("device-1", notValidAfter: Date().addingTimeInterval(-60)))))
        let stale = Self.refusal(&expired, Self.request())
        #expect(stale.response == "conclude http_refused deny certificate_expired; respond 403 certificate_expired")
        #expect(stale.record?.detail?.hasPrefix("resumed TLS session: ") == true)

        // Issued by a CA the gateway does not trust: no chain can be rebuilt.
        let stranger = try CertificateAuthority.makeRoot(name: "Other CA", key: try KeyAlgorithm.p256.generate())
        let foreign = try stranger.issue(
            commonName: "device-1", publicKey: try KeyAlgorithm.p256.generate().publicKey, profile: .client(),
            notValidAfter: Date().addingTimeInterval(86400))
        var untrusted = fixture.machine()
        _ = untrusted.handle(.handshakeCompleted(tlsVersion: "TLSv1.3"))
        _ = untrusted.handle(.resumedLeaf(der: Self.der(foreign)))
        #expect(Self.refusal(&untrusted, Self.request()).response == "conclude http_refused deny certificate_untrusted; respond 403 certificate_untrusted")

        // No leaf on the resumed session at all.
        var bare = fixture.machine()
        _ = bare.handle(.handshakeCompleted(tlsVersion: "TLSv1.3"))
        _ = bare.handle(.resumedLeaf(der: nil))
        #expect(Self.refusal(&bare, Self.request()).response == "conclude http_refused deny no_client_certificate; respond 403 no_client_certificate")
    }

    @Test("Upstream: the backend is connected before the upgrade; its failure or a wrong subprotocol is a 502")
    func upstream() throws {
        let fixture = try Fixture()
        let request = Self.request(path: "/v1/backend", protocols: "mqtt, chat")
        var accepted = try fixture.verified("device-1")
        #expect(Self.describe(accepted.handle(.upgradeRequested(request, auditFailing: false))) == ["connect backend for device-1"])
        let upgrade = accepted.handle(.backendAccepted(subprotocol: "mqtt"))
        guard case .upgrade(let session) = try #require(upgrade.first) else { Issue.record("no upgrade: \(upgrade)"); return }
        #expect(session.subprotocol == .chosen("mqtt"))

        var unreachable = try fixture.verified("device-1")
        _ = unreachable.handle(.upgradeRequested(request, auditFailing: false))
        #expect(Self.describe(unreachable.handle(.backendFailed(detail: "connection refused"))) == ["decline"])
        let answer = unreachable.handle(.requestNotUpgraded(request, auditFailing: false))
        #expect(Self.describe(answer) == ["conclude http_refused deny upstream_unavailable", "respond 502 upstream_unavailable"])
        #expect(Self.concluded(answer)?.rule == "devices" && Self.concluded(answer)?.detail == "connection refused")

        var mismatched = try fixture.verified("device-1")
        _ = mismatched.handle(.upgradeRequested(request, auditFailing: false))
        #expect(Self.describe(mismatched.handle(.backendAccepted(subprotocol: "stomp"))) == ["close backend 1002", "decline"])

        // The client leaves while the backend connects: the backend leg goes too, whenever it answers.
        var left = try fixture.verified("device-1")
        _ = left.handle(.upgradeRequested(request, auditFailing: false))
        #expect(Self.describe(left.handle(.closed)) == ["close backend 1001", "conclude http_refused deny closed_before_upgrade"])
        #expect(Self.describe(left.handle(.backendAccepted(subprotocol: "mqtt"))) == ["close backend 1001", "decline"])
        // Refused or not, every connection gives its session slot back when it closes.
        #expect(fixture.slots.count("device-1") == 3)
        for var machine in [accepted, unreachable, mismatched] { _ = machine.handle(.closed) }
        #expect(fixture.slots.count("device-1") == 0)
    }

    @Test("Events out of order change nothing: a second request, an upgrade that was not agreed")
    func outOfOrder() throws {
        let fixture = try Fixture()
        var early = fixture.machine()
        #expect(Self.describe(early.handle(.upgradeRequested(Self.request(), auditFailing: false))) == ["decline"])
        #expect(Self.describe(early.handle(.upgraded)) == ["close"])
        var twice = try fixture.verified("device-1")
        _ = twice.handle(.upgradeRequested(Self.request(), auditFailing: false))
        #expect(Self.describe(twice.handle(.upgradeRequested(Self.request(), auditFailing: false))) == ["decline"])
        #expect(fixture.slots.count("device-1") == 1)
    }
}
