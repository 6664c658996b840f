// A device on a Portcullis broker route, written with PortcullisClient's ReconnectingBrokerClient: it subscribes
// to its command topic, publishes a telemetry reading every few seconds, and prints every state change. Stop the
// gateway, restart it, renew the certificate files, revoke the certificate: the device says what it does.
//
//   swift run portcullis-device-example --url wss://127.0.0.1:8443/v1/messages \
//       --cert pki/issued/demo-device.crt --key pki/private/demo-device.key --ca pki/ca.crt --device demo-device
//
// Runs until interrupted (Ctrl-C). Exit status: 1 when the gateway refused the device for good, 2 for a usage error.
import Foundation
import PortcullisClient

struct Options {
    var url = "wss://127.0.0.1:8443/v1/messages"
    var certificate = "pki/issued/demo-device.crt"
    var key = "pki/private/demo-device.key"
    var ca = "pki/ca.crt"
    var device = "demo-device"
    var interval = 5.0

    static let usage = """
        usage: portcullis-device-example [--url wss://HOST:PORT/PATH] [--cert FILE] [--key FILE] [--ca FILE]
                                         [--device NAME] [--interval SECONDS]
        Publishes to devices/NAME/telemetry every SECONDS and prints what arrives on devices/NAME/commands/#.
        """

    init(arguments: [String]) throws {
        var remaining = arguments[...]
        while let flag = remaining.popFirst() {
            if flag == "--help" || flag == "-h" {
                say(Self.usage)
                exit(0)
            }
            guard let value = remaining.popFirst() else { throw UsageError("\(flag) needs a value") }
            switch flag {
            case "--url": url = value
            case "--cert": certificate = value
            case "--key": key = value
            case "--ca": ca = value
            case "--device": device = value
            case "--interval":
                // Bounded: a duration is built from it, and zero would publish as fast as the CPU allows.
                guard let seconds = Double(value), seconds.isFinite, (0.1...86_400).contains(seconds) else {
                    throw UsageError("--interval takes seconds between 0.1 and 86400")
                }
                interval = seconds
            default: throw UsageError("unknown option \(flag)")
            }
        }
    }
}

/// Writes a line at once: `print` buffers when the output is a pipe or a file, and a log of the device should
/// show each state change when it happens. (Not `FileHandle.write`: it traps when the reader has gone.)
func say(_ line: String) {
    print(line)
    fflush(nil)  // every output stream: `stdout` itself is a global Swift 6 will not let a function touch
}

struct UsageError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

let options: Options
let configuration: ReconnectingBrokerClient.Configuration
do {
    options = try Options(arguments: Array(CommandLine.arguments.dropFirst()))
    configuration = try ReconnectingBrokerClient.Configuration(
        url: options.url, certificatePath: options.certificate, keyPath: options.key, caPath: options.ca)
} catch {
    FileHandle.standardError.write(Data("\(error)\n\(Options.usage)\n".utf8))
    exit(2)
}

let client = ReconnectingBrokerClient(configuration: configuration)
let telemetryTopic = "devices/\(options.device)/telemetry"
// Held by the client: subscribed on the first session and again on every later one.
try await client.subscribe("devices/\(options.device)/commands/#")

let reason = await withTaskGroup(of: StopReason?.self) { group in
    group.addTask { await client.run() }
    group.addTask {
        for await state in client.states { say("state: \(state)") }
        return nil
    }
    group.addTask {
        for await command in client.deliveries {
            say("command on \(command.topic) from \(command.from): \(command.text)")
        }
        return nil
    }
    group.addTask {
        for await notice in client.notices { say("gateway: \(notice)") }
        return nil
    }
    group.addTask {
        var sequence = 0
        while !Task.isCancelled {
            let reading = #"{"seq":\#(sequence),"celsius":\#(20 + Double(sequence % 50) / 10)}"#
            do {
                if case .queued(let dropped) = try await client.publish(telemetryTopic, json: reading) {
                    let lost = await client.droppedPublishes
                    say("offline: reading \(sequence) queued (\(dropped) dropped to make room, \(lost) in all)")
                }
            } catch {
                say("publish: \(error)")
                return nil
            }
            sequence += 1
            try? await Task.sleep(for: .seconds(options.interval))
        }
        return nil
    }
    // The first task to return a reason is `run()`; the others end with the client (or are cancelled).
    for await result in group {
        if let result {
            group.cancelAll()
            return result
        }
    }
    return StopReason.requested
}

say("stopped: \(reason)")
if case .permanentRefusal = reason { exit(1) }
