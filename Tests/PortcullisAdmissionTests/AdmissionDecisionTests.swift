import PortcullisAdmission
import PortcullisConfig
import PortcullisPolicy
import Testing

/// The admission decision as a pure function: no sockets, no event loop.
@Suite("Admission decisions without sockets")
struct AdmissionDecisionTests {
    static let admission = Admission(
        routes: [.init(path: "/v1/echo", kind: .echo)],
        policies: PolicySet(
            mappings: [IdentityMappingRule(source: .commonName)],
            rules: [PolicyRule(name: "devices", identities: ["demo-device"], routes: ["/v1/echo"], allowMissingOrigin: true)]),
        gatewayOrigins: OriginMatcher(["https://console.example.test"]),
        maxHeaderBytes: 1024)

    static let certificate = CertificateFacts(commonName: "demo-device", subject: "CN=demo-device", fingerprint: "00", serial: "01")

    static func request(
        method: String = "GET", uri: String = "/v1/echo", version: (Int, Int) = (1, 1),
        drop: Set<String> = [], add: [(String, String)] = []
    ) -> UpgradeRequest {
        let base: [(String, String)] = [
            ("Host", "localhost"), ("Upgrade", "websocket"), ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
        ]
        return UpgradeRequest(
            method: method, uri: uri, version: version,
            headers: base.filter { !drop.contains($0.0) }.map { (name: $0.0, value: $0.1) } + add.map { (name: $0.0, value: $0.1) })
    }

    func outcome(_ request: UpgradeRequest) -> String {
        switch Self.admission.decide(request, certificate: Self.certificate) {
        case .admit(let identity, let rule, _): "admit \(identity.name) by \(rule)"
        case .refuse(let refusal, _): "\(refusal.status) \(refusal.reason)"
        }
    }

    @Test("A proper upgrade (query string and token lists included) is admitted")
    func admitted() {
        #expect(outcome(Self.request()) == "admit demo-device by devices")
        #expect(outcome(Self.request(uri: "/v1/echo?client=7")) == "admit demo-device by devices")
        #expect(outcome(Self.request(add: [("Origin", "https://console.example.test")])) == "admit demo-device by devices")
    }

    @Test("An absolute http or https URI names its path as the route (RFC 6455 §4.2.1, RFC 9112 §3.2.2)")
    func absoluteFormTargets() {
        #expect(outcome(Self.request(uri: "https://localhost:8443/v1/echo")) == "admit demo-device by devices")
        #expect(outcome(Self.request(uri: "HTTP://gateway.example/v1/echo?client=7#x")) == "admit demo-device by devices")
        // Only the path counts: the authority is not a way around the route table, and nothing else is absolute.
        #expect(outcome(Self.request(uri: "https://localhost/v1/echo/more")) == "404 unknown_route")
        #expect(outcome(Self.request(uri: "https://localhost")) == "404 unknown_route")
        #expect(outcome(Self.request(uri: "https://localhost?/v1/echo")) == "404 unknown_route")
        #expect(outcome(Self.request(uri: "wss://localhost/v1/echo")) == "404 unknown_route")
        #expect(outcome(Self.request(uri: "*")) == "404 unknown_route")
        #expect(outcome(Self.request(uri: "//localhost/v1/echo")) == "404 unknown_route")
    }

    @Test("Refusals come in admission order, each with its status and code")
    func refusals() {
        #expect(outcome(Self.request(method: "POST")) == "405 method_not_allowed")
        #expect(outcome(Self.request(version: (1, 0))) == "400 invalid_upgrade_request")
        // RFC 9112 §3.2: no Host, an empty one or two of them is a bad request.
        #expect(outcome(Self.request(drop: ["Host"])) == "400 invalid_host_header")
        #expect(outcome(Self.request(drop: ["Host"], add: [("Host", "")])) == "400 invalid_host_header")
        #expect(outcome(Self.request(add: [("Host", "other.example")])) == "400 invalid_host_header")
        #expect(outcome(Self.request(drop: ["Upgrade"])) == "426 upgrade_required")
        #expect(outcome(Self.request(drop: ["Connection"])) == "400 invalid_upgrade_request")
        #expect(outcome(Self.request(drop: ["Sec-WebSocket-Version"])) == "426 unsupported_websocket_version")
        #expect(outcome(Self.request(drop: ["Sec-WebSocket-Key"])) == "400 invalid_websocket_key")
        #expect(outcome(Self.request(drop: ["Sec-WebSocket-Key"], add: [("Sec-WebSocket-Key", "c2hvcnQ=")])) == "400 invalid_websocket_key")
        #expect(outcome(Self.request(add: [("Origin", "https://a.example"), ("Origin", "https://b.example")])) == "400 multiple_origin_headers")
        #expect(outcome(Self.request(add: [("X-Big", String(repeating: "x", count: 2000))])) == "431 headers_too_large")
        #expect(outcome(Self.request(uri: "/v2/echo")) == "404 unknown_route")
        #expect(outcome(Self.request(add: [("Origin", "https://evil.example")])) == "403 origin_not_allowed")
        // A bad request is refused as such even when the route is unknown too: validation comes first.
        #expect(outcome(Self.request(method: "PUT", uri: "/nowhere")) == "405 method_not_allowed")
    }

    @Test("Subprotocols: the first the client offers among the route's, none, the backend's choice, or 400 when required")
    func subprotocols() {
        typealias Route = GatewayConfiguration.Route
        func choice(_ offers: [String], _ route: Route) -> String {
            let request = Self.request(add: offers.map { ("Sec-WebSocket-Protocol", $0) })
            switch Admission.subprotocol(for: request, on: route) {
            case .success(.none): return "none"
            case .success(.chosen(let name)): return "chosen \(name)"
            case .success(.askBackend(let offers)): return "ask \(offers.joined(separator: " "))"
            case .failure(let refusal): return "\(refusal.status) \(refusal.reason)"
            }
        }
        let echo = Route(path: "/v1/echo", kind: .echo, subprotocols: ["v2.portcullis", "mqtt"])
        // The client's order of preference decides among those the route accepts; names are case-sensitive.
        #expect(choice(["graphql-ws, mqtt", "v2.portcullis"], echo) == "chosen mqtt")
        #expect(choice(["MQTT"], echo) == "none")
        #expect(choice([], echo) == "none")
        #expect(choice(["mqtt"], Route(path: "/v1/echo", kind: .echo)) == "none")
        var required = echo
        required.subprotocolRequired = true
        #expect(choice(["graphql-ws"], required) == "400 subprotocol_required")
        #expect(choice([], required) == "400 subprotocol_required")
        // An upstream route offers the backend what the client offered (narrowed to the route's list, if any).
        let upstream = Route(path: "/v1/up", kind: .upstream)
        #expect(choice(["mqtt", "mqttv3.1"], upstream) == "ask mqtt mqttv3.1")
        #expect(choice([], upstream) == "none")
        #expect(choice(["mqtt", "other"], Route(path: "/v1/up", kind: .upstream, subprotocols: ["mqtt"])) == "ask mqtt")
        // The backend must choose among the offers, and choose one where the route requires it.
        #expect(Admission.backendSubprotocol("mqtt", offers: ["mqtt"], on: upstream) == .success("mqtt"))
        #expect(Admission.backendSubprotocol(nil, offers: ["mqtt"], on: upstream) == .success(nil))
        #expect((try? Admission.backendSubprotocol("stomp", offers: ["mqtt"], on: upstream).get()) == nil)
        var strictUpstream = upstream
        strictUpstream.subprotocolRequired = true
        #expect((try? Admission.backendSubprotocol(nil, offers: ["mqtt"], on: strictUpstream).get()) == nil)
    }

    @Test("A certificate no mapping rule matches is refused before origin and policy")
    func unmappedCertificate() {
        let admission = Admission(routes: Self.admission.routes, policies: .empty,
                                  gatewayOrigins: OriginMatcher([]), maxHeaderBytes: 1024)
        guard case .refuse(let refusal, _) = admission.decide(Self.request(add: [("Origin", "https://evil.example")]), certificate: Self.certificate) else {
            Issue.record("expected a refusal")
            return
        }
        #expect(refusal.status == 403)
        #expect(refusal.reason == "no_identity_mapping")
    }
}
