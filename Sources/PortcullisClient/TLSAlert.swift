/// A TLS alert (RFC 8446 §6), with what it means for a device when the gateway sends it.
///
/// The gateway answers every client certificate it refuses in the handshake with `certificate_unknown`
/// (BoringSSL's alert for a failed verification, whatever the reason): the alert alone cannot tell an untrusted
/// CA from an expiry or a revocation. `portcullis doctor` tells them apart with local checks; the audit log's
/// `tls_refused` record has the gateway's precise reason.
public struct TLSAlert: Sendable, Hashable, CustomStringConvertible {
    /// The alert's number on the wire.
    public let code: UInt8
    /// Its RFC name (`certificate_unknown`).
    public let name: String
    /// What it means, in plain words, when the gateway sends it to a device.
    public let explanation: String

    public var description: String { "\(name) (\(code))" }

    /// The alert with this number; one with a generic explanation for a number not in the table.
    public static func code(_ code: UInt8) -> TLSAlert {
        known.first { $0.code == code } ?? TLSAlert(code: code, name: "alert_\(code)", explanation: "the peer ended the handshake")
    }

    /// The alert a TLS library's error text names (`TLSV1_ALERT_UNKNOWN_CA` from BoringSSL, `tlsv13 alert certificate
    /// required` from OpenSSL); nil when it names none.
    public static func named(in errorText: String) -> TLSAlert? {
        let normalized = errorText.uppercased().replacingOccurrences(of: " ", with: "_")
        guard let range = normalized.range(of: "ALERT_") else { return nil }
        let rest = normalized[range.upperBound...]
        // The longest name that starts the rest: CERTIFICATE_UNKNOWN before a shorter prefix of it.
        return known.sorted { $0.name.count > $1.name.count }.first { rest.hasPrefix($0.name.uppercased()) }
    }

    static let known: [TLSAlert] = [
        TLSAlert(code: 10, name: "unexpected_message", explanation: "the gateway received a TLS message it did not expect"),
        TLSAlert(code: 20, name: "bad_record_mac", explanation: "a TLS record did not authenticate: the connection was altered on the way"),
        TLSAlert(code: 22, name: "record_overflow", explanation: "a TLS record was larger than the protocol allows"),
        TLSAlert(
            code: 40, name: "handshake_failure",
            explanation: "no TLS version, cipher suite or key-exchange group in common with the gateway (it takes TLS 1.2 with ECDHE and AES-GCM or ChaCha20, or TLS 1.3)"),
        TLSAlert(
            code: 42, name: "bad_certificate",
            explanation: "the gateway refused your certificate as malformed, or its signature or your proof of its key did not verify"),
        TLSAlert(code: 43, name: "unsupported_certificate", explanation: "the gateway does not accept this kind of certificate"),
        TLSAlert(code: 44, name: "certificate_revoked", explanation: "your certificate is revoked"),
        TLSAlert(code: 45, name: "certificate_expired", explanation: "your certificate has expired or is not valid yet"),
        TLSAlert(
            code: 46, name: "certificate_unknown",
            explanation: "the gateway refused your certificate: it does not chain to a CA the gateway trusts, is expired or not yet valid, is not for client authentication (clientAuth), or is revoked"),
        TLSAlert(code: 47, name: "illegal_parameter", explanation: "the gateway received a handshake field it cannot accept"),
        TLSAlert(code: 48, name: "unknown_ca", explanation: "the gateway does not trust the CA that issued your certificate"),
        TLSAlert(code: 49, name: "access_denied", explanation: "the gateway denied access after the handshake"),
        TLSAlert(code: 50, name: "decode_error", explanation: "the gateway could not decode a handshake message"),
        TLSAlert(code: 51, name: "decrypt_error", explanation: "a handshake signature did not verify: is the key the certificate's?"),
        TLSAlert(
            code: 70, name: "protocol_version",
            explanation: "the gateway does not accept this TLS version (it takes TLS 1.2 or 1.3, some gateways only 1.3)"),
        TLSAlert(code: 71, name: "insufficient_security", explanation: "the gateway wants stronger cipher suites than offered"),
        TLSAlert(code: 80, name: "internal_error", explanation: "the gateway failed internally during the handshake"),
        TLSAlert(code: 90, name: "user_canceled", explanation: "the peer canceled the handshake"),
        TLSAlert(code: 109, name: "missing_extension", explanation: "a required TLS extension was missing"),
        TLSAlert(code: 110, name: "unsupported_extension", explanation: "a TLS extension was not acceptable"),
        TLSAlert(code: 112, name: "unrecognized_name", explanation: "the server does not serve the name you asked for (SNI): check --server-name"),
        TLSAlert(code: 116, name: "certificate_required", explanation: "the gateway requires a client certificate and none was sent"),
        TLSAlert(code: 120, name: "no_application_protocol", explanation: "no application protocol (ALPN) in common"),
    ]
}
