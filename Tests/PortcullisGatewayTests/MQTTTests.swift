import Foundation
import PortcullisClient
import PortcullisConfig
import PortcullisTestSupport
import Testing

/// Portcullis in front of an MQTT broker: paho-mqtt speaks MQTT over WSS with the device's certificate; the
/// gateway admits it by certificate and relays it over an `upstream` route to Mosquitto's websockets listener,
/// offering the client's `mqtt` subprotocol to the broker and answering with the broker's choice.
@Suite("MQTT through the gateway")
struct MQTTTests {
    static let pahoClient = #"""
        import json, ssl, sys, threading
        import paho.mqtt.client as mqtt

        port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
        topic = "devices/demo-device/commands/reboot"
        result, received = {}, threading.Event()

        def on_connect(client, userdata, flags, reason_code, properties):
            result["connect"] = str(reason_code)
            client.subscribe(topic, qos=1)

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            client.publish(topic, "now", qos=1)

        def on_message(client, userdata, message):
            result["topic"], result["payload"] = message.topic, message.payload.decode()
            received.set()

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-device", transport="websockets")
        # paho sends "Origin: https://HOST:PORT" unless told otherwise; the device's rule allows this origin.
        client.ws_set_options(path="/v1/upstream", headers={"Origin": "https://console.example.test"})
        client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        # paho gives the TCP, TLS and WebSocket handshakes 5 s by default: too short for a loaded test machine.
        client.connect_timeout = 60
        # Mosquitto's websockets listener (libwebsockets) gives the opening handshake a fixed deadline of its own,
        # which a saturated machine can pass: the gateway then refuses 502 upstream_unavailable. Another attempt
        # is a new session, admitted and audited on its own; the test reads why each refused one failed.
        for attempt in range(5):
            try:
                client.connect("localhost", port, keepalive=30)
                break
            except mqtt.WebsocketConnectionError as error:
                print(f"attempt {attempt + 1}: {error}", file=sys.stderr, flush=True)
        else:
            sys.exit("no attempt was upgraded")
        client.loop_start()
        result["received"] = received.wait(60)
        client.disconnect()
        client.loop_stop()
        print(json.dumps(result), flush=True)
        """#

    /// Mosquitto with one websockets listener on a free loopback port, anonymous (the gateway has admitted the
    /// device by then); stopped with the returned process.
    static func startMosquitto(in directory: String) async throws -> (ChildProcess, Int) {
        let executable = FileManager.default.isExecutableFile(atPath: "/usr/sbin/mosquitto")
            ? "/usr/sbin/mosquitto" : try ExternalTool("mosquitto").path
        for _ in 1...3 {
            let port = try freeLoopbackPort()
            let configuration = "\(directory)/mosquitto.conf"
            // Mosquitto 2.0.11 (Debian 12) refuses to start with websockets listeners only: a plain MQTT listener
            // on another free port keeps it company.
            try """
                listener \(try freeLoopbackPort()) 127.0.0.1
                listener \(port) 127.0.0.1
                protocol websockets
                allow_anonymous true
                persistence false

                """.write(toFile: configuration, atomically: true, encoding: .utf8)
            let process = ChildProcess()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = ["-c", configuration]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            let deadline = Date().addingTimeInterval(120)
            while process.isRunning && Date() < deadline {
                if listens(pid: process.processIdentifier, port: port) { return (process, port) }
                try await Task.sleep(for: .milliseconds(50))
            }
            // Mosquitto may sit out a SIGTERM: stopProcess follows with SIGKILL.
            stopProcess(process)
        }
        throw StartFailure(description: "mosquitto did not start")
    }

    @Test("paho-mqtt publishes and receives through an upstream route to Mosquitto, with the mqtt subprotocol agreed")
    func pahoThroughTheGateway() async throws {
        let scratch = NSTemporaryDirectory() + "portcullis-mqtt-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let (mosquitto, port) = try await Self.startMosquitto(in: scratch)
        defer { stopProcess(mosquitto) }
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout, adjust: {
            $0.routes.append(.init(
                path: "/v1/upstream", kind: .upstream, upstream: .init(url: "ws://127.0.0.1:\(port)/"),
                subprotocols: ["mqtt"], subprotocolRequired: true))
        }) { gw in
            let script = "\(scratch)/client.py"
            try Self.pahoClient.write(toFile: script, atomically: true, encoding: .utf8)
            // Up to five attempts of 60 s each, then 60 s for the message: a deadline only a hung client meets.
            let result = try await ExternalTool("python3").run(
                [script, "\(gw.port)", gw.pki.caPath, gw.device.certificate, gw.device.key], holdInput: 0, timeout: 420)
            let reasons = try gw.auditRecords().compactMap { record in record.reason.map { "\($0): \(record.detail ?? "")" } }
            let line = try #require(result.output.split(separator: "\n").last, "paho printed nothing: \(result.all)\n\(reasons)")
            let answer = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(answer["connect"] as? String == "Success", "\(answer)")
            #expect(answer["received"] as? Bool == true, "\(answer)")
            #expect(answer["topic"] as? String == "devices/demo-device/commands/reboot")
            #expect(answer["payload"] as? String == "now")
            let opened = try #require(await gw.auditRecord { $0.event == "session_opened" })
            #expect(opened.identity == "demo-device" && opened.path == "/v1/upstream")

            // A client that offers no subprotocol is refused: the route requires mqtt.
            let refused = try await GatewayClient.connect(port: gw.port, path: "/v1/upstream", tls: gw.tls(gw.device))
            #expect(refused.status == 400)
            let record = try #require(await gw.auditRecord { $0.reason == "subprotocol_required" })
            #expect(record.status == 400)
        }
    }
}
