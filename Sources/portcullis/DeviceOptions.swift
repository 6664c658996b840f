import ArgumentParser
import PortcullisClient

/// What a device's tools (`connect`, `doctor`) take: the gateway's URL and the device's TLS files.
struct DeviceOptions: ParsableArguments {
    @Argument(help: "The gateway's URL: wss://HOST[:PORT]/PATH.")
    var url: String

    @Option(help: "The client certificate (PEM, the chain after it if any).")
    var cert: String

    @Option(help: "The client certificate's private key (PEM).")
    var key: String

    @Option(help: "The CA bundle (PEM) that signs the gateway's certificate.")
    var ca: String

    @Option(help: "An Origin header to send (browsers send one; devices do not).")
    var origin: String?

    @Option(help: "The name to ask for (SNI) and to check the gateway's certificate against; the URL's host by default.")
    var serverName: String?

    @Option(help: "Seconds to wait for the gateway: for connecting (TCP, TLS and the upgrade together), and for each answer.")
    var timeout: Double = 30

    func validate() throws {
        do { _ = try GatewayURL(parsing: url) } catch { throw ValidationError("\(error)") }
        guard timeout > 0, timeout <= 600 else { throw ValidationError("--timeout must be between 0 and 600 seconds") }
    }

    var gateway: GatewayURL { get throws { try GatewayURL(parsing: url) } }
}
