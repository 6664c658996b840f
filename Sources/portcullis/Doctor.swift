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
            a ping round trip. The TLS steps use the system's OpenSSL 3 (libssl.so.3).

            Exit status: 0 when every step passes (warnings pass: a certificate that expires soon, a clock a few minutes \
            off); 1 when a step fails; 64 for a usage error.
            """)

    @Argument(help: "The gateway's URL: wss://HOST[:PORT]/PATH.")
    var url: String

    @Option(help: "The client certificate (PEM).")
    var cert: String

    @Option(help: "The client certificate's private key (PEM).")
    var key: String

    @Option(help: "The CA bundle (PEM) that signs the gateway's certificate.")
    var ca: String

    @Option(help: "The name to ask for (SNI) and to check the gateway's certificate against; the URL's host by default.")
    var serverName: String?

    @Option(help: "An Origin header to send (browsers send one; devices do not).")
    var origin: String?

    @Option(help: "Seconds each network step may take.")
    var timeout: Double = 10

    func validate() throws {
        do { _ = try GatewayURL(parsing: url) } catch { throw ValidationError("\(error)") }
        guard timeout > 0, timeout <= 600 else { throw ValidationError("--timeout must be between 0 and 600 seconds") }
    }

    func run() throws {
        let request = DoctorRequest(
            url: try GatewayURL(parsing: url), certificateFile: cert, keyFile: key, caFile: ca, serverName: serverName, origin: origin,
            timeout: timeout)
        say("portcullis doctor \(request.url)")
        let passed = Diagnosis.run(request) { step in
            say("[\(step.outcome.rawValue)] \(step.name): \(step.detail)")
            if let advice = step.advice { say("       → \(advice)") }
        }
        say(passed ? "every step passed" : "stopped at the first failure")
        if !passed { throw ExitCode(1) }
    }
}
