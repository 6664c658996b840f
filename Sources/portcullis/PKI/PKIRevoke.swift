import ArgumentParser
import Foundation
import PortcullisPKI

/// `pki revoke NAME|--serial S`: onto the CRL.
struct PKIRevoke: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revoke",
        abstract: "Revoke a certificate and regenerate the CRL (pki/crl.pem).",
        discussion: "A gateway started with this CRL refuses the certificate in the TLS handshake.")

    @OptionGroup var options: PKIOptions

    @Argument(help: "The certificate's name (its current certificate is revoked).")
    var name: String?

    @Option(help: "Revoke the certificate with this serial (hex) instead.")
    var serial: String?

    @Option(help: "keyCompromise, superseded, cessationOfOperation, affiliationChanged, caCompromise, certificateHold, privilegeWithdrawn or unspecified.")
    var reason = "unspecified"

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        if (name == nil) == (serial == nil) { throw ValidationError("give either a NAME or --serial") }
        if RevocationReason(name: reason) == nil {
            throw ValidationError("unknown reason '\(reason)'; one of \(RevocationReason.allCases.map(\.name).joined(separator: ", "))")
        }
    }

    func run() throws {
        let pki = options.pki
        try options.perform { audit in
            let entry = try pki.revoke(name: name, serial: serial, reason: RevocationReason(name: reason)!)
            audit.record("revoke", entry, reason: entry.revocationReason)
            if json { printJSON(CertificateView(entry, pki: pki)) } else {
                say("revoked '\(entry.name)' serial \(entry.serial) (\(entry.revocationReason ?? reason)); CRL updated: \(pki.crlPath)")
            }
        }
    }
}

/// `pki crl`: a fresh CRL.
struct PKICrl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crl",
        abstract: "Regenerate the CRL, revoking superseded certificates whose grace period is over.")

    @OptionGroup var options: PKIOptions

    @Option(help: "How long the CRL is valid (its nextUpdate), e.g. 7d.")
    var validity = "7d"

    func validate() throws {
        guard let seconds = parseWindow(validity), seconds > 0 else { throw ValidationError("--validity must be a duration such as 7d") }
    }

    func run() throws {
        let pki = options.pki
        try options.perform { audit in
            let (crl, revoked) = try pki.regenerateCRL(validity: parseWindow(validity)!)
            for entry in revoked { audit.record("revoke", entry, reason: "superseded", detail: "grace period over") }
            audit.record("crl", nil, detail: "CRL with \(crl.entries.count) entries")
            say("wrote \(pki.crlPath): \(crl.entries.count) revoked, next update \(day(crl.nextUpdate ?? Date()))")
            for entry in revoked { say("  revoked superseded '\(entry.name)' serial \(entry.serial)") }
        }
    }
}
