@testable import PortcullisPolicy
import Testing

/// Parses one policy file named `p.yaml`; a test that needs a set the loader refuses has no business here.
private func policies(_ text: String) throws -> PolicySet {
    try PolicySet.parse([(file: "p.yaml", text: text)])
}

private func codes(_ text: String) throws -> [PolicyFinding.Code] {
    PolicyLint(try policies(text)).findings().map(\.code)
}

@Suite("Identity mapping names")
struct IdentityMappingNameTests {
    @Test(
        "A mapping gives a name exactly when some field value makes it",
        arguments: [
            (IdentityMappingRule(source: .sanURI, match: "spiffe://example.test/device/*", identity: "device-{*}"), "device-42",
             "spiffe://example.test/device/42"),
            (IdentityMappingRule(source: .sanURI, match: "spiffe://example.test/device/*", identity: "device-{*}"), "sensor-42", nil),
            // What '*' covers never holds a '/'.
            (IdentityMappingRule(source: .sanURI, match: "spiffe://example.test/device/*", identity: "{*}"), "a/b", nil),
            (IdentityMappingRule(source: .sanDNS, match: "*.svc.example", identity: "{value}"), "api.svc.example", "api.svc.example"),
            (IdentityMappingRule(source: .sanDNS, match: "*.svc.example", identity: "{value}"), ".svc.example", nil),
            (IdentityMappingRule(source: .commonName), "anything/at all", "anything/at all"),
            (IdentityMappingRule(source: .commonName, identity: "cn-{value}"), "cn-x", "x"),
            (IdentityMappingRule(source: .commonName, identity: "cn-{value}"), "cn-", nil),
            (IdentityMappingRule(source: .commonName, match: "gw-*", identity: "{*}-{*}"), "ab-ab", "gw-ab"),
            (IdentityMappingRule(source: .commonName, match: "gw-*", identity: "{*}-{*}"), "ab-cd", nil),
            (IdentityMappingRule(source: .commonName, match: "exact", identity: "{value}"), "exact", "exact"),
            (IdentityMappingRule(source: .fingerprint, match: String(repeating: "AB", count: 32), identity: "pinned"), "pinned",
             String(repeating: "ab", count: 32)),
        ] as [(IdentityMappingRule, String, String?)])
    func fieldValue(rule: IdentityMappingRule, name: String, value: String?) {
        #expect(rule.fieldValue(giving: name) == value)
        // And the value found really gives the name through the gateway's own mapping.
        if let value {
            let facts = CertificateFacts(
                commonName: value, subject: "CN=\(value)", sanURIs: [value], sanDNSNames: [value], fingerprint: value, serial: "01")
            var unusable: [String] = []
            #expect(rule.apply(to: facts, unusable: &unusable) == name)
        }
    }
}

@Suite("policy check lints")
struct PolicyLintTests {
    static let example = """
        identity_mapping:
          - source: san_uri
            match: "spiffe://example.test/device/*"
            identity: "device-{*}"
            groups: [devices]
          - source: cn
        rules:
          - name: device-messages
            identities: [demo-device]
            groups: [devices]
            routes: [/v1/messages]
            allow_missing_origin: true
            publish: ["devices/{identity}/telemetry"]
            subscribe: ["devices/{identity}/commands/#"]
        """

    @Test("A SPIFFE mapping and a CN mapping that both give device-42 are one duplicate-identity warning")
    func duplicateIdentity() throws {
        let findings = PolicyLint(try policies(Self.example)).findings()
        #expect(findings.map(\.code) == [.duplicateIdentity])
        let finding = try #require(findings.first)
        #expect(finding.file == "p.yaml")
        #expect(finding.line == 6)
        #expect(finding.message.contains("'device-42' from san_uri 'spiffe://example.test/device/42' and from cn 'device-42'"))
        #expect(finding.description.hasPrefix("p.yaml:6: warning: "))
        #expect(finding.description.hasSuffix("[duplicate-identity]"))
    }

    @Test("Mappings of one field to the same value are one certificate, not a duplicate")
    func sameFieldIsNoDuplicate() throws {
        let set = try policies(
            """
            identity_mapping:
              - source: cn
                match: "device-*"
              - source: cn
            """)
        #expect(PolicyLint(set).findings().isEmpty)
    }

    @Test("Two fingerprints pinned to one identity, and a pin a CN can imitate, are duplicates")
    func pinnedDuplicates() throws {
        let set = try policies(
            """
            identity_mapping:
              - source: fingerprint
                match: "\(String(repeating: "a", count: 64))"
                identity: legacy-sensor
              - source: fingerprint
                match: "\(String(repeating: "b", count: 64))"
                identity: legacy-sensor
              - source: cn
            """)
        let findings = PolicyLint(set).findings()
        // The two pins, and the CN fallback that can imitate both: one finding for it, counting the second pin.
        #expect(findings.map(\.code) == [.duplicateIdentity, .duplicateIdentity])
        #expect(findings.contains { $0.message.contains("p.yaml:2 and p.yaml:5") })
        #expect(findings.contains {
            $0.message.contains("p.yaml:2 and p.yaml:8") && $0.message.contains("cn 'legacy-sensor'")
                && $0.message.hasSuffix("(and 1 more mapping(s) whose identity it can give too)")
        })
    }

    @Test("Identities and groups no mapping gives are named, and a rule left with none grants nothing")
    func unknownSubjects() throws {
        let text = """
            identity_mapping:
              - source: san_uri
                match: "spiffe://example.test/device/*"
                identity: "device-{*}"
                groups: [devices]
            rules:
              - name: known
                identities: [device-7]
                groups: [devices]
                routes: [/v1/echo]
              - name: ghosts
                identities: [sensor-1]
                groups: [sensors]
                routes: [/v1/echo]
            """
        let findings = PolicyLint(try policies(text)).findings()
        #expect(findings.map(\.code) == [.unknownIdentity, .unknownGroup, .grantsNothing])
        #expect(findings.allSatisfy { $0.line == 11 })
        #expect(findings[0].message.contains("'sensor-1'"))
    }

    @Test("An allow rule with an empty origins list and no missing origin admits no one")
    func emptyOrigins() throws {
        let text = """
            identity_mapping: [{source: cn}]
            rules:
              - name: nobody
                identities: [a]
                routes: [/v1/echo]
                origins: []
            """
        #expect(try codes(text) == [.grantsNothing])
    }

    @Test("A rule covered by a deny of the route, or by an earlier broader allow, is shadowed")
    func shadowed() throws {
        let text = """
            identity_mapping: [{source: cn}]
            rules:
              - name: broad
                identities: [a, b]
                routes: ["*"]
                allow_missing_origin: true
                publish: ["devices/+/telemetry"]
              - name: narrower
                identities: [a]
                routes: [/v1/messages]
                publish: ["devices/{identity}/telemetry"]
              - name: tighter
                identities: [a]
                routes: [/v1/messages]
                publish: ["devices/{identity}/telemetry"]
                limits: {sessions: 1}
              - name: more-topics
                identities: [a]
                routes: [/v1/messages]
                subscribe: ["x"]
              - name: dead
                identities: [c]
                routes: [/v1/echo]
              - name: block-c
                effect: deny
                identities: [c, d]
                routes: ["*"]
            """
        let findings = PolicyLint(try policies(text)).findings().filter { $0.code == .shadowedRule }
        // 'tighter' changes the limits and 'more-topics' the grants: neither is shadowed.
        #expect(findings.compactMap(\.line) == [8, 21])
        #expect(findings[0].message.contains("earlier allow rule 'broad' (p.yaml:3)"))
        #expect(findings[1].message.contains("'dead' can never admit anyone: deny rule 'block-c' (p.yaml:24)"))
    }

    @Test("A narrower origin list or no missing-origin allowance on the earlier rule leaves the later one useful")
    func originsKeepRulesApart() throws {
        let text = """
            identity_mapping: [{source: cn}]
            rules:
              - name: console
                identities: [a]
                routes: [/v1/echo]
                origins: ["https://console.example"]
              - name: device
                identities: [a]
                routes: [/v1/echo]
                allow_missing_origin: true
            """
        #expect(try codes(text).isEmpty)
    }

    @Test("'#' on publish is broad; '+' or '#' where a group's grants put {identity} reaches other members")
    func broadGrants() throws {
        let text = """
            identity_mapping:
              - source: cn
                groups: [devices]
            rules:
              - name: fleet
                groups: [devices]
                routes: [/v1/messages]
                publish: ["devices/{identity}/telemetry", "devices/+/telemetry"]
                subscribe: ["devices/#", "devices/{identity}/commands/+"]
              - name: operator
                identities: [operator]
                routes: [/v1/messages]
                publish: ["devices/+/commands/#"]
            """
        let findings = PolicyLint(try policies(text)).findings()
        #expect(findings.map(\.code) == [.broadGroupGrant, .broadGroupGrant, .broadPublish])
        #expect(findings[0].message.contains("publish 'devices/+/telemetry'"))
        #expect(findings[1].message.contains("subscribe 'devices/#'"))
        #expect(findings[2].message.contains("'operator'"))
    }

    @Test("Codes are stable strings tools can grep for")
    func stableCodes() {
        #expect(PolicyFinding.Code.allCases.map(\.rawValue) == [
            "shadowed-rule", "grants-nothing", "unknown-identity", "unknown-group", "duplicate-identity", "broad-publish",
            "broad-group-grant",
        ])
    }
}
