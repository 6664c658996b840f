/// One operation a NATS server sends its client.
public enum NATSServerMessage: Sendable, Equatable {
    /// `INFO`: what the server is and expects, sent first and again when the cluster changes.
    case info(NATSServerInfo)
    /// `MSG` or `HMSG`: a message for one of the client's subscriptions.
    case message(NATSMessage)
    /// `PING`: the server checks the client is alive; answer with `PONG`.
    case ping
    /// `PONG`: the answer to the client's `PING`.
    case pong
    /// `+OK`: an acknowledgement, sent only in verbose mode.
    case ok
    /// `-ERR`: the server's complaint, without the quotes around it. Most close the connection.
    case error(String)
}

/// What the client needs from a server's `INFO`; the rest of it is ignored.
public struct NATSServerInfo: Sendable, Equatable {
    /// The server's `server_id`, if it sent one.
    public var serverID: String?
    /// The largest message (headers and payload) the server accepts (`max_payload`), if it said.
    public var maximumPayload: Int?
    /// Whether the server understands headers (`HPUB`, `HMSG`).
    public var supportsHeaders: Bool
    /// Whether the server insists on TLS.
    public var tlsRequired: Bool
    /// Whether the server insists on credentials in `CONNECT`.
    public var authRequired: Bool
    /// The text an NKey or JWT user signs in `CONNECT` (`nonce`), sent by a server that has such users.
    public var nonce: String?

    public init(
        serverID: String? = nil, maximumPayload: Int? = nil, supportsHeaders: Bool = false, tlsRequired: Bool = false,
        authRequired: Bool = false, nonce: String? = nil
    ) {
        self.serverID = serverID
        self.maximumPayload = maximumPayload
        self.supportsHeaders = supportsHeaders
        self.tlsRequired = tlsRequired
        self.authRequired = authRequired
        self.nonce = nonce
    }
}

/// One NATS header line, `Name: value`.
public struct NATSHeader: Sendable, Hashable {
    public var name: String
    public var value: String

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// A message delivered to a subscription.
public struct NATSMessage: Sendable, Equatable {
    /// The subject it was published on.
    public var subject: String
    /// The subscription it is for, as the client numbered it in `SUB`.
    public var sid: UInt64
    /// Where the publisher wants a reply, if anywhere.
    public var replyTo: String?
    /// The header lines in the order sent (names may repeat); empty for `MSG` and when `headerProblem` is set.
    public var headers: [NATSHeader]
    /// The status code of an `HMSG`'s `NATS/1.0 503` line (no responders, timeouts), if it had one.
    public var status: Int?
    /// Why the header block could not be read, when it could not. The framing was sound, so only this message is
    /// lost, not the connection: the gateway refuses it and reads on.
    public var headerProblem: String?
    /// The payload, without headers.
    public var payload: [UInt8]

    public init(
        subject: String, sid: UInt64, replyTo: String? = nil, headers: [NATSHeader] = [], status: Int? = nil,
        headerProblem: String? = nil, payload: [UInt8]
    ) {
        self.subject = subject
        self.sid = sid
        self.replyTo = replyTo
        self.headers = headers
        self.status = status
        self.headerProblem = headerProblem
        self.payload = payload
    }
}

/// Why the NATS byte stream cannot be read on (the connection is then closed), or why a command cannot be written.
public struct NATSProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }
}
