import Foundation
@testable import PortcullisPolicy
import PortcullisYAML
import Testing

func facts(
    cn: String? = "demo-device", uris: [String] = [], dns: [String] = [],
    fingerprint: String = String(repeating: "ab", count: 32)
) -> CertificateFacts {
    CertificateFacts(
        commonName: cn, subject: cn.map { "CN=\($0)" } ?? "", sanURIs: uris, sanDNSNames: dns, fingerprint: fingerprint,
        serial: "01")
}

@Suite("Identity mapping")
struct IdentityMappingTests {
    static let policies = try! PolicySet.parse([(
        "fleet.yaml",
        """
        identity_mapping:
          - source: fingerprint
            match: "AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB"
            identity: pinned-sensor
          - source: san_uri
            match: "spiffe://example.test/device/*"
            identity: "device-{*}"
            groups: [devices]
          - source: san_dns
            match: "*.services.example.test"
            identity: "svc-{*}"
          - source: cn
        """
    )])

    @Test(
        "The first matching rule names the identity",
        arguments: [
            (facts(cn: "x"), "pinned-sensor"),
            (facts(cn: "x", uris: ["spiffe://example.test/device/42"], fingerprint: String(repeating: "cd", count: 32)), "device-42"),
            (facts(cn: "x", uris: ["spiffe://example.test/device/a/b"], fingerprint: String(repeating: "cd", count: 32)), "x"),
            (facts(cn: "x", dns: ["billing.services.example.test"], fingerprint: String(repeating: "cd", count: 32)), "svc-billing"),
            (facts(cn: "demo-device", fingerprint: String(repeating: "cd", count: 32)), "demo-device"),
        ])
    func mapping(certificate: CertificateFacts, identity: String) {
        #expect(Self.policies.identify(certificate)?.name == identity)
    }

    @Test("Groups come from the rule that matched")
    func groups() {
        let identity = Self.policies.identify(
            facts(uris: ["spiffe://example.test/device/7"], fingerprint: String(repeating: "cd", count: 32)))
        #expect(identity?.groups == ["devices"])
        #expect(identity?.mappingRule == "fleet.yaml:5")
    }

    @Test("A certificate no rule maps has no identity")
    func unmapped() throws {
        let set = try PolicySet.parse([("a.yaml", "identity_mapping:\n  - source: san_uri\n")])
        #expect(set.identify(facts(cn: "demo-device")) == nil)
    }

    @Test("100,000 pinned fingerprints and CNs: found by lookup, first rule in file order still wins")
    func indexedMappings() throws {
        func fingerprint(_ number: Int) -> String {
            let hex = String(number, radix: 16)
            return String(repeating: "0", count: 64 - hex.count) + hex
        }
        var mappings = (0..<100_000).map {
            IdentityMappingRule(source: .fingerprint, match: "SHA256:" + fingerprint($0).uppercased(), identity: "pinned-\($0)")
        }
        // A glob before the exact CN rules wins over them; an exact CN rule wins over the catch-all after it.
        mappings.append(IdentityMappingRule(source: .commonName, match: "early-*", identity: "glob-{*}"))
        mappings += (0..<100_000).map { IdentityMappingRule(source: .commonName, match: "cn-\($0)", identity: "named-\($0)") }
        mappings.append(IdentityMappingRule(source: .commonName, match: "early-7", identity: "too-late"))
        mappings.append(IdentityMappingRule(source: .commonName, match: "caf\u{e9}", identity: "precomposed"))
        mappings.append(IdentityMappingRule(source: .commonName, identity: "any-{value}"))
        let set = PolicySet(mappings: mappings, rules: [])
        let other = String(repeating: "f", count: 64)

        #expect(set.identify(facts(cn: "cn-5", fingerprint: fingerprint(99_999)))?.name == "pinned-99999")
        #expect(set.identify(facts(cn: "cn-99999", fingerprint: other))?.name == "named-99999")
        #expect(set.identify(facts(cn: "early-7", fingerprint: other))?.name == "glob-7")
        #expect(set.identify(facts(cn: "stranger", fingerprint: other))?.name == "any-stranger")
        #expect(set.identify(facts(cn: nil, fingerprint: other)) == nil)
        // Byte for byte, as without the index: a canonically equivalent CN is another name.
        #expect(set.identify(facts(cn: "caf\u{e9}", fingerprint: other))?.name == "precomposed")
        #expect(set.identify(facts(cn: "cafe\u{301}", fingerprint: other))?.name != "precomposed")
        let indexed = IdentityMappingIndex(mappings)
        #expect(indexed.candidates(for: facts(cn: "cn-42", fingerprint: fingerprint(42))) == [42, 100_000, 100_043, 200_003])
        // The index proposes the canonically equivalent rule; the rule's byte comparison turns it down.
        #expect(indexed.candidates(for: facts(cn: "cafe\u{301}", fingerprint: other)) == [100_000, 200_002, 200_003])
    }

    @Test("Fingerprints are accepted as operators paste them")
    func fingerprintForms() {
        let hex = String(repeating: "0f", count: 32)
        #expect(normalizedFingerprint("sha256:" + hex.uppercased()) == hex)
        #expect(normalizedFingerprint(stride(from: 0, to: 64, by: 2).map { _ in "0F" }.joined(separator: ":")) == hex)
        #expect(normalizedFingerprint("abc") == nil)
        // As `openssl x509 -fingerprint -sha256` prints it.
        #expect(normalizedFingerprint("SHA256 Fingerprint=" + stride(from: 0, to: 64, by: 2).map { _ in "0F" }.joined(separator: ":")) == hex)
        // Fullwidth digits are hex digits to Character, never to a certificate's fingerprint.
        #expect(normalizedFingerprint(String(repeating: "\u{FF10}\u{FF26}", count: 32)) == nil)
    }
}

@Suite("Policy decisions")
struct PolicyDecisionTests {
    static let gatewayOrigins = OriginMatcher(["https://console.example.test", "https://ops.example.test"])
    static let policies = try! PolicySet.parse([(
        "rules.yaml",
        """
        identity_mapping:
          - source: san_uri
            match: "spiffe://example.test/device/*"
            identity: "device-{*}"
            groups: [devices]
          - source: cn
        rules:
          - name: fleet-echo
            groups: [devices]
            routes: [/v1/echo]
            allow_missing_origin: true
          - name: quarantine
            effect: deny
            identities: [device-13]
            routes: ["*"]
          - name: console
            identities: [alice]
            routes: [/v1/echo, /v1/admin]
            origins: ["https://console.example.test"]
          - name: everyone-status
            identities: ["*"]
            routes: [/v1/status]
            allow_missing_origin: true
        """
    )])

    static func identity(_ name: String) -> Identity {
        if name.hasPrefix("device-") {
            return policies.identify(facts(cn: "x", uris: ["spiffe://example.test/device/\(name.dropFirst(7))"]))!
        }
        return policies.identify(facts(cn: name))!
    }

    @Test(
        "Default deny, explicit deny wins, origins narrow per rule",
        arguments: [
            ("device-1", "/v1/echo", nil, "admit:fleet-echo"),
            ("device-1", "/v1/echo", "https://console.example.test", "admit:fleet-echo"),
            ("device-1", "/v1/echo", "https://evil.example", "origin_not_allowed"),
            ("device-1", "/v1/admin", nil, "no_matching_rule"),
            ("device-13", "/v1/echo", nil, "denied_by_rule"),
            ("device-13", "/v1/status", nil, "denied_by_rule"),
            ("alice", "/v1/echo", "https://console.example.test", "admit:console"),
            ("alice", "/v1/echo", "https://ops.example.test", "origin_not_allowed"),
            ("alice", "/v1/echo", nil, "origin_required"),
            ("bob", "/v1/echo", "https://console.example.test", "no_matching_rule"),
            ("bob", "/v1/status", nil, "admit:everyone-status"),
        ] as [(String, String, String?, String)])
    func decisions(name: String, route: String, origin: String?, expected: String) {
        let decision = Self.policies.decide(
            identity: Self.identity(name), route: route, origin: origin, gatewayOrigins: Self.gatewayOrigins)
        switch decision {
        case .admit(let rule): #expect("admit:\(rule)" == expected)
        case .refuse(let reason, _, let detail):
            #expect(reason.rawValue == expected)
            #expect(!detail.isEmpty)
        }
    }

    @Test("A deny names its rule")
    func denyNamesRule() {
        let decision = Self.policies.decide(
            identity: Self.identity("device-13"), route: "/v1/echo", origin: nil, gatewayOrigins: Self.gatewayOrigins)
        guard case .refuse(_, let rule, let detail) = decision else {
            Issue.record("expected a refusal")
            return
        }
        #expect(rule == "quarantine")
        #expect(detail.contains("rules.yaml:12"))
    }

    @Test("Lookups use the index: 100,000 identities decide the same as a handful")
    func manyIdentities() throws {
        let rules = (0..<100_000).map {
            PolicyRule(name: "r\($0)", identities: ["id-\($0)"], routes: ["/v1/echo"], allowMissingOrigin: true)
        }
        let set = PolicySet(mappings: [IdentityMappingRule(source: .commonName)], rules: rules)
        #expect(set.rules.count == 100_000)
        let identity = set.identify(facts(cn: "id-99999"))!
        #expect(set.rules(for: identity).map(\.name) == ["r99999"])
        #expect(set.decide(identity: identity, route: "/v1/echo", origin: nil, gatewayOrigins: OriginMatcher([])) == .admit(rule: "r99999"))
    }
}

@Suite("Policy file diagnostics")
struct PolicyDiagnosticsTests {
    func diagnostics(_ yaml: String) -> [Diagnostic] {
        do {
            _ = try PolicySet.parse([("p.yaml", yaml)])
            return []
        } catch let error as DiagnosticsError {
            return error.diagnostics
        } catch {
            return [Diagnostic(file: "?", line: nil, message: "\(error)")]
        }
    }

    @Test("Unknown keys are named with file and line, and every problem is listed")
    func unknownKeys() {
        let found = diagnostics(
            """
            identity_mapping:
              - source: cn
                pattern: "*"
            rules:
              - name: a
                identities: [x]
                routes: [/v1/echo]
                orgins: ["https://x.example"]
            extra: 1
            """)
        #expect(found.map(\.description).contains { $0.hasPrefix("p.yaml:3: unknown key 'pattern'") })
        #expect(found.map(\.description).contains { $0.hasPrefix("p.yaml:8: unknown key 'orgins'") })
        #expect(found.map(\.description).contains { $0.hasPrefix("p.yaml:9: unknown key 'extra'") })
        #expect(found.count == 3)
    }

    @Test(
        "Malformed values are refused with their line",
        arguments: [
            ("rules:\n  - name: a\n    identities: [x]\n    routes: [/v1/echo]\n    effect: maybe\n", 5, "effect"),
            ("rules:\n  - name: a\n    identities: [x]\n    routes: [v1/echo]\n", 4, "must be a path"),
            ("rules:\n  - name: a\n    routes: [/v1/echo]\n", 2, "names no 'identities'"),
            ("rules:\n  - name: a\n    identities: [x]\n    routes: [/x]\n    origins: [\"https://a/b\"]\n", 5, "not an origin"),
            ("rules:\n  - name: a\n    identities: [x]\n    routes: [/x]\n    allow_missing_origin: perhaps\n", 5, "true or false"),
            ("identity_mapping:\n  - source: serial\n", 2, "unknown source"),
            ("identity_mapping:\n  - source: fingerprint\n    match: nope\n    identity: x\n", 3, "fingerprint"),
            ("rules: [\n", 2, "invalid YAML"),
            ("rules:\n  - name: a\n    identities: [x]\n    routes: [/x]\n  - name: a\n    identities: [y]\n    routes: [/x]\n", 5, "already used"),
        ])
    func malformed(yaml: String, line: Int, message: String) {
        let found = diagnostics(yaml)
        #expect(found.contains { $0.line == line && $0.message.contains(message) }, "\(found)")
    }

    @Test("The example policy shipped in policies/ loads")
    func examplePolicyLoads() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let set = try PolicySet.load(directory: root.appendingPathComponent("policies").path)
        let device = try #require(set.identify(facts(cn: "demo-device")))
        #expect(set.decide(identity: device, route: "/v1/echo", origin: nil, gatewayOrigins: OriginMatcher(["https://localhost:8443"])) == .admit(rule: "demo-device-echo"))
        #expect(set.decide(identity: device, route: "/v1/echo", origin: "https://localhost:8443", gatewayOrigins: OriginMatcher(["https://localhost:8443"])) == .admit(rule: "demo-device-echo"))
        if case .admit = set.decide(identity: device, route: "/v1/echo", origin: "https://evil.example", gatewayOrigins: OriginMatcher(["https://localhost:8443", "https://evil.example"])) {
            Issue.record("the example policy must refuse other origins")
        }
    }
}
