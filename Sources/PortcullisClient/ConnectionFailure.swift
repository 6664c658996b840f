import Foundation
import NIOCore
import NIOPosix

/// Why an attempt to reach the gateway, or a session with it, ended; and whether trying again can help.
///
/// The gateway answers a refusal at the stage where it decides it (`README.md`, "What a refused client sees"):
/// a TLS alert for the certificate, an HTTP status with a short plain-text reason for identity, Origin and
/// policy, a close frame (1008 and the audit reason) for a session it no longer admits.
public enum ConnectionFailure: Error, Sendable, Equatable, CustomStringConvertible {
    /// The gateway answered the upgrade request with `status` (not 101) and `reason`, its short plain-text
    /// reason (`not permitted`, ...; empty when it sent none).
    case upgradeRefused(status: Int, reason: String)
    /// The TLS handshake ended with an alert from the gateway, named as in RFC 8446 §6.2 (`certificate_revoked`,
    /// `unknown_ca`, `bad_certificate`, `certificate_unknown`, ...).
    case tlsAlert(String)
    /// The gateway closed an open session with this close frame: its code (nil when it sent none) and reason
    /// (for 1008, the audit reason: `certificate_revoked`, `no_matching_rule`, ...).
    case sessionClosed(code: Int?, reason: String)
    /// The connection ended without a close frame: the network went away, or the gateway stopped abruptly.
    case connectionLost
    /// The gateway did not answer in time (the handshake, a subscription, or heartbeats).
    case timedOut(String)
    /// TCP or TLS failed otherwise: connection refused or reset, no route, the gateway's certificate does not
    /// verify against the CA file.
    case network(String)
    /// The certificate, key or CA file could not be read or used (missing, or half-written by a renewal).
    case credentials(String)

    /// Whether trying again cannot help: the gateway refused this client's certificate, identity or request, and
    /// will refuse it again until someone changes the certificate, the policy or the client's configuration.
    ///
    /// Everything else is transient: a gateway that is down, restarting (1001), overloaded (503, 429), a
    /// network that drops, resets or times out, files caught mid-renewal.
    ///
    /// `certificate_unknown` is transient on purpose. It is the alert this gateway (on BoringSSL) sends for
    /// *every* certificate it refuses, so it cannot tell a revoked certificate from one refused because the
    /// gateway's own CRL went stale or the device's clock is off; stopping a whole fleet on a gateway-side
    /// problem would need every device to be restarted by hand. A revocation still stops the client: the gateway
    /// closes open sessions of a revoked certificate with 1008 `certificate_revoked`, and answers a resumed TLS
    /// session with 403.
    public var isPermanent: Bool {
        switch self {
        case .upgradeRefused(let status, _):
            // 4xx says "this request, from this client, will not be admitted": 401/403 (identity, policy, Origin),
            // 404 (no such route), 400/405/426/431 (a client that does not speak what the gateway expects).
            // Except where HTTP says "later": 408 (too slow this time), 425 and 429 (the identity's session limit).
            // 5xx (503 while the audit log is failing) and anything else unexpected is worth another try.
            return (400...499).contains(status) && ![408, 425, 429].contains(status)
        case .tlsAlert(let alert):
            return Self.permanentAlerts.contains(alert)
        case .sessionClosed(code: 1008?, let reason):
            return Self.permanentCloseReasons.contains(reason)
        case .sessionClosed, .connectionLost, .timedOut, .network, .credentials:
            return false
        }
    }

    /// Alerts that name this client's certificate as the problem (RFC 8446 §6.2), except `certificate_unknown`
    /// (see ``isPermanent``). `certificate_expired` is here: a gateway sends it only when the certificate it got
    /// is expired, and the client re-reads its files before each attempt, so a renewal is picked up anyway.
    static let permanentAlerts: Set<String> = [
        "bad_certificate", "unsupported_certificate", "certificate_revoked", "certificate_expired", "unknown_ca",
        "access_denied", "certificate_required",
    ]

    /// 1008 reasons (the gateway's audit reasons) that mean the session's certificate or identity is no longer
    /// admitted. Not here: `certificate_expired` (a renewed certificate may already be on disk),
    /// `crl_expired` (the gateway's problem), `rate_limited` and `too_many_violations` (the next session starts
    /// afresh).
    static let permanentCloseReasons: Set<String> = [
        "certificate_revoked", "certificate_untrusted", "certificate_missing_client_auth", "certificate_invalid",
        "no_identity_mapping", "no_matching_rule", "denied_by_rule",
    ]

    public var description: String {
        switch self {
        case .upgradeRefused(let status, let reason):
            reason.isEmpty ? "refused with HTTP \(status)" : "refused with HTTP \(status): \(reason)"
        case .tlsAlert(let alert):
            "the gateway ended the TLS handshake with the alert \(alert)"
        case .sessionClosed(let code?, let reason):
            "the gateway closed the session with \(code)" + (reason.isEmpty ? "" : " \(reason)")
        case .sessionClosed(nil, _):
            "the gateway closed the session"
        case .connectionLost:
            "the connection was lost"
        case .timedOut(let what):
            "timed out: \(what)"
        case .network(let detail):
            "network: \(detail)"
        case .credentials(let detail):
            "credentials: \(detail)"
        }
    }
}

extension ConnectionFailure {
    /// The longest text a failure keeps from the gateway or from an error: a state is logged and shown, and a
    /// hostile or broken gateway must not make it large.
    static let maximumDetailLength = 256

    /// A refusal's reason as shown: its first line, without surrounding whitespace, bounded.
    static func shortReason(_ text: String) -> String {
        let firstLine = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        return bounded(firstLine.trimmingCharacters(in: .whitespaces))
    }

    static func bounded(_ text: String) -> String {
        guard text.count > maximumDetailLength else { return text }
        return String(text.prefix(maximumDetailLength)) + "…"
    }

    /// The failure an error from connecting (TCP, TLS, the upgrade) stands for: a timeout, the gateway's TLS
    /// alert, or else the network (``ConnectErrorClass``).
    init(connectError error: any Error) {
        switch ConnectErrorClass(error) {
        case .upgradeTimedOut:
            self = .timedOut(String(describing: error))
        case .tlsAlert(let alert):
            self = .tlsAlert(alert.name)
        case .connectTimedOut:
            self = .timedOut("connecting")
        case .unresolved, .unreachable, .hostnameMismatch, .gatewayUntrusted, .tlsFailed, .closedWithoutAnswer:
            self = .network(Self.bounded(Self.networkDetail(error)))
        }
    }

    /// An error from connecting as a person reads it: `Connection refused (errno 111) at 127.0.0.1:8443` rather
    /// than NIO's nested descriptions.
    static func networkDetail(_ error: any Error) -> String {
        if let connectionError = error as? NIOConnectionError {
            if let failure = connectionError.connectionErrors.first {
                let host = failure.target.ipAddress ?? connectionError.host
                let port = failure.target.port ?? connectionError.port
                return "\(networkDetail(failure.error)) at \(host):\(port)"
            }
            if let dnsError = connectionError.dnsAError ?? connectionError.dnsAAAAError {
                return "cannot resolve \(connectionError.host): \(dnsError)"
            }
        }
        if let ioError = error as? IOError {
            return "\(String(cString: strerror(ioError.errnoCode))) (errno \(ioError.errnoCode))"
        }
        return String(describing: error)
    }

    /// The name of the TLS alert a BoringSSL error description reports as received from the peer
    /// (`…:SSLV3_ALERT_CERTIFICATE_REVOKED` → `certificate_revoked`), or nil (``TLSAlert/named(in:)``). An alert
    /// BoringSSL sends itself (after refusing the gateway's certificate, say) is reported under another reason,
    /// such as `CERTIFICATE_VERIFY_FAILED`.
    static func tlsAlertName(inErrorDescription text: String) -> String? {
        TLSAlert.named(in: text)?.name
    }
}
