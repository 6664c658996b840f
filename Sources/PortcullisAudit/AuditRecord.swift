import Foundation

/// One audit event: a decision of the gateway (or, later, an operation of the CLI), written as one JSON line.
///
/// Field names are stable: tools and `portcullis audit` read them. Absent values are omitted.
public struct AuditRecord: Codable, Sendable, Equatable {
    /// Position in the log, from 1, assigned by the writer.
    public var seq: UInt64 = 0
    /// RFC 3339 with milliseconds, UTC, assigned by the writer.
    public var time: String = ""
    /// What happened: `tls_refused`, `http_refused`, `session_opened`, `session_closed`, `gateway_started`, ...
    public var event: String
    /// `allow` or `deny` for decisions.
    public var decision: String?
    /// A stable machine-readable code such as `origin_not_allowed` or `certificate_revoked`.
    public var reason: String?
    /// The full human-readable reason.
    public var detail: String?
    public var identity: String?
    public var subject: String?
    public var sans: [String]?
    public var fingerprint: String?
    public var serial: String?
    public var peer: String?
    public var origin: String?
    public var path: String?
    public var rule: String?
    public var status: Int?
    public var tlsVersion: String?
    public var resumed: Bool?
    public var session: String?
    public var closeCode: Int?
    public var durationMs: Int?
    public var messagesIn: Int?
    public var messagesOut: Int?
    public var bytesIn: Int?
    public var bytesOut: Int?
    /// For message events: the topic or subscription filter involved.
    public var topic: String?
    /// For `pki_operation` records: what was done (`issue`, `sign`, `renew`, `rotate`, `revoke`, `crl`, `init`).
    public var operation: String?
    /// For `pki_operation` records: the certificate's name in the PKI.
    public var name: String?
    /// For `pki_operation` records: the local user who ran the command.
    public var user: String?

    public init(event: String, decision: String? = nil, reason: String? = nil, detail: String? = nil) {
        self.event = event
        self.decision = decision
        self.reason = reason
        self.detail = detail
    }

    enum CodingKeys: String, CodingKey {
        case seq, time, event, decision, reason, detail, identity, subject, sans, fingerprint, serial, peer, origin,
            path, rule, status, session, resumed, operation, name, user, topic
        case tlsVersion = "tls_version"
        case closeCode = "close_code"
        case durationMs = "duration_ms"
        case messagesIn = "messages_in"
        case messagesOut = "messages_out"
        case bytesIn = "bytes_in"
        case bytesOut = "bytes_out"
    }

    /// The record as one line of JSON (no trailing newline), keys in a fixed, readable order.
    ///
    /// Written by hand rather than with `JSONEncoder` so that the key order is stable and readable (time and
    /// event first), which `JSONEncoder` cannot do except alphabetically.
    public func jsonLine() -> String {
        var out = "{"
        var first = true
        func key(_ name: String) {
            if !first { out += "," }
            first = false
            out += "\"\(name)\":"
        }
        func add(_ name: CodingKeys, _ value: String?) {
            guard let value else { return }
            key(name.rawValue)
            out += jsonString(value)
        }
        func add(_ name: CodingKeys, _ value: Int?) {
            guard let value else { return }
            key(name.rawValue)
            out += String(value)
        }
        key(CodingKeys.seq.rawValue)
        out += String(seq)
        add(.time, time)
        add(.event, event)
        add(.operation, operation)
        add(.name, name)
        add(.user, user)
        add(.decision, decision)
        add(.reason, reason)
        add(.identity, identity)
        add(.peer, peer)
        add(.path, path)
        add(.origin, origin)
        add(.rule, rule)
        add(.topic, topic)
        add(.status, status)
        add(.session, session)
        add(.closeCode, closeCode)
        add(.durationMs, durationMs)
        add(.messagesIn, messagesIn)
        add(.messagesOut, messagesOut)
        add(.bytesIn, bytesIn)
        add(.bytesOut, bytesOut)
        add(.tlsVersion, tlsVersion)
        if let resumed {
            key(CodingKeys.resumed.rawValue)
            out += resumed ? "true" : "false"
        }
        add(.subject, subject)
        if let sans {
            key(CodingKeys.sans.rawValue)
            out += "[" + sans.map(jsonString).joined(separator: ",") + "]"
        }
        add(.fingerprint, fingerprint)
        add(.serial, serial)
        add(.detail, detail)
        out += "}"
        return out
    }
}

/// A JSON string literal for `text` (RFC 8259 escaping).
func jsonString(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
            out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count)
                + String(scalar.value, radix: 16)
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}
