import ArgumentParser
import PortcullisPKI

/// `pki csr NAME`: what a device does to get a certificate without its key leaving it.
struct PKICsr: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "csr",
        abstract: "Make a key and a certificate signing request as a device would (private/NAME.key, reqs/NAME.csr).",
        discussion: "On a real device, 'openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=NAME' does the same.")

    @OptionGroup var options: PKIOptions

    @Argument(help: "The device's name.")
    var name: String

    @Option(help: "Key type: p256, p384 or rsa3072.")
    var key: KeyAlgorithm = .p256

    func run() throws {
        let pki = options.pki
        try options.perform { audit in
            let path = try pki.createRequest(name: name, key: key)
            audit.record("csr", nil, detail: "key and CSR for '\(name)'")
            say("wrote \(pki.keyPath(name)) (0600) and \(path)\nsign it with: portcullis pki sign \(path) --name \(name)")
        }
    }
}
