import ArgumentParser
import Foundation
import PortcullisClient
import PortcullisDoctor

/// `portcullis doctor URL`: why a device cannot connect, step by step.
struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Diagnose a device's connection to a gateway step by step; stop at the first failure with what to do.",
        discussion: """
            The steps: name resolution; TCP connect (its time); TLS (version, cipher suite, key-exchange group); the \
            gateway's certificate (does it verify against --ca, name the host, when does it expire); whether the gateway \
            asked for a client certificate and which CAs it named; your certificate, checked here (readable, the key \
            matches, clientAuth, valid now, from a CA the gateway names); the gateway's verdict on it (a TLS alert in plain \
            words); the WebSocket upgrade (status and the gateway's reason); this device's clock against the gateway's; \
            a ping round trip. Each network step waits at most --timeout seconds. The TLS steps use the system's OpenSSL 3 \
            (libssl.so.3).

            Exit status: 0 when every step passes (warnings pass: a certificate that expires soon, a clock a few minutes \
            off); 1 when a step fails; 64 for a usage error.
            """)

    @OptionGroup var device: DeviceOptions

    func run() throws {
        let request = DoctorRequest(
            url: try device.gateway, certificateFile: device.cert, keyFile: device.key, caFile: device.ca,
            serverName: device.serverName, origin: device.origin, timeout: device.timeout)
        say("portcullis doctor \(request.url)")
        let passed = Diagnosis.run(request) { step in
            say("[\(step.outcome.rawValue)] \(step.name): \(step.detail)")
            if let advice = step.advice { say("       → \(advice)") }
        }
        say(passed ? "every step passed" : "stopped at the first failure")
        if !passed { throw ExitCode(1) }
    }
}
