import PortcullisPolicy
import PortcullisProtocol
import Testing

@Suite("Policy hardening: identity names, templates, grants and denials")
struct PolicyHardeningTests {
    static let policies = try! PolicySet.parse([(
        "p.yaml",
        """
        identity_mapping:
          - source: san_uri
            match: "spiffe://example.test/device/*"
            identity: "device-{*}"
          - source: cn
        rules:
          - name: dashboard
            identities: ["*"]
            routes: [/v1/messages]
            origins: ["https://dashboard.example.test"]
            subscribe: ["devices/+/telemetry"]
          - name: console
            identities: [operator]
            routes: [/v1/messages]
            origins: ["https://console.example.test"]
            publish: ["devices/+/commands/#"]
            subscribe: ["devices/#"]
          - name: devices
            identities: ["*"]
            routes: [/v1/messages]
            allow_missing_origin: true
            publish: ["devices/{identity}/telemetry", "mail/{cn}/out"]
          - name: quarantine
            effect: deny
            identities: ["*"]
            routes: [/v1/messages]
            publish: ["mail/{cn}/out"]
            subscribe: ["devices/{cn}/secrets"]
        """
    )])

    @Test("Grants come only from rules whose origin condition the session meets")
    func grantsFollowTheAdmittingOrigin() throws {
        let operatorIdentity = try #require(Self.policies.identify(facts(cn: "operator")))
        let dashboard = Self.policies.permissions(
            for: operatorIdentity, route: "/v1/messages", origin: "https://dashboard.example.test")
        #expect(dashboard.maySubscribe(to: "devices/+/telemetry") == .allowed)
        // The console's publish grant does not come along on the read-only dashboard's origin.
        #expect(dashboard.mayPublish(to: "devices/7/commands/reboot") != .allowed)
        #expect(dashboard.maySubscribe(to: "devices/#") != .allowed)
        let console = Self.policies.permissions(for: operatorIdentity, route: "/v1/messages", origin: "https://console.example.test")
        #expect(console.mayPublish(to: "devices/7/commands/reboot") == .allowed)
        // A device without an Origin header gets only what allow_missing_origin rules grant.
        let device = Self.policies.permissions(for: operatorIdentity, route: "/v1/messages", origin: nil)
        #expect(device.mayPublish(to: "devices/operator/telemetry") == .allowed)
        #expect(device.maySubscribe(to: "devices/+/telemetry") != .allowed)
    }

    @Test("A denial whose variable cannot be substituted denies from that level on, instead of being dropped")
    func unresolvableDenialDenies() throws {
        // The SPIFFE-mapped device has no CN: 'mail/{cn}/out' cannot name its mailbox.
        let facts = facts(cn: nil, uris: ["spiffe://example.test/device/42"])
        let identity = try #require(Self.policies.identify(facts))
        #expect(identity.name == "device-42")
        let permissions = Self.policies.permissions(for: identity, route: "/v1/messages", origin: nil)
        #expect(permissions.denyPublish == ["mail/#"])
        #expect(permissions.denySubscribe == ["devices/#"])
        #expect(permissions.mayPublish(to: "mail/x/out") != .allowed)
        #expect(permissions.mayPublish(to: "devices/device-42/telemetry") == .allowed)
        // With a CN the denial is exact.
        let named = try #require(Self.policies.identify(CertificateFacts(
            commonName: "unit-9", subject: "CN=unit-9", sanURIs: [], sanDNSNames: [], fingerprint: "", serial: "01")))
        #expect(Self.policies.permissions(for: named, route: "/v1/messages", origin: nil).denyPublish == ["mail/unit-9/out"])
    }

    @Test("Templates are substituted once: a certificate name containing {*} or {cn} stays as written")
    func templatesSubstituteOnce() throws {
        let identity = try #require(Self.policies.identify(facts(cn: "demo-operator{*}")))
        #expect(identity.name == "demo-operator{*}")
        let spiffe = try #require(Self.policies.identify(facts(cn: nil, uris: ["spiffe://example.test/device/{value}"])))
        #expect(spiffe.name == "device-{value}")
        let tricky = try #require(Self.policies.identify(facts(cn: "a{cn}")))
        let permissions = Self.policies.permissions(for: tricky, route: "/v1/messages", origin: nil)
        #expect(permissions.publish.contains("devices/a{cn}/telemetry"))
        #expect(permissions.mayPublish(to: "devices/aa{cn}/telemetry") != .allowed)
    }

    @Test(
        "Look-alike and control-character names map to no identity; the refusal says why",
        arguments: [
            ("cafe\u{301}", "normalization form C"),
            ("\u{212A}elvin", "normalization form C"),
            ("device-42\r\nX-Portcullis-Identity: admin", "control characters"),
            ("tab\there", "control characters"),
            ("c1\u{85}", "control characters"),
            (String(repeating: "a", count: 1025), "longer than 1024 bytes"),
        ])
    func unusableNames(name: String, problem: String) {
        let facts = facts(cn: name)
        #expect(Self.policies.identify(facts) == nil)
        let detail = Self.policies.mappingFailure(facts)
        #expect(detail.contains(problem), "\(detail)")
        #expect(detail.contains("p.yaml:"))
    }

    @Test("Names are compared as bytes: an NFC name is its own identity, and its grants do not cover an equivalent spelling")
    func byteComparison() throws {
        let cafe = try #require(Self.policies.identify(facts(cn: "caf\u{E9}")))
        #expect(cafe.name == "caf\u{E9}")
        #expect(Identity.problem(withName: "caf\u{E9}") == nil)
        let permissions = Self.policies.permissions(for: cafe, route: "/v1/messages", origin: nil)
        #expect(permissions.mayPublish(to: "devices/caf\u{E9}/telemetry") == .allowed)
        // Swift's == calls these equal; as topics they are different bytes.
        #expect("devices/cafe\u{301}/telemetry" == "devices/caf\u{E9}/telemetry")
        #expect(permissions.mayPublish(to: "devices/cafe\u{301}/telemetry") != .allowed)
        #expect(!Topic.covers(pattern: "devices/caf\u{E9}/#", filter: "devices/cafe\u{301}/#"))
        #expect(!Topic.overlaps("devices/caf\u{E9}/x", "devices/cafe\u{301}/x"))
        // A '/' followed by a combining mark still separates levels, as the bytes say.
        #expect(Topic.covers(pattern: "a/+", filter: "a/\u{301}"))
        #expect(Topic.problem(withFilter: "a/\u{301}#") == "'#' must be a whole level and the last one")
    }

    @Test("A rule naming an identity that is not NFC is refused at its line (control characters never get past the YAML reader)")
    func ruleIdentityNames() {
        for name in ["cafe\u{301}", "\u{212A}elvin"] {
            let yaml = "rules:\n  - name: r\n    identities: [\"\(name)\"]\n    routes: [/v1/echo]\n"
            do {
                _ = try PolicySet.parse([("p.yaml", yaml)])
                Issue.record("\(name) was accepted")
            } catch {
                #expect("\(error)".contains("p.yaml:3: identity"), "\(error)")
            }
        }
    }
}
