import Foundation
import PortcullisAudit
import PortcullisPolicy

/// Everything `portcullis serve` needs to run, with the defaults an operator would expect.
///
/// Decoding from YAML lives in `GatewayConfiguration+YAML.swift`; this type stays plain data.
public struct GatewayConfiguration: Sendable, Equatable {
    public enum RouteKind: String, Sendable, CaseIterable {
        /// Each message is sent back: for diagnostics and to show admission end to end.
        case echo
        /// The built-in publish/subscribe broker (`docs/protocol.md`), under the identity's topic ACLs.
        case broker
        /// Frames proxied to a backend WebSocket, with the verified identity in headers the client cannot forge.
        case upstream
    }

    /// A backend WebSocket an `upstream` route forwards to.
    public struct Upstream: Sendable, Equatable {
        public var url: String
        public var secure: Bool
        public var host: String
        public var port: Int
        /// Path and query on the backend.
        public var target: String
        /// For `wss://`: the gateway's client certificate and key, and the CA that signs the backend's certificate.
        public var certificate: String?
        public var key: String?
        public var trustRoots: String?

        /// Parses `ws://host:port/path` or `wss://host:port/path`; nil when it is neither.
        public init?(url: String) {
            let secure: Bool
            let rest: Substring
            if url.hasPrefix("ws://") {
                (secure, rest) = (false, url.dropFirst(5))
            } else if url.hasPrefix("wss://") {
                (secure, rest) = (true, url.dropFirst(6))
            } else {
                return nil
            }
            let authority = rest.prefix { $0 != "/" }
            let target = rest.dropFirst(authority.count)
            guard let colon = authority.lastIndex(of: ":"), let port = Int(authority[authority.index(after: colon)...]),
                (1...65535).contains(port), colon != authority.startIndex
            else {
                guard !authority.isEmpty, !authority.contains(":") else { return nil }
                self.init(url: url, secure: secure, host: String(authority), port: secure ? 443 : 80, target: String(target))
                return
            }
            let host = String(authority[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
            // `ws://[]:80/` is brackets around nothing: no backend to connect to, so no URL of one.
            guard !host.isEmpty else { return nil }
            self.init(url: url, secure: secure, host: host, port: port, target: String(target))
        }

        init(url: String, secure: Bool, host: String, port: Int, target: String) {
            self.url = url
            self.secure = secure
            self.host = host
            self.port = port
            self.target = target.isEmpty ? "/" : target
        }
    }

    public struct Route: Sendable, Equatable {
        public var path: String
        public var kind: RouteKind
        /// For `upstream` routes.
        public var upstream: Upstream?
        /// WebSocket compression on this route; nil takes the gateway-wide `compression`.
        public var compression: Compression?
        /// Subprotocols (`Sec-WebSocket-Protocol`, RFC 6455 §1.9) the route accepts, in no particular order: the
        /// first the client offers among them is chosen. Empty: offers are ignored on `echo` and `broker`
        /// routes, and passed on whole to an `upstream` backend.
        public var subprotocols: [String] = []
        /// Whether a session must agree on a subprotocol; a client that offers none the route accepts is refused.
        public var subprotocolRequired = false

        public init(
            path: String, kind: RouteKind, upstream: Upstream? = nil, compression: Compression? = nil,
            subprotocols: [String] = [], subprotocolRequired: Bool = false
        ) {
            self.path = path
            self.kind = kind
            self.upstream = upstream
            self.compression = compression
            self.subprotocols = subprotocols
            self.subprotocolRequired = subprotocolRequired
        }
    }

    /// Whether `name` can be a subprotocol: an RFC 7230 token (printable ASCII without separators).
    public static func isSubprotocolToken(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { byte in
            (0x21...0x7E).contains(byte) && !"()<>@,;:\\\"/[]?={}".utf8.contains(byte)
        }
    }

    /// WebSocket message compression a route offers its clients.
    public enum Compression: String, Sendable, CaseIterable {
        case none
        /// RFC 7692, negotiated when the client offers it.
        case perMessageDeflate = "permessage-deflate"
    }

    /// The compression a route's sessions negotiate.
    public func compression(of route: Route) -> Compression {
        route.compression ?? compression
    }

    public enum TLSVersion: String, Sendable, CaseIterable {
        case v1_2 = "1.2"
        case v1_3 = "1.3"
    }

    /// Key-exchange groups a TLS handshake may use.
    public enum KeyExchangeGroup: String, Sendable, CaseIterable {
        /// The hybrid of X25519 and ML-KEM-768: post-quantum, and the costliest for the server.
        case x25519MLKEM768 = "x25519_mlkem768"
        case x25519
        case p256
        case p384
    }

    /// What the gateway does with the certificates a CRL covers once the CRL is past its `nextUpdate`.
    public enum CRLExpiredPolicy: String, Sendable, Equatable, CaseIterable {
        /// Refuse them (`crl_expired`): a stale CRL may miss revocations made since (the default).
        case refuse
        /// Admit them as the stale CRL says, counted in `portcullis_crl_expired`.
        case warn
    }

    public struct TLS: Sendable, Equatable {
        /// PEM file with the server certificate first, then any intermediates.
        public var certificateChain: String
        public var privateKey: String
        /// PEM bundle of the CAs that issue client certificates (self-signed ones are the trust anchors).
        public var clientCA: String
        /// PEM file of further intermediate CAs (an issuing CA the root signed); nil for none.
        public var clientIntermediates: String?
        /// PEM CRL(s) checked during every handshake; nil for none.
        public var crl: String?
        /// Whether `crl` may not exist yet: true for a `pki/` layout, whose CRL the first revocation creates
        /// (a reload picks it up then). A CRL named in the configuration file must exist.
        public var crlMayBeAbsent = false
        /// What a CRL past its `nextUpdate` means for the certificates it covers.
        public var crlExpired: CRLExpiredPolicy = .refuse
        public var minimumVersion: TLSVersion
        /// Groups in the server's order of preference; nil for the TLS library's default (which puts the
        /// post-quantum hybrid first).
        public var keyExchange: [KeyExchangeGroup]?

        public init(
            certificateChain: String, privateKey: String, clientCA: String, clientIntermediates: String? = nil,
            crl: String? = nil, minimumVersion: TLSVersion = .v1_2, keyExchange: [KeyExchangeGroup]? = nil
        ) {
            self.keyExchange = keyExchange
            self.certificateChain = certificateChain
            self.privateKey = privateKey
            self.clientCA = clientCA
            self.clientIntermediates = clientIntermediates
            self.crl = crl
            self.minimumVersion = minimumVersion
        }
    }

    public var listenHost: String
    public var listenPort: Int
    public var tls: TLS
    /// Gateway-wide `Origin` allow-list; rules may narrow it.
    public var allowedOrigins: [String]
    public var routes: [Route]
    public var policiesDirectory: String
    public var auditDirectory: String
    /// Seconds a client has to complete TLS and the WebSocket upgrade together.
    public var handshakeTimeout: Double
    /// Largest request head (request line and headers) accepted before the upgrade.
    public var maxHeaderBytes: Int
    /// Largest WebSocket frame and reassembled message.
    public var maxMessageBytes: Int
    /// Event-loop threads that serve connections; nil: one per core. One loop keeps a publisher and its
    /// subscribers on the same thread, so a delivery never waits for another thread to wake (lower tail
    /// latency at low rates); more loops spread the work over more cores.
    public var eventLoops: Int?
    /// Seconds between the gateway's pings on an idle-or-not session.
    public var pingInterval: Double = 20
    /// Seconds a peer has to answer a ping before the session is closed.
    public var pingTimeout: Double = 20
    /// Bytes a session may have queued towards its client; a subscriber that falls further behind is closed
    /// with 1013 rather than let the gateway's memory grow.
    public var maxOutboundBytes: Int = 4 << 20
    /// Seconds a shutdown (SIGTERM, SIGINT) waits for sessions to finish their close handshake before it
    /// closes what is left and exits.
    public var drainTimeout: Double = 10
    /// WebSocket compression for routes that do not set their own (`none` by default).
    public var compression: Compression = .none
    /// Whether permessage-deflate keeps its compression context between messages. Off by default: each message
    /// is compressed on its own and an idle session holds no compressor state. On, a session that uses
    /// compression holds a deflate and an inflate stream of its own (about 300 KiB with 15-bit windows).
    public var compressionContextTakeover = false
    /// Seconds the peer has to finish the close handshake (answer our close frame, or read our answer to
    /// its own) before the connection is dropped.
    public var closeTimeout: Double = 5

    /// What a delivery may add to the message it carries: the frame header (at most 10 bytes) and the
    /// broker's stamp of the sender (a type byte, two 2-byte lengths and an identity of at most 65,535
    /// bytes, as `docs/protocol.md` lays out). `max_outbound_bytes` must hold a largest message with it.
    public static let largestDeliveryOverhead = 10 + 5 + 65_535
    /// The range each duration setting accepts, in seconds (`docs/configuration.md` lists them). Every one is
    /// bounded: a timer past Int64 nanoseconds (about 292 years) would end the process when it is armed.
    public enum Bounds {
        public static let handshakeTimeout: ClosedRange<Double> = 0.1...600
        public static let pingInterval: ClosedRange<Double> = 0.1...86400
        public static let pingTimeout: ClosedRange<Double> = 0.1...3600
        public static let drainTimeout: ClosedRange<Double> = 0.1...3600
        public static let closeTimeout: ClosedRange<Double> = 0.1...600
        public static let certificateExpiryWarning: ClosedRange<Double> = 1...(3650 * 86400)
        public static let reloadWatchInterval: ClosedRange<Double> = 0.01...3600
        public static let reloadDebounce: ClosedRange<Double> = 0.001...600
        public static let auditFsyncInterval: ClosedRange<Double> = 0.001...60
        public static let auditSegmentMaxAge: ClosedRange<Double> = 1...(3650 * 86400)
        public static let auditCheckpointInterval: ClosedRange<Double> = 1...(30 * 86400)
        public static let refusalAuditInterval: ClosedRange<Double> = 1...86400
    }

    /// How the audit log writes, fsyncs, rotates and signs (the `audit:` section).
    public var audit = AuditSettings()
    /// What the gateway does while audit records cannot be written.
    public var onAuditFailure: AuditFailurePolicy = .refuseNewSessions
    /// Seconds before a session's certificate expires at which the session is sent a `notice` message; at
    /// the expiry itself it is closed (1008 `certificate_expired`). 0 sends no warning.
    public var certificateExpiryWarning: Double = 300
    /// Seconds between checks of the files a reload reads (configuration, policies, TLS files, CRL); a change
    /// reloads once the files have been still for `reloadDebounce` seconds. 0 turns watching off (SIGHUP
    /// still reloads).
    public var reloadWatchInterval: Double = 1
    public var reloadDebounce: Double = 0.5
    /// Limits on connections, checked at accept before TLS (the `limits:` section).
    public var limits = ConnectionLimits()

    /// Connection limits. Nil turns a limit off.
    public struct ConnectionLimits: Sendable, Equatable {
        /// Open connections in all, sessions and handshakes alike. Each uses a file descriptor (two on an
        /// upstream route), and this machine's processes may hold 20,000.
        public var maxConnections: Int? = 10_000
        /// Open connections from one client address.
        public var perAddressConnections: Int? = 1_000
        /// New connections one client address may open per second (a burst of one second's worth).
        public var perAddressNewPerSecond: Int? = 100
        /// Seconds over which refusals of unauthenticated connections are aggregated in the audit log (per
        /// address, reason and certificate: the first written at once, the rest counted); 0 writes each one.
        public var refusalAuditInterval: Double = 60

        public init() {}
    }

    /// The admin listener (`/healthz`, `/readyz`, `/metrics`); nil for none.
    /// The shared broker (`nats`): publish/subscribe across gateways through NATS. Nil: the broker is in-process
    /// only.
    public var nats: NATS?

    /// Where the shared broker's NATS server is and how the gateway signs in.
    public struct NATS: Sendable, Equatable {
        /// As configured, for messages: `nats://host:port` or `tls://host:port`.
        public var url: String
        public var host: String
        public var port: Int
        /// `tls://`: TLS to NATS, verified against `ca` (mutual with `certificate` and `key`).
        public var secure: Bool
        public var certificate: String?
        public var key: String?
        public var ca: String?
        public var user: String?
        /// A file holding the password of `user` (kept out of the configuration, which is often world-readable).
        public var passwordFile: String?
        /// A NATS `.creds` file (`credentials`): a user JWT and the user's NKey seed, as `nsc` writes it, for a
        /// nats-server in operator mode. Exclusive with `user` and `nkeySeedFile`.
        public var credentialsFile: String?
        /// A file holding a user NKey seed (`SU…`; `nkey_seed_file`), for an `nkey:` user of nats-server's
        /// configuration. Exclusive with `user` and `credentialsFile`.
        public var nkeySeedFile: String?
        /// The subject tokens every topic is published under (`portcullis.devices.42.telemetry`).
        public var subjectPrefix = "portcullis"
        /// The connection's name in nats-server's monitoring; the host name by default.
        public var name: String?

        /// Parses `nats://host[:port]` or `tls://host[:port]` (4222 by default); nil when it is neither.
        public init?(url: String) {
            let secure: Bool
            let authority: Substring
            if url.hasPrefix("nats://") {
                (secure, authority) = (false, url.dropFirst(7))
            } else if url.hasPrefix("tls://") {
                (secure, authority) = (true, url.dropFirst(6))
            } else {
                return nil
            }
            let trimmed = authority.hasSuffix("/") ? authority.dropLast() : authority
            guard !trimmed.isEmpty, !trimmed.contains("/"), !trimmed.contains("@") else { return nil }
            var host = trimmed
            var port = 4222
            if let colon = trimmed.lastIndex(of: ":"), !trimmed.hasSuffix("]") {
                let digits = trimmed[trimmed.index(after: colon)...]
                guard (1...5).contains(digits.count), digits.allSatisfy(\.isASCII), let number = Int(digits),
                    (1...65535).contains(number)
                else { return nil }
                port = number
                host = trimmed[..<colon]
            }
            if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
            guard !host.isEmpty, !host.contains("[") , !host.contains("]") else { return nil }
            self.url = url
            self.host = String(host)
            self.port = port
            self.secure = secure
        }
    }

    /// PROXY protocol v2 from load balancers (`proxy_protocol`); nil when no balancer is in front.
    public var proxyProtocol: ProxyProtocol?

    /// Who sits in front of the gateway: connections from `trusted` addresses must begin with a PROXY
    /// protocol v2 header carrying the client's address; from anyone else such a header is refused.
    public struct ProxyProtocol: Sendable, Equatable {
        public var trusted: [AddressRange]

        public init(trusted: [AddressRange]) {
            self.trusted = trusted
        }

        /// Whether a connection from `address` comes from a trusted load balancer.
        public func trusts(_ address: String) -> Bool {
            trusted.contains { $0.contains(address) }
        }
    }

    public var admin: Admin? = Admin()

    /// Where the admin listener listens and who may talk to it.
    public struct Admin: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 9443
        /// PEM bundle of the CAs whose client certificates may use the admin listener. When set, the listener
        /// speaks TLS with the gateway's server certificate and requires such a certificate; nil for plain HTTP
        /// (so keep it on loopback).
        public var clientCA: String?

        public init(host: String = "127.0.0.1", port: Int = 9443, clientCA: String? = nil) {
            self.host = host
            self.port = port
            self.clientCA = clientCA
        }
    }

    public init(
        listenHost: String = "0.0.0.0",
        listenPort: Int = 443,
        tls: TLS,
        allowedOrigins: [String] = [],
        routes: [Route] = [],
        policiesDirectory: String = "policies",
        auditDirectory: String = "audit",
        handshakeTimeout: Double = 10,
        maxHeaderBytes: Int = 8192,
        maxMessageBytes: Int = 1 << 20
    ) {
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.tls = tls
        self.allowedOrigins = allowedOrigins
        self.routes = routes
        self.policiesDirectory = policiesDirectory
        self.auditDirectory = auditDirectory
        self.handshakeTimeout = handshakeTimeout
        self.maxHeaderBytes = maxHeaderBytes
        self.maxMessageBytes = maxMessageBytes
    }

    /// The TLS files of a `pki/` directory laid out by `portcullis pki` (and `serve --dev`): the server's
    /// chain, the root as client CA, the issuing CA when there is one, and the CRL once one exists.
    public static func tls(fromPKI directory: String, minimumVersion: TLSVersion = .v1_2) -> TLS {
        func existing(_ path: String) -> String? { FileManager.default.fileExists(atPath: path) ? path : nil }
        var tls = TLS(
            certificateChain: existing("\(directory)/issued/server.chain.pem") ?? "\(directory)/issued/server.crt",
            privateKey: "\(directory)/private/server.key",
            clientCA: "\(directory)/ca.crt",
            clientIntermediates: existing("\(directory)/issuing-ca.crt"),
            crl: "\(directory)/crl.pem",
            minimumVersion: minimumVersion)
        tls.crlMayBeAbsent = true
        return tls
    }

    /// The embedded development default of `serve --dev`.
    public static func development(pki: String = "pki", policies: String = "policies", audit: String = "audit")
        -> GatewayConfiguration
    {
        var configuration = GatewayConfiguration(
            listenHost: "127.0.0.1",
            listenPort: 8443,
            tls: tls(fromPKI: pki),
            allowedOrigins: ["https://localhost:8443", "https://127.0.0.1:8443"],
            routes: [Route(path: "/v1/echo", kind: .echo), Route(path: "/v1/messages", kind: .broker)],
            policiesDirectory: policies,
            auditDirectory: audit)
        // It listens on loopback only, where every client shares one address (and `portcullis bench` opens
        // hundreds of connections a second): per-address limits would only get in the way.
        configuration.limits.perAddressConnections = nil
        configuration.limits.perAddressNewPerSecond = nil
        return configuration
    }

    /// What the gateway does while the audit log is failing (queue full or the disk refusing writes).
    public enum AuditFailurePolicy: String, Sendable, CaseIterable {
        /// Refuse new sessions (HTTP 503 `audit_unavailable`) until records can be written again; open ones go on.
        case refuseNewSessions = "refuse_new_sessions"
        /// Keep admitting: sessions go unaudited until the log recovers (the loss itself is audited then).
        case `continue`
    }

    public func route(for path: String) -> Route? {
        routes.first { $0.path == path }
    }
}
