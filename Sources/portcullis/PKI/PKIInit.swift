import ArgumentParser
import PortcullisPKI

extension KeyAlgorithm: ExpressibleByArgument {}

/// `pki init`: a root CA, and optionally an issuing CA under it.
struct PKIInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a root CA (and with --intermediate, an issuing CA signed by it).",
        discussion: """
            With --intermediate the root signs only the issuing CA, which signs everything else, so the root key \
            (private/ca.key) can be moved offline. The gateway trusts the root; devices present leaf + issuing CA \
            (issued/NAME.chain.pem). Refuses to overwrite an existing CA.
            """)

    @OptionGroup var options: PKIOptions

    @Option(help: "The CA's common name.")
    var name = "Portcullis Fleet CA"

    @Option(help: "Key type of the CA(s): p256, p384 or rsa3072.")
    var key: KeyAlgorithm = .p256

    @Flag(help: "Also create an issuing CA signed by the root.")
    var intermediate = false

    func run() throws {
        let pki = options.pki
        try options.perform { audit in
            let result = try pki.initialize(name: name, key: key, intermediate: intermediate)
            audit.record("init", nil, detail: "root CA '\(name)' (\(key.rawValue))" + (intermediate ? " with an issuing CA" : ""))
            say("created root CA '\(name)' (\(key.rawValue)) in \(pki.path)/")
            say("  certificate: \(pki.caCertificatePath) (trust anchor for the gateway's client_ca)")
            say("  key:         \(pki.caKeyPath) (0600)")
            if result.intermediate != nil {
                say("  issuing CA:  \(pki.issuingCertificatePath), key \(pki.issuingKeyPath) (0600)")
                say("  the root key is only needed to make a new issuing CA: keep it offline")
            }
        }
    }
}
