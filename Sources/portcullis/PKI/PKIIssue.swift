import ArgumentParser
import PortcullisPKI

enum ProfileName: String, ExpressibleByArgument, CaseIterable {
    case server, client
}

/// SAN options shared by `issue` and `sign`.
struct SANOptions: ParsableArguments {
    @Option(name: .customLong("dns"), help: "A DNS subject alternative name (repeatable).")
    var dnsNames: [String] = []

    @Option(name: .customLong("ip"), help: "An IP address SAN (server profile; repeatable).")
    var ipAddresses: [String] = []

    @Option(name: .customLong("uri"), help: "A URI SAN such as spiffe://example.test/device/42 (client profile; repeatable).")
    var uris: [String] = []

    @Option(name: .customLong("email"), help: "An email SAN (client profile; repeatable).")
    var emails: [String] = []

    @Option(help: "Lifetime in days (default: the profile's, from pki/profiles.yaml).")
    var days: Int?

    @Flag(name: .customLong("auto-renew"), help: "Renew it automatically with 'pki watch --renew'.")
    var autoRenew = false

    func profile(_ name: ProfileName) throws -> CertificateProfile {
        switch name {
        case .server:
            guard uris.isEmpty, emails.isEmpty else {
                throw ValidationError("--uri and --email are for client certificates")
            }
            return .server(dnsNames: dnsNames, ipAddresses: ipAddresses)
        case .client:
            guard ipAddresses.isEmpty else { throw ValidationError("--ip is for server certificates") }
            return .client(uris: uris, dnsNames: dnsNames, emails: emails)
        }
    }

    func validate() throws {
        if let days, days <= 0 { throw ValidationError("--days must be at least 1") }
    }
}

/// `pki issue server|client NAME`: a new key and certificate.
struct PKIIssue: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "issue",
        abstract: "Issue a certificate with a new key: issued/NAME.crt, issued/NAME.chain.pem, private/NAME.key.")

    @OptionGroup var options: PKIOptions

    @Argument(help: "Profile: server (serverAuth, DNS/IP SANs) or client (clientAuth, CN = NAME).")
    var profile: ProfileName

    @Argument(help: "The certificate's name: its CN, its file names, and (by default) the device's identity.")
    var name: String

    @OptionGroup var sans: SANOptions

    @Option(help: "Key type: p256, p384 or rsa3072.")
    var key: KeyAlgorithm = .p256

    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() throws {
        let pki = options.pki
        let certificateProfile = try sans.profile(profile)
        try options.perform { audit in
            let entry = try pki.issue(
                .init(name: name, profile: certificateProfile, days: sans.days, key: key, autoRenew: sans.autoRenew))
            audit.record("issue", entry)
            show(entry, pki: pki, json: json, headline: "issued \(profile.rawValue) certificate")
        }
    }
}
