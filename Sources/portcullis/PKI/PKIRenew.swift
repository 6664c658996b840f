import ArgumentParser
import PortcullisPKI

/// `pki renew NAME`: same identity, new validity.
struct PKIRenew: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "renew",
        abstract: "Renew a certificate: same name, subject and SANs, a new validity of the same length.",
        discussion: """
            The key stays the same unless --new-key (a device that sent a CSR keeps using its key). The previous \
            certificate is marked superseded, not revoked. A revoked name cannot be renewed.
            """)

    @OptionGroup var options: PKIOptions

    @Argument(help: "The certificate's name.")
    var name: String

    @Flag(name: .customLong("new-key"), help: "Generate a new key too.")
    var newKey = false

    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() throws {
        let pki = options.pki
        try options.perform { audit in
            let (entry, old) = try pki.renew(name: name, newKey: newKey)
            audit.recordReplacement("renew", new: entry, old: old)
            show(entry, pki: pki, json: json, headline: "renewed '\(name)' (previous serial \(old.serial) is superseded)")
        }
    }
}

/// `pki rotate NAME`: new key and certificate; the old one revoked after a grace period.
struct PKIRotate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Rotate a certificate: a new key and certificate; the previous one is revoked after a grace period.",
        discussion: """
            The previous certificate is marked superseded and revoked (reason superseded) once the grace period \
            has passed, by the next 'pki crl', 'pki watch' or any revocation; --revoke-old revokes it now.
            """)

    @OptionGroup var options: PKIOptions

    @Argument(help: "The certificate's name.")
    var name: String

    @Option(help: "How long the previous certificate stays valid, e.g. 7d, 12h, 0s.")
    var grace = "7d"

    @Flag(name: .customLong("revoke-old"), help: "Revoke the previous certificate at once.")
    var revokeOld = false

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        guard parseWindow(grace) != nil else { throw ValidationError("--grace must be a duration such as 7d, 12h or 0s") }
    }

    func run() throws {
        let pki = options.pki
        let graceSeconds = revokeOld ? 0 : parseWindow(grace)!
        try options.perform { audit in
            let (entry, old) = try pki.rotate(name: name, grace: graceSeconds)
            audit.recordReplacement("rotate", new: entry, old: old)
            if old.state == .revoked {
                audit.record("revoke", old, reason: "superseded", detail: "revoked by rotation")
            }
            let fate = old.state == .revoked ? "revoked now" : "revoked after \(day(old.revokeAfter!))"
            show(entry, pki: pki, json: json, headline: "rotated '\(name)': new key and certificate; previous serial \(old.serial) \(fate)")
        }
    }
}
