import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import PortcullisNATS

/// Why the connection to NATS failed, in words an operator can act on. `/readyz`, the log and the
/// `nats_unavailable` audit record carry it; the libraries' own descriptions name error numbers and their source
/// files (`sslError([Error: 268436498 error:10000412:SSL routines:OPENSSL_internal:SSLV3_ALERT_BAD_CERTIFICATE at
/// …/tls_record.cc:491])`).
enum NATSFailureReason {
    /// The TCP connection to `host`:`port` could not be opened.
    static func connecting(host: String, port: Int, _ error: any Error) -> String {
        let prefix = "cannot connect to \(host):\(port)"
        guard let failure = error as? NIOConnectionError else { return "\(prefix): \(error)" }
        if let single = failure.connectionErrors.first {
            if let io = single.error as? IOError { return "\(prefix): \(String(cString: strerror(io.errnoCode)).lowercased())" }
            return "\(prefix): \(single.error)"
        }
        if failure.dnsAError != nil || failure.dnsAAAAError != nil { return "\(prefix): the name does not resolve" }
        return "\(prefix): \(error)"
    }

    /// An error on an open connection: the TLS handshake, mostly.
    static func connection(_ error: any Error, host: String) -> String {
        if let extra = error as? NIOSSLExtraError, extra == .failedToValidateHostname {
            return "NATS's certificate does not name \(host) (nats.url)"
        }
        let text = "\(error)"
        if let alert = alertName(in: text) {
            let advice: String
            switch alert {
            case "bad_certificate", "unknown_ca", "certificate_required", "certificate_unknown", "unsupported_certificate",
                "certificate_expired", "certificate_revoked", "access_denied":
                advice = "nats-server did not accept the gateway's certificate: check nats.tls.certificate and key, and that nats-server's tls ca_file holds their CA"
            case "protocol_version", "handshake_failure", "insufficient_security":
                advice = "the gateway and nats-server share no TLS version or cipher suite"
            default:
                advice = "nats-server ended the TLS handshake"
            }
            return "NATS refused TLS (alert \(alert)): \(advice)"
        }
        if text.contains("CERTIFICATE_VERIFY_FAILED") {
            return "NATS's certificate does not verify against nats.tls.ca"
        }
        if error is NIOSSLError || text.contains("SSL routines") {
            return "TLS with NATS failed: \(withoutSourceLocation(text))"
        }
        return text
    }

    /// A `-ERR` the server sent (already made printable); `signIn` is how the gateway signs in.
    static func server(_ text: String, signIn: NATSSignIn = .anonymous) -> String {
        if text.localizedCaseInsensitiveContains("Authorization Violation") {
            switch signIn {
            case .nkey(let key):
                return "NATS refused the sign-in with the NKey \(key.publicKey) (Authorization Violation): check nats.nkey_seed_file, "
                    + "and that nats-server's authorization has that public key as an nkey user"
            case .userJWT(_, let key):
                return "NATS refused the sign-in with the user JWT of \(key.publicKey) (Authorization Violation): check nats.credentials: "
                    + "its account must be one nats-server's resolver knows, issued by its operator, and the JWT unexpired"
            case .password, .anonymous:
                return "NATS refused the sign-in (Authorization Violation): check nats.user and password_file, or that nats-server maps the gateway's certificate to a user"
            }
        }
        return "NATS said: \(text)"
    }

    /// `bad_certificate` from BoringSSL's `SSLV3_ALERT_BAD_CERTIFICATE` or `TLSV1_ALERT_UNKNOWN_CA`.
    static func alertName(in text: String) -> String? {
        for marker in ["SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_"] {
            guard let start = text.range(of: marker)?.upperBound else { continue }
            let name = text[start...].prefix { $0.isASCII && ($0.isUppercase || $0.isNumber || $0 == "_") }
            if !name.isEmpty { return name.lowercased() }
        }
        return nil
    }

    /// BoringSSL's text without ` at /path/to/file.cc:123`, which says nothing to an operator.
    static func withoutSourceLocation(_ text: String) -> String {
        guard let at = text.range(of: " at /") else { return text }
        let rest = text[at.upperBound...]
        let end = rest.firstIndex { $0 == "]" || $0 == ")" } ?? rest.endIndex
        return String(text[..<at.lowerBound] + rest[end...])
    }
}
