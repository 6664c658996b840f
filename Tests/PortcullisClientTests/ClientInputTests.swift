@testable import PortcullisClient
import Testing

@Suite("Client input: topics, payloads, URLs, serials")
struct ClientInputTests {
    @Test(
        "Topics the gateway would refuse (and count as a violation) are caught before sending",
        arguments: ["", "devices/+/telemetry", "devices/#", "a\u{0}b", "line\nbreak"])
    func badPublishTopics(topic: String) {
        #expect(BrokerInputCheck.problem(withTopic: topic) != nil)
    }

    @Test("Ordinary topics and filters pass")
    func goodTopics() {
        #expect(BrokerInputCheck.problem(withTopic: "devices/demo-device/telemetry") == nil)
        #expect(BrokerInputCheck.problem(withTopic: String(repeating: "x", count: 1024)) == nil)
        #expect(BrokerInputCheck.problem(withTopic: String(repeating: "x", count: 1025)) != nil)
        #expect(BrokerInputCheck.problem(withFilter: "devices/demo-device/commands/#") == nil)
        #expect(BrokerInputCheck.problem(withFilter: "") != nil)
    }

    @Test(
        "A payload is one JSON value",
        arguments: [
            (#"{"celsius":21.5}"#, true), ("42", true), (#""text""#, true), ("[1,[2]]", true), ("null", true),
            ("", false), ("{", false), (#"1,"x":2"#, false), ("1}", false), ("nope", false),
            (String(repeating: "[", count: 100) + String(repeating: "]", count: 100), false),
        ])
    func jsonValues(text: String, valid: Bool) {
        #expect(BrokerInputCheck.isJSONValue(Array(text.utf8)) == valid)
    }

    @Test("A wss URL gives host, port (443 by default) and path; anything else is refused")
    func urls() throws {
        let full = try ReconnectingBrokerClient.Configuration.endpoint(fromURL: "wss://127.0.0.1:8443/v1/messages")
        #expect(full.host == "127.0.0.1" && full.port == 8443 && full.path == "/v1/messages")
        let defaults = try ReconnectingBrokerClient.Configuration.endpoint(fromURL: "wss://gw.example")
        #expect(defaults.host == "gw.example" && defaults.port == 443 && defaults.path == "/")
        let v6 = try ReconnectingBrokerClient.Configuration.endpoint(fromURL: "wss://[::1]:9000/v1/messages?x=1")
        #expect(v6.host == "::1" && v6.port == 9000 && v6.path == "/v1/messages?x=1")
        for bad in ["ws://gw.example/v1/messages", "https://gw.example", "wss://", "wss://gw.example:0/", "wss://gw.example:99999/", "", "not a url"] {
            #expect(throws: ReconnectingBrokerClient.ConfigurationError.self, "\(bad)") {
                try ReconnectingBrokerClient.Configuration.endpoint(fromURL: bad)
            }
        }
    }

    @Test("Serials are written as the audit log writes them: lowercase hex, no leading zero bytes")
    func serials() {
        #expect(DeviceCredentials.serialHex([0x4f, 0x2a]) == "4f2a")
        #expect(DeviceCredentials.serialHex([0x9f, 0x01]) == "9f01")
        #expect(DeviceCredentials.serialHex([0x00, 0x9f, 0x01]) == "9f01")
        #expect(DeviceCredentials.serialHex([0x01, 0x0a]) == "010a")
        #expect(DeviceCredentials.serialHex([]) == "00")
    }
}
