import PortcullisPolicy
import PortcullisYAML
import Testing

@Suite("Message permissions")
struct MessagePermissionTests {
    static let policies = try! PolicySet.parse([(
        "m.yaml",
        """
        identity_mapping:
          - source: cn
        rules:
          - name: devices
            identities: ["*"]
            routes: [/v1/messages]
            publish: ["devices/{identity}/telemetry"]
            subscribe: ["devices/{cn}/commands/#"]
            limits: {messages_per_second: 50, sessions: 4}
          - name: operator
            identities: [operator]
            routes: [/v1/messages]
            publish: ["devices/+/commands/#"]
            subscribe: ["devices/+/telemetry"]
            limits: {messages_per_second: 500, subscriptions: 10, on_rate_limit: close}
          - name: vault
            effect: deny
            identities: [operator]
            routes: [/v1/messages]
            subscribe: ["devices/vault/#"]
        """
    )])

    static func permissions(_ name: String) -> MessagePermissions {
        let identity = policies.identify(facts(cn: name))!
        return policies.permissions(for: identity, route: "/v1/messages", origin: "https://console.example.test")
    }

    @Test("Identity variables make one rule serve a fleet")
    func variables() {
        let device = Self.permissions("device-7")
        #expect(device.mayPublish(to: "devices/device-7/telemetry") == .allowed)
        #expect(device.mayPublish(to: "devices/device-8/telemetry") != .allowed)
        #expect(device.maySubscribe(to: "devices/device-7/commands/#") == .allowed)
        #expect(device.maySubscribe(to: "devices/+/commands/#") != .allowed)
    }

    @Test("A CN with '/', '+' or '#' never widens a grant")
    func hostileCommonName() {
        let sneaky = Self.permissions("x/+")
        #expect(sneaky.publish.isEmpty)
        #expect(sneaky.mayPublish(to: "devices/x/anything/telemetry") != .allowed)
    }

    @Test("Grants add up across rules; a deny wins; limits are the tightest")
    func combination() {
        let operatorPermissions = Self.permissions("operator")
        #expect(operatorPermissions.maySubscribe(to: "devices/+/telemetry") == .allowed)
        #expect(operatorPermissions.maySubscribe(to: "devices/vault/telemetry") != .allowed)
        #expect(operatorPermissions.mayReceive("devices/42/telemetry"))
        #expect(!operatorPermissions.mayReceive("devices/vault/telemetry"))
        #expect(operatorPermissions.mayPublish(to: "devices/operator/telemetry") == .allowed)  // from the '*' rule
        #expect(operatorPermissions.limits.messagesPerSecond == 50)
        #expect(operatorPermissions.limits.sessions == 4)
        #expect(operatorPermissions.limits.subscriptions == 10)
        #expect(operatorPermissions.limits.onRateLimit == .close)
    }

    @Test("Bad patterns and limits are reported with their line", arguments: [
        ("rules:\n  - name: a\n    identities: [x]\n    routes: [/m]\n    publish: [\"a/#/b\"]\n", 5, "'#'"),
        ("rules:\n  - name: a\n    identities: [x]\n    routes: [/m]\n    subscribe: [\"a/{user}\"]\n", 5, "unknown variable"),
        ("rules:\n  - name: a\n    identities: [x]\n    routes: [/m]\n    limits: {messages_per_second: -1}\n", 5, "messages_per_second"),
        ("rules:\n  - name: a\n    identities: [x]\n    routes: [/m]\n    limits: {on_rate_limit: kick}\n", 5, "on_rate_limit"),
        ("rules:\n  - name: a\n    identities: [x]\n    routes: [/m]\n    limits: {burst: 3}\n", 5, "unknown key 'burst'"),
    ])
    func diagnostics(yaml: String, line: Int, message: String) {
        do {
            _ = try PolicySet.parse([("p.yaml", yaml)])
            Issue.record("accepted")
        } catch let error as DiagnosticsError {
            #expect(error.diagnostics.contains { $0.line == line && $0.message.contains(message) }, "\(error)")
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test("Token buckets allow the rate and a burst, refuse beyond, and let a large message through once full")
    func tokenBucket() {
        var bucket = TokenBucket(rate: 10, now: 0)
        var results = (0..<11).map { _ in bucket.take(now: 0) }
        results += [bucket.take(now: 0.1), bucket.take(now: 0.1)]
        #expect(results == Array(repeating: true, count: 10) + [false, true, false])
        var bytes = TokenBucket(rate: 100, now: 0)
        // Larger than the burst, from a full bucket: it passes and leaves the bucket in debt.
        let large = [bytes.take(250, now: 0), bytes.take(1, now: 1), bytes.take(1, now: 2)]
        #expect(large == [true, false, true])
    }
}
