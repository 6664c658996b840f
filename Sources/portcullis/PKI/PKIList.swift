import ArgumentParser
import Foundation
import PortcullisPKI
import PortcullisPolicy
import SwiftASN1
import X509

extension InventoryEntry.Status: ExpressibleByArgument {}

/// `pki list`: what was issued.
struct PKIList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List every certificate issued: name, serial, profile, not-after, days left, status.",
        discussion: """
            Status: valid; renew-due (past its renewal point); expiring (7 days or fewer left); expired; revoked; \
            superseded (replaced by a renewal or rotation).
            """)

    @OptionGroup var options: PKIOptions

    @Option(help: "Only certificates with this status (repeatable).")
    var status: [InventoryEntry.Status] = []

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let pki = options.pki
        let now = Date()
        let entries = try options.perform { _ in try pki.loadInventory().entries }
            .filter { status.isEmpty || status.contains($0.status(at: now)) }
        if json {
            printJSON(entries.map { CertificateView($0, pki: pki, now: now) })
            return
        }
        let rows = [["NAME", "SERIAL", "PROFILE", "NOT AFTER", "DAYS", "STATUS"]] + entries.map {
            [$0.name, $0.serial, $0.profile, day($0.notAfter), String($0.daysLeft(at: now)), $0.status(at: now).rawValue]
        }
        StandardStreams.output(table(rows))
        if entries.isEmpty { say("(no certificates)") }
    }
}

/// `pki inspect NAME|FILE`: one certificate, readable.
struct PKIInspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show a certificate (by name, or a PEM file): subject, SANs, EKU, validity, issuer, fingerprint, status.")

    @OptionGroup var options: PKIOptions

    @Argument(help: "A name from the inventory, or a path to a PEM certificate.")
    var target: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        let pki = options.pki
        let now = Date()
        let (certificate, entry): (Certificate, InventoryEntry?) = try options.perform { _ in
            let inventory = try? pki.loadInventory()
            if FileManager.default.fileExists(atPath: target) {
                guard let certificate = try readPEMCertificates(path: target).first else {
                    throw PKIError.invalid("\(target): no certificate in the file")
                }
                return (certificate, inventory?.entry(serial: hexString(certificate.serialNumber.bytes)))
            }
            guard let inventory else { throw PKIError.invalid("'\(target)' is neither a file nor, without an inventory, a name") }
            guard let entry = inventory.active(target) ?? inventory.entries.last(where: { $0.name == target }) else {
                throw PKIError.invalid("no certificate named '\(target)' and no such file")
            }
            return (try Certificate(pemEncoded: entry.certificatePEM), entry)
        }
        let view = InspectView(certificate, entry: entry, now: now)
        if json {
            printJSON(view)
        } else {
            say(view.text)
        }
    }
}

struct InspectView: Encodable {
    var subject: String
    var issuer: String
    var serial: String
    var sans: [String]
    var extendedKeyUsage: [String]
    var isCA: Bool
    var notBefore: Date
    var notAfter: Date
    var daysLeft: Int
    var fingerprint: String
    var status: String

    enum CodingKeys: String, CodingKey {
        case subject, issuer, serial, sans, fingerprint, status
        case extendedKeyUsage = "extended_key_usage"
        case isCA = "is_ca"
        case notBefore = "not_before"
        case notAfter = "not_after"
        case daysLeft = "days_left"
    }

    init(_ certificate: Certificate, entry: InventoryEntry?, now: Date) {
        subject = certificate.subject.description
        issuer = certificate.issuer.description
        serial = hexString(certificate.serialNumber.bytes)
        var serializer = DER.Serializer()
        try? serializer.serialize(certificate)
        let facts = CertificateFacts(certificate: certificate, derBytes: serializer.serializedBytes)
        sans = entry?.sans ?? (facts.sanURIs.map { "URI:\($0)" } + facts.sanDNSNames.map { "DNS:\($0)" }
            + facts.sanEmails.map { "email:\($0)" })
        extendedKeyUsage = ((try? certificate.extensions.extendedKeyUsage).map { Array($0) } ?? []).map { usage in
            switch usage {
            case .serverAuth: "serverAuth"
            case .clientAuth: "clientAuth"
            default: "\(usage)"
            }
        }
        if case .isCertificateAuthority? = try? certificate.extensions.basicConstraints { isCA = true } else { isCA = false }
        notBefore = certificate.notValidBefore
        notAfter = certificate.notValidAfter
        daysLeft = Int((certificate.notValidAfter.timeIntervalSince(now) / 86400).rounded(.down))
        fingerprint = facts.fingerprint
        if let entry {
            status = entry.status(at: now).rawValue
        } else {
            status = now > notAfter ? "expired" : now < notBefore ? "not yet valid" : "valid (not in this PKI's inventory)"
        }
    }

    var text: String {
        var lines = [
            "subject:     \(subject)",
            "issuer:      \(issuer)",
            "serial:      \(serial)",
        ]
        if !sans.isEmpty { lines.append("SANs:        \(sans.joined(separator: ", "))") }
        lines.append("usage:       \(isCA ? "CA" : extendedKeyUsage.joined(separator: ", "))")
        lines.append("valid:       \(day(notBefore)) to \(day(notAfter)) (\(daysLeft) days left)")
        lines.append("fingerprint: SHA-256 \(fingerprint)")
        lines.append("status:      \(status)")
        return lines.joined(separator: "\n")
    }
}
