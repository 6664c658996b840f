import Foundation
import PortcullisYAML

/// Default lifetime and renewal point of each profile, from `pki/profiles.yaml` (tracked, editable).
public struct ProfileDefaults: Sendable, Equatable {
    /// Lifetime in days of a certificate issued without `--days`.
    public var days: Int
    /// Fraction of the lifetime after which the certificate is due for renewal (step CLI's two thirds).
    public var renewAt: Double

    public init(days: Int, renewAt: Double = 2.0 / 3.0) {
        self.days = days
        self.renewAt = renewAt
    }
}

public struct CertificateProfiles: Sendable, Equatable {
    public var server = ProfileDefaults(days: 365)
    public var client = ProfileDefaults(days: 90)

    public init() {}

    public func defaults(for profile: String) -> ProfileDefaults {
        profile == "server" ? server : client
    }

    /// Reads `profiles.yaml` from the PKI directory, or the built-in defaults when there is none.
    public static func load(path: String) throws -> CertificateProfiles {
        var profiles = CertificateProfiles()
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return profiles }
        let reader = YAMLReader(file: path)
        if let root = reader.parse(text), let top = reader.mapping(root, what: "profiles", allowed: ["server", "client"]) {
            for (name, entry) in top {
                guard let fields = reader.mapping(entry.value, what: "profile '\(name)'", allowed: ["days", "renew_at"])
                else { continue }
                var value = profiles.defaults(for: name)
                if let days = fields["days"], let number = reader.integer(days.value, what: "days", range: 1...36500) {
                    value.days = number
                }
                if let renew = fields["renew_at"] {
                    if case let text? = reader.string(renew.value, what: "renew_at"), let fraction = Double(text),
                        fraction > 0, fraction < 1
                    {
                        value.renewAt = fraction
                    } else {
                        reader.report(line: renew.value.line, "renew_at must be a fraction of the lifetime, between 0 and 1")
                    }
                }
                if name == "server" { profiles.server = value } else { profiles.client = value }
            }
        }
        guard reader.diagnostics.isEmpty else { throw DiagnosticsError(reader.diagnostics) }
        return profiles
    }
}
