import ArgumentParser
import Foundation
import PortcullisPKI

/// `pki sign CSR --name NAME`: a certificate for a key the PKI never sees.
struct PKISign: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sign",
        abstract: "Sign a device's CSR (from 'pki csr' or 'openssl req -new'); its key never leaves the device.",
        discussion: """
            The CSR's signature must verify. The certificate's subject is CN=NAME and its extensions come from the \
            profile and the SAN options given here, never from what the CSR asks for.
            """)

    @OptionGroup var options: PKIOptions

    @Argument(help: "The CSR file (PEM).")
    var request: String

    @Option(help: "The certificate's name (its CN and file names).")
    var name: String

    @Option(help: "Profile: client (default) or server.")
    var profile: ProfileName = .client

    @OptionGroup var sans: SANOptions

    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() throws {
        let pki = options.pki
        let certificateProfile = try sans.profile(profile)
        try options.perform { audit in
            guard let text = try? String(contentsOfFile: request, encoding: .utf8) else {
                throw PKIError.invalid("\(request): cannot read the CSR")
            }
            let entry = try pki.sign(
                requestPEM: text, name: name, profile: certificateProfile, days: sans.days, autoRenew: sans.autoRenew)
            audit.record("sign", entry)
            show(entry, pki: pki, json: json, headline: "signed \(request)")
        }
    }
}
