import Foundation

/// One audit event: a decision of the gateway, an operation of the CLI or of the log itself, written as one JSON
/// line that the log's hash chain seals (see `AuditChain`).
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
    /// The load balancer a connection came through (its PROXY protocol header gave `peer`); nil for a direct one.
    public var proxy: String?
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
    /// For `audit_recovered` records: how many records were lost while the log could not be written.
    public var dropped: Int?
    /// For aggregated refusals (`tls_refused`, `connection_refused`): how many further refusals of the same
    /// address, reason and certificate this record stands for.
    public var count: Int?
    /// For `audit_checkpoint` records: the SHA-256 (hex) of the raw Ed25519 public key that signed it.
    public var key: String?
    /// For `audit_checkpoint` records: the Ed25519 signature (base64) over the chain up to the previous record.
    public var signature: String?
    /// The previous record's `hash` (64 zeros for the first record): read back from the log, never set by callers.
    public var prev: String?
    /// SHA-256 (hex) of this record's line without its `hash` member: read back from the log.
    public var hash: String?

    public init(event: String, decision: String? = nil, reason: String? = nil, detail: String? = nil) {
        self.event = event
        self.decision = decision
        self.reason = reason
        self.detail = detail
    }

    enum CodingKeys: String, CodingKey {
        case seq, time, event, decision, reason, detail, identity, subject, sans, fingerprint, serial, peer, proxy, origin,
            path, rule, status, session, resumed, operation, name, user, topic, dropped, count, key, signature, prev, hash
        case tlsVersion = "tls_version"
        case closeCode = "close_code"
        case durationMs = "duration_ms"
        case messagesIn = "messages_in"
        case messagesOut = "messages_out"
        case bytesIn = "bytes_in"
        case bytesOut = "bytes_out"
    }

    /// Appends the record's JSON object without its closing brace (the chain adds `prev` and `hash` after it).
    ///
    /// Written by hand rather than with `JSONEncoder`: the key order must be fixed (the hash covers these exact
    /// bytes, and `seq`, `time` and `event` first keep lines readable and let `audit query` find them without a
    /// JSON parser), and it must be fast enough for the writer to keep up with a busy gateway.
    /// `seq` and `time` (already formatted) are the writer's, given apart so that it need not copy the record.
    func encodeBody(into out: inout [UInt8], seq: UInt64, time: [UInt8]) {
        var first = true
        func member(_ name: CodingKeys) {
            out.append(first ? UInt8(ascii: "{") : UInt8(ascii: ","))
            first = false
            out.append(UInt8(ascii: "\""))
            out.append(contentsOf: name.rawValue.utf8)
            out.append(contentsOf: "\":".utf8)
        }
        func add(_ name: CodingKeys, _ value: String?) {
            guard let value else { return }
            member(name)
            appendJSONString(value, to: &out)
        }
        func add(_ name: CodingKeys, _ value: Int?) {
            guard let value else { return }
            member(name)
            out.append(contentsOf: String(value).utf8)
        }
        member(.seq)
        out.append(contentsOf: String(seq).utf8)
        member(.time)
        out.append(UInt8(ascii: "\""))
        out.append(contentsOf: time)
        out.append(UInt8(ascii: "\""))
        add(.event, event)
        add(.operation, operation)
        add(.name, name)
        add(.user, user)
        add(.decision, decision)
        add(.reason, reason)
        add(.identity, identity)
        add(.peer, peer)
        add(.proxy, proxy)
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
        add(.dropped, dropped)
        add(.count, count)
        add(.tlsVersion, tlsVersion)
        if let resumed {
            member(.resumed)
            out.append(contentsOf: (resumed ? "true" : "false").utf8)
        }
        add(.subject, subject)
        if let sans {
            member(.sans)
            out.append(UInt8(ascii: "["))
            for (index, san) in sans.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                appendJSONString(san, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        }
        add(.fingerprint, fingerprint)
        add(.serial, serial)
        add(.key, key)
        add(.signature, signature)
        add(.detail, detail)
    }
}

/// A JSON string literal for `text` (RFC 8259 escaping).
func jsonString(_ text: String) -> String {
    var bytes: [UInt8] = []
    appendJSONString(text, to: &bytes)
    return String(decoding: bytes, as: UTF8.self)
}

/// Appends `text` as a JSON string literal: quotes, backslashes and control characters escaped, everything
/// else (UTF-8 included) as is, so one text always has one encoding.
func appendJSONString(_ text: String, to out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    var text = text
    // Nearly every value needs no escaping: copy it whole.
    let plain = text.withUTF8 { bytes in
        guard !bytes.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) else { return false }
        out.append(contentsOf: bytes)
        return true
    }
    if plain {
        out.append(UInt8(ascii: "\""))
        return
    }
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
        case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
        case UInt8(ascii: "\n"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
        case UInt8(ascii: "\r"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
        case UInt8(ascii: "\t"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
        case 0..<0x20:
            out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0")])
            out.append(hexDigit(byte >> 4))
            out.append(hexDigit(byte & 0xF))
        default: out.append(byte)
        }
    }
    out.append(UInt8(ascii: "\""))
}

/// The lowercase hex digit for `value` (0...15).
@inline(__always)
func hexDigit(_ value: UInt8) -> UInt8 {
    value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10
}

extension AuditRecord {
    /// This record (a connection's or a session's template: peer, certificate, identity, route) as the record
    /// of `event`.
    public func with(event: String, decision: String? = nil, reason: String? = nil, detail: String? = nil) -> AuditRecord {
        var record = self
        record.event = event
        record.decision = decision
        record.reason = reason
        record.detail = detail
        return record
    }
}
