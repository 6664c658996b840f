@testable import PortcullisPolicy
import Testing

@Suite("policy explain")
struct PolicyExplanationTests {
    static let policies = try! PolicySet.parse([(
        file: "p.yaml",
        text: """
            identity_mapping:
              - source: san_uri
                match: "spiffe://example.test/device/*"
                identity: "device-{*}"
                groups: [devices]
              - source: cn
            rules:
              - name: device-messages
                groups: [devices]
                routes: [/v1/messages]
                allow_missing_origin: true
                publish: ["devices/{identity}/telemetry"]
                subscribe: ["devices/{identity}/commands/#"]
                limits: {sessions: 2, messages_per_second: 50}
              - name: no-firmware
                effect: deny
                groups: [devices]
                routes: [/v1/messages]
                publish: ["devices/{identity}/firmware"]
              - name: blocked
                effect: deny
                identities: [device-13]
                routes: ["*"]
            """
    )])
    static let origins = OriginMatcher(["https://console.example"])
    static let device42 = facts(cn: "x", uris: ["spiffe://example.test/device/42"])

    static func explain(
        _ facts: CertificateFacts, route: String = "/v1/messages", origin: String? = nil, publish: [String] = [],
        subscribe: [String] = [], policies: PolicySet = policies
    ) -> PolicyExplanation {
        PolicyExplanation.explain(
            .init(certificate: facts, route: route, origin: origin, publish: publish, subscribe: subscribe),
            policies: policies, gatewayOrigins: origins, routes: ["/v1/messages", "/v1/echo"])
    }

    @Test("An admitted device gets its identity, mapping, rule, grants, limits and topic verdicts")
    func admitted() {
        let explanation = Self.explain(
            Self.device42, publish: ["devices/42/telemetry", "devices/device-42/telemetry", "devices/device-42/firmware"],
            subscribe: ["devices/device-42/commands/#"])
        #expect(explanation.admitted)
        #expect(explanation.identity == .init(
            name: "device-42", groups: ["devices"], mapping: "p.yaml:2", source: "san_uri",
            rule: "san_uri 'spiffe://example.test/device/*' -> 'device-{*}'"))
        #expect(explanation.rule == "device-messages")
        #expect(explanation.ruleLocation == "p.yaml:8")
        #expect(explanation.reason == nil)
        #expect(explanation.grants?.publish == ["devices/device-42/telemetry"])
        #expect(explanation.grants?.denyPublish == ["devices/device-42/firmware"])
        #expect(explanation.limits?.sessions == 2)
        #expect(explanation.topics.map(\.allowed) == [false, true, false, true])
        #expect(explanation.topics[2].reason?.contains("denied by 'devices/device-42/firmware'") == true)
        #expect(!explanation.allAllowed)
    }

    @Test(
        "Refusals carry the audit reason code and the rule involved",
        arguments: [
            (facts(cn: nil), "/v1/messages", nil, "no_identity_mapping", nil),
            (facts(cn: "x", uris: ["spiffe://example.test/device/13"]), "/v1/messages", nil, "denied_by_rule", "blocked"),
            (facts(cn: "sensor-9"), "/v1/messages", nil, "no_matching_rule", nil),
            (device42, "/v1/messages", "https://evil.example", "origin_not_allowed", nil),
            (device42, "/v1/echo", nil, "no_matching_rule", nil),
            (device42, "/v1/other", nil, "unknown_route", nil),
        ] as [(CertificateFacts, String, String?, String, String?)])
    func refused(facts: CertificateFacts, route: String, origin: String?, reason: String, rule: String?) {
        let explanation = Self.explain(facts, route: route, origin: origin, publish: ["devices/device-42/telemetry"])
        #expect(!explanation.admitted)
        #expect(explanation.reason == reason)
        #expect(explanation.rule == rule)
        #expect(explanation.grants == nil)
        #expect(explanation.topics.map(\.allowed) == [false])
        #expect(explanation.topics.first?.reason == "the session is not admitted (\(reason))")
    }

    @Test("A diff lists a removed grant, a tighter limit and the topic verdict it changes")
    func diff() throws {
        let changed = try PolicySet.parse([(
            file: "q.yaml",
            text: """
                identity_mapping:
                  - source: san_uri
                    match: "spiffe://example.test/device/*"
                    identity: "device-{*}"
                    groups: [devices]
                rules:
                  - name: device-messages
                    groups: [devices]
                    routes: [/v1/messages]
                    allow_missing_origin: true
                    subscribe: ["devices/{identity}/commands/#"]
                    limits: {sessions: 1, messages_per_second: 50}
                """
        )])
        let before = Self.explain(Self.device42, publish: ["devices/device-42/telemetry"])
        let after = Self.explain(Self.device42, publish: ["devices/device-42/telemetry"], policies: changed)
        let diff = PolicyExplanationDiff(before: before, after: after)
        #expect(diff.changes == [
            .init(aspect: "publish", before: "devices/device-42/telemetry", after: nil),
            .init(aspect: "deny_publish", before: "devices/device-42/firmware", after: nil),
            .init(aspect: "limits.sessions", before: "2", after: "1"),
            .init(aspect: "publish devices/device-42/telemetry", before: "allowed", after: "forbidden"),
        ])
        #expect(PolicyExplanationDiff(before: before, after: before).isEmpty)
    }

    @Test("A diff from refused to admitted names the decision and the new identity")
    func diffOfDecision() throws {
        let before = Self.explain(facts(cn: "sensor-9"))
        let after = Self.explain(Self.device42)
        let diff = PolicyExplanationDiff(before: before, after: after)
        #expect(diff.changes.contains(.init(aspect: "identity", before: "sensor-9", after: "device-42")))
        #expect(diff.changes.contains(.init(aspect: "decision", before: "refused (no_matching_rule)", after: "admitted")))
        #expect(diff.changes.contains(.init(
            aspect: "mapping", before: "cn -> '{value}'", after: "san_uri 'spiffe://example.test/device/*' -> 'device-{*}'")))
        #expect(diff.changes.contains(.init(aspect: "publish", before: nil, after: "devices/device-42/telemetry")))
    }

    @Test("Limits describe themselves by their policy-file names, unlimited when unset")
    func limitsDescribed() {
        let limits = Limits(sessions: 2, messagesPerSecond: 50)
        let described = Dictionary(uniqueKeysWithValues: limits.described.map { ($0.name, $0.value) })
        #expect(described["sessions"] == "2")
        #expect(described["messages_per_second"] == "50")
        #expect(described["bytes_per_second"] == "unlimited")
        #expect(described["on_rate_limit"] == "drop")
    }
}
