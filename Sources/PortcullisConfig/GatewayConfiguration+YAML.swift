import Foundation
import PortcullisAudit
import PortcullisNATS
import PortcullisPolicy
import PortcullisYAML

extension GatewayConfiguration {
    /// Reads a configuration file. Relative paths in it are resolved against the file's directory.
    ///
    /// - Throws: ``DiagnosticsError`` with every problem found (file:line and what is wrong).
    public static func load(path: String) throws -> GatewayConfiguration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw DiagnosticsError([Diagnostic(file: path, line: nil, message: "cannot read the configuration file")])
        }
        let base = (path as NSString).deletingLastPathComponent
        return try parse(text, file: path, baseDirectory: base.isEmpty ? "." : base)
    }

    public static func parse(_ text: String, file: String, baseDirectory: String) throws -> GatewayConfiguration {
        let reader = YAMLReader(file: file)
        func resolve(_ path: String) -> String {
            path.hasPrefix("/") ? path : (baseDirectory == "." ? path : "\(baseDirectory)/\(path)")
        }
        var config = GatewayConfiguration(tls: TLS(certificateChain: "", privateKey: "", clientCA: ""))
        let keys: Set<String> = [
            "listen", "tls", "allowed_origins", "routes", "policies", "audit_dir", "handshake_timeout",
            "max_header_bytes", "max_message_bytes", "event_loops", "ping_interval", "ping_timeout", "max_outbound_bytes", "limits",
            "audit", "on_audit_failure", "drain_timeout", "close_timeout", "compression", "compression_context_takeover", "certificate_expiry_warning", "reload", "admin",
            "proxy_protocol", "nats",
        ]
        func compression(_ value: YAMLValue, what: String) -> Compression? {
            guard let text = reader.string(value, what: what) else { return nil }
            guard let compression = Compression(rawValue: text) else {
                let known = Compression.allCases.map(\.rawValue).joined(separator: " or ")
                reader.report(line: value.line, "\(what) must be \(known), not '\(text)'")
                return nil
            }
            return compression
        }
        guard let root = reader.parse(text), let top = reader.mapping(root, what: "the configuration", allowed: keys)
        else { throw DiagnosticsError(reader.diagnostics) }

        if let listen = top["listen"], let text = reader.string(listen.value, what: "listen") {
            if let (host, port) = parseListenAddress(text) {
                (config.listenHost, config.listenPort) = (host, port)
            } else {
                reader.report(line: listen.value.line, "listen must be HOST:PORT (e.g. 0.0.0.0:443 or [::1]:8443)")
            }
        }
        if let tls = top["tls"] {
            let tlsKeys: Set<String> = ["certificate", "key", "client_ca", "client_intermediates", "crl", "crl_expired", "min_version", "key_exchange"]
            if let fields = reader.mapping(tls.value, what: "tls", allowed: tlsKeys) {
                for required in ["certificate", "key", "client_ca"] where fields[required] == nil {
                    reader.report(line: tls.line, "tls needs '\(required)'")
                }
                if let value = fields["certificate"], let text = reader.string(value.value, what: "tls.certificate") {
                    config.tls.certificateChain = resolve(text)
                }
                if let value = fields["key"], let text = reader.string(value.value, what: "tls.key") {
                    config.tls.privateKey = resolve(text)
                }
                if let value = fields["client_ca"], let text = reader.string(value.value, what: "tls.client_ca") {
                    config.tls.clientCA = resolve(text)
                }
                if let value = fields["client_intermediates"],
                    let text = reader.string(value.value, what: "tls.client_intermediates")
                {
                    config.tls.clientIntermediates = resolve(text)
                }
                if let value = fields["crl"], let text = reader.string(value.value, what: "tls.crl") {
                    config.tls.crl = resolve(text)
                }
                if let value = fields["crl_expired"], let text = reader.string(value.value, what: "tls.crl_expired") {
                    if let policy = CRLExpiredPolicy(rawValue: text) {
                        config.tls.crlExpired = policy
                    } else {
                        reader.report(line: value.value.line, "tls.crl_expired must be refuse or warn, not '\(text)'")
                    }
                }
                if let value = fields["min_version"], let text = reader.string(value.value, what: "tls.min_version") {
                    if let version = TLSVersion(rawValue: text) {
                        config.tls.minimumVersion = version
                    } else {
                        reader.report(line: value.value.line, "tls.min_version must be \"1.2\" or \"1.3\", not '\(text)'")
                    }
                }
                if let value = fields["key_exchange"], let names = reader.strings(value.value, what: "tls.key_exchange") {
                    let groups = names.compactMap(KeyExchangeGroup.init(rawValue:))
                    if groups.count != names.count || groups.isEmpty {
                        let known = KeyExchangeGroup.allCases.map(\.rawValue).joined(separator: ", ")
                        reader.report(line: value.value.line, "tls.key_exchange must list groups among \(known), not \(names)")
                    } else {
                        config.tls.keyExchange = groups
                    }
                }
            }
        } else {
            reader.report(line: nil, "missing 'tls' (certificate, key, client_ca)")
        }
        if let origins = top["allowed_origins"],
            let list = reader.strings(origins.value, what: "allowed_origins")
        {
            for entry in list {
                if let problem = OriginMatcher.problem(with: entry) { reader.report(line: origins.value.line, problem) }
            }
            config.allowedOrigins = list
        }
        if let routes = top["routes"], let list = reader.sequence(routes.value, what: "routes") {
            for item in list {
                let routeKeys: Set<String> = [
                    "path", "kind", "upstream", "upstream_certificate", "upstream_key", "upstream_ca", "compression",
                    "subprotocols", "subprotocol_required",
                ]
                guard let fields = reader.mapping(item, what: "a route", allowed: routeKeys) else { continue }
                guard let pathField = fields["path"], let path = reader.string(pathField.value, what: "route path"),
                    let kindField = fields["kind"], let kindText = reader.string(kindField.value, what: "route kind")
                else {
                    reader.report(line: item.line, "a route needs 'path' and 'kind'")
                    continue
                }
                guard path.hasPrefix("/") else {
                    reader.report(line: pathField.value.line, "route path '\(path)' must start with '/'")
                    continue
                }
                guard let kind = RouteKind(rawValue: kindText) else {
                    let known = RouteKind.allCases.map(\.rawValue).joined(separator: ", ")
                    reader.report(line: kindField.value.line, "unknown route kind '\(kindText)' (one of: \(known))")
                    continue
                }
                if config.route(for: path) != nil {
                    reader.report(line: pathField.value.line, "route path '\(path)' is defined twice")
                    continue
                }
                var route = Route(path: path, kind: kind)
                if let field = fields["compression"] { route.compression = compression(field.value, what: "compression") }
                if let field = fields["subprotocols"], let names = reader.strings(field.value, what: "subprotocols") {
                    for name in names where !GatewayConfiguration.isSubprotocolToken(name) {
                        reader.report(line: field.value.line, "subprotocol '\(name)' is not a token (RFC 6455 §4.1)")
                    }
                    route.subprotocols = names
                }
                if let field = fields["subprotocol_required"],
                    let required = reader.bool(field.value, what: "subprotocol_required")
                {
                    route.subprotocolRequired = required
                    if required, route.subprotocols.isEmpty, kind != .upstream {
                        reader.report(line: field.value.line, "subprotocol_required needs the route's 'subprotocols'")
                    }
                }
                if kind == .upstream {
                    guard let field = fields["upstream"], let text = reader.string(field.value, what: "upstream") else {
                        reader.report(line: item.line, "an upstream route needs 'upstream: ws://HOST:PORT/PATH' (or wss://)")
                        continue
                    }
                    guard var upstream = Upstream(url: text) else {
                        reader.report(line: field.value.line, "upstream '\(text)' is not a ws:// or wss:// URL")
                        continue
                    }
                    upstream.certificate = fields["upstream_certificate"].flatMap { reader.string($0.value, what: "upstream_certificate") }.map(resolve)
                    upstream.key = fields["upstream_key"].flatMap { reader.string($0.value, what: "upstream_key") }.map(resolve)
                    upstream.trustRoots = fields["upstream_ca"].flatMap { reader.string($0.value, what: "upstream_ca") }.map(resolve)
                    route.upstream = upstream
                } else if let field = fields["upstream"] {
                    reader.report(line: field.line, "'upstream' is only for routes of kind upstream")
                }
                config.routes.append(route)
            }
        }
        if config.routes.isEmpty { reader.report(line: nil, "no routes: define at least one under 'routes'") }
        if let value = top["policies"], let text = reader.string(value.value, what: "policies") {
            config.policiesDirectory = resolve(text)
        } else {
            config.policiesDirectory = resolve(config.policiesDirectory)
        }
        if let value = top["audit_dir"], let text = reader.string(value.value, what: "audit_dir") {
            config.auditDirectory = resolve(text)
        } else {
            config.auditDirectory = resolve(config.auditDirectory)
        }
        if let value = top["handshake_timeout"], let seconds = reader.duration(value.value, what: "handshake_timeout", range: Bounds.handshakeTimeout) {
            config.handshakeTimeout = seconds
        }
        if let value = top["max_header_bytes"],
            let number = reader.integer(value.value, what: "max_header_bytes", range: 1024...1_048_576)
        {
            config.maxHeaderBytes = number
        }
        if let value = top["max_message_bytes"],
            let number = reader.integer(value.value, what: "max_message_bytes", range: 125...(64 << 20))
        {
            config.maxMessageBytes = number
        }
        if let value = top["event_loops"], let number = reader.integer(value.value, what: "event_loops", range: 1...256) {
            config.eventLoops = number
        }
        if let value = top["ping_interval"], let seconds = reader.duration(value.value, what: "ping_interval", range: Bounds.pingInterval) {
            config.pingInterval = seconds
        }
        if let value = top["ping_timeout"], let seconds = reader.duration(value.value, what: "ping_timeout", range: Bounds.pingTimeout) {
            config.pingTimeout = seconds
        }
        if let value = top["max_outbound_bytes"],
            let number = reader.integer(value.value, what: "max_outbound_bytes", range: 1024...(1 << 30))
        {
            config.maxOutboundBytes = number
        }
        if let value = top["drain_timeout"], let seconds = reader.duration(value.value, what: "drain_timeout", range: Bounds.drainTimeout) {
            config.drainTimeout = seconds
        }
        if let value = top["compression"], let mode = compression(value.value, what: "compression") {
            config.compression = mode
        }
        if let value = top["compression_context_takeover"],
            let enabled = reader.bool(value.value, what: "compression_context_takeover")
        {
            config.compressionContextTakeover = enabled
        }
        if let value = top["close_timeout"], let seconds = reader.duration(value.value, what: "close_timeout", range: Bounds.closeTimeout) {
            config.closeTimeout = seconds
        }
        // A message the gateway admits must fit in what it may queue towards a receiver, or it could never be
        // delivered: every echo or delivery of it would close the receiver as a slow consumer.
        let largestFrame = config.maxMessageBytes + GatewayConfiguration.largestDeliveryOverhead
        if config.maxOutboundBytes < largestFrame {
            let line = (top["max_outbound_bytes"] ?? top["max_message_bytes"])?.value.line
            reader.report(
                line: line,
                "max_outbound_bytes (\(config.maxOutboundBytes)) must hold one largest message: at least "
                    + "max_message_bytes (\(config.maxMessageBytes)) + \(GatewayConfiguration.largestDeliveryOverhead) bytes of "
                    + "framing and delivery envelope = \(largestFrame)")
        }
        /// A positive duration, or `off` for 0.
        func durationOrOff(_ value: YAMLValue, what: String, range: ClosedRange<Double>) -> Double? {
            if value.isWord("off") { return 0 }
            return reader.duration(value, what: what, range: range)
        }
        if let value = top["certificate_expiry_warning"],
            let seconds = durationOrOff(value.value, what: "certificate_expiry_warning", range: Bounds.certificateExpiryWarning)
        {
            config.certificateExpiryWarning = seconds
        }
        if let value = top["reload"],
            let fields = reader.mapping(value.value, what: "reload", allowed: ["watch_interval", "debounce"])
        {
            if let field = fields["watch_interval"], let seconds = durationOrOff(field.value, what: "reload.watch_interval", range: Bounds.reloadWatchInterval) {
                config.reloadWatchInterval = seconds
            }
            if let field = fields["debounce"], let seconds = reader.duration(field.value, what: "reload.debounce", range: Bounds.reloadDebounce) {
                config.reloadDebounce = seconds
            }
        }
        if let value = top["limits"] { config.limits = parseLimits(value.value, reader: reader) }
        if let value = top["nats"] { config.nats = parseNATS(value.value, reader: reader, resolve: resolve) }
        if let value = top["proxy_protocol"] { config.proxyProtocol = parseProxyProtocol(value.value, reader: reader) }
        if let value = top["admin"] { config.admin = parseAdmin(value.value, reader: reader, resolve: resolve) }
        if let value = top["audit"] { config.audit = parseAudit(value.value, reader: reader) }
        if let value = top["on_audit_failure"], let text = reader.string(value.value, what: "on_audit_failure") {
            if let policy = AuditFailurePolicy(rawValue: text) {
                config.onAuditFailure = policy
            } else {
                let known = AuditFailurePolicy.allCases.map(\.rawValue).joined(separator: " or ")
                reader.report(line: value.value.line, "on_audit_failure must be \(known), not '\(text)'")
            }
        }
        guard reader.diagnostics.isEmpty else { throw DiagnosticsError(reader.diagnostics) }
        return config
    }

    private static func parseAdmin(
        _ value: YAMLValue, reader: YAMLReader, resolve: (String) -> String
    ) -> Admin? {
        var admin = Admin()
        guard let fields = reader.mapping(value, what: "admin", allowed: ["listen", "client_ca"]) else { return admin }
        if let field = fields["listen"], let text = reader.string(field.value, what: "admin.listen") {
            if text == "off" { return nil }
            if let (host, port) = parseListenAddress(text) {
                (admin.host, admin.port) = (host, port)
            } else {
                reader.report(line: field.value.line, "admin.listen must be HOST:PORT (e.g. 127.0.0.1:9443) or off")
            }
        }
        if let field = fields["client_ca"], let text = reader.string(field.value, what: "admin.client_ca") {
            admin.clientCA = resolve(text)
        }
        return admin
    }

    private static func parseNATS(_ value: YAMLValue, reader: YAMLReader, resolve: (String) -> String) -> NATS? {
        guard
            let fields = reader.mapping(
                value, what: "nats",
                allowed: ["url", "tls", "user", "password_file", "credentials", "nkey_seed_file", "subject_prefix", "name"])
        else { return nil }
        guard let urlField = fields["url"], let text = reader.string(urlField.value, what: "nats.url") else {
            reader.report(line: value.line, "nats needs url: nats://HOST:PORT (or tls://HOST:PORT)")
            return nil
        }
        guard var nats = NATS(url: text) else {
            reader.report(line: urlField.value.line, "nats.url '\(text)' is not nats://HOST[:PORT] or tls://HOST[:PORT]")
            return nil
        }
        if let field = fields["tls"],
            let tls = reader.mapping(field.value, what: "nats.tls", allowed: ["certificate", "key", "ca"])
        {
            func path(_ key: String) -> String? {
                tls[key].flatMap { reader.string($0.value, what: "nats.tls.\(key)") }.map(resolve)
            }
            (nats.certificate, nats.key, nats.ca) = (path("certificate"), path("key"), path("ca"))
            if (nats.certificate == nil) != (nats.key == nil) {
                reader.report(line: field.line, "nats.tls needs both certificate and key (or neither)")
            }
            if !nats.secure {
                reader.report(line: field.line, "nats.tls is for a tls:// url; \(text) is plain")
            }
        }
        nats.user = fields["user"].flatMap { reader.string($0.value, what: "nats.user") }
        nats.passwordFile = fields["password_file"].flatMap { reader.string($0.value, what: "nats.password_file") }.map(resolve)
        if (nats.user == nil) != (nats.passwordFile == nil) {
            reader.report(line: value.line, "nats needs both user and password_file (or neither)")
        }
        nats.credentialsFile = fields["credentials"].flatMap { reader.string($0.value, what: "nats.credentials") }.map(resolve)
        nats.nkeySeedFile = fields["nkey_seed_file"].flatMap { reader.string($0.value, what: "nats.nkey_seed_file") }.map(resolve)
        // One way to sign in: NATS takes one user per connection. Reported at the line of each key past the first.
        let ways = [("user", "user/password_file"), ("password_file", "user/password_file"),
                    ("credentials", "credentials"), ("nkey_seed_file", "nkey_seed_file")]
            .compactMap { key, way in fields[key].map { (way, key, $0.line) } }
            .sorted { $0.2 < $1.2 }
        if let first = ways.first {
            for (way, key, line) in ways.dropFirst() where way != first.0 {
                reader.report(
                    line: line,
                    "nats.\(key): give one way to sign in to NATS: user and password_file, credentials, or nkey_seed_file "
                        + "(\(first.0) is given already)")
            }
        }
        if let field = fields["subject_prefix"], let prefix = reader.string(field.value, what: "nats.subject_prefix") {
            if let problem = SubjectMapping.problem(withPrefix: prefix) {
                reader.report(line: field.value.line, "nats.subject_prefix: \(problem)")
            } else {
                nats.subjectPrefix = prefix
            }
        }
        nats.name = fields["name"].flatMap { reader.string($0.value, what: "nats.name") }
        return nats
    }

    private static func parseProxyProtocol(_ value: YAMLValue, reader: YAMLReader) -> ProxyProtocol? {
        guard let fields = reader.mapping(value, what: "proxy_protocol", allowed: ["trusted"]) else { return nil }
        guard let field = fields["trusted"] else {
            reader.report(line: value.line, "proxy_protocol needs trusted: the load balancers' addresses or CIDR blocks")
            return nil
        }
        guard let items = reader.sequence(field.value, what: "proxy_protocol.trusted") else { return nil }
        var trusted: [AddressRange] = []
        for item in items {
            guard let text = reader.string(item, what: "each entry of proxy_protocol.trusted") else { continue }
            switch AddressRange.parse(text) {
            case .success(let range): trusted.append(range)
            case .failure(let problem): reader.report(line: item.line, "proxy_protocol.trusted: \(problem)")
            }
        }
        if items.isEmpty {
            reader.report(line: field.value.line, "proxy_protocol.trusted must list at least one address or CIDR block")
        }
        return ProxyProtocol(trusted: trusted)
    }

    private static func parseLimits(_ value: YAMLValue, reader: YAMLReader) -> ConnectionLimits {
        var limits = ConnectionLimits()
        guard
            let fields = reader.mapping(
                value, what: "limits", allowed: ["max_connections", "per_address", "refusal_audit_interval"])
        else { return limits }
        /// A whole number in `range`, or `off` (nil); `fallback` when the key is absent or wrong.
        func numberOrOff(_ field: YAMLValue?, what: String, range: ClosedRange<Int>, fallback: Int?) -> Int? {
            guard let field else { return fallback }
            if field.isWord("off") { return nil }
            return reader.integer(field, what: what, range: range) ?? fallback
        }
        limits.maxConnections = numberOrOff(
            fields["max_connections"]?.value, what: "limits.max_connections", range: 1...1_000_000,
            fallback: limits.maxConnections)
        if let field = fields["per_address"],
            let perAddress = reader.mapping(field.value, what: "limits.per_address", allowed: ["connections", "new_per_second"])
        {
            limits.perAddressConnections = numberOrOff(
                perAddress["connections"]?.value, what: "limits.per_address.connections", range: 1...1_000_000,
                fallback: limits.perAddressConnections)
            limits.perAddressNewPerSecond = numberOrOff(
                perAddress["new_per_second"]?.value, what: "limits.per_address.new_per_second", range: 1...1_000_000,
                fallback: limits.perAddressNewPerSecond)
        }
        if let field = fields["refusal_audit_interval"] {
            if field.value.isWord("off") {
                limits.refusalAuditInterval = 0
            } else if let seconds = reader.duration(
                field.value, what: "limits.refusal_audit_interval", range: Bounds.refusalAuditInterval)
            {
                limits.refusalAuditInterval = seconds
            }
        }
        return limits
    }

    private static func parseAudit(_ value: YAMLValue, reader: YAMLReader) -> AuditSettings {
        var settings = AuditSettings()
        let keys: Set<String> = [
            "fsync", "fsync_interval", "fsync_records", "queue_capacity", "segment_max_bytes", "segment_max_age",
            "checkpoint_interval", "checkpoint_records",
        ]
        guard let fields = reader.mapping(value, what: "audit", allowed: keys) else { return settings }
        func duration(_ key: String, _ range: ClosedRange<Double>) -> Duration? {
            guard let field = fields[key], let seconds = reader.duration(field.value, what: "audit.\(key)", range: range)
            else { return nil }
            return .microseconds(Int64(seconds * 1e6))
        }
        func integer(_ key: String, _ range: ClosedRange<Int>) -> Int? {
            fields[key].flatMap { reader.integer($0.value, what: "audit.\(key)", range: range) }
        }
        if let field = fields["fsync"], let text = reader.string(field.value, what: "audit.fsync") {
            if let policy = AuditFsyncPolicy(rawValue: text) {
                settings.fsync = policy
            } else {
                reader.report(line: field.value.line, "audit.fsync must be always, batch or never, not '\(text)'")
            }
        }
        if let interval = duration("fsync_interval", Bounds.auditFsyncInterval) { settings.fsyncInterval = interval }
        if let records = integer("fsync_records", 1...1_000_000) { settings.fsyncRecords = records }
        if let capacity = integer("queue_capacity", 16...10_000_000) { settings.queueCapacity = capacity }
        if let bytes = integer("segment_max_bytes", 4096...(1 << 40)) { settings.segmentMaxBytes = bytes }
        if let age = duration("segment_max_age", Bounds.auditSegmentMaxAge) { settings.segmentMaxAge = age }
        if let interval = duration("checkpoint_interval", Bounds.auditCheckpointInterval) { settings.checkpointInterval = interval }
        if let records = integer("checkpoint_records", 1...100_000_000) { settings.checkpointRecords = records }
        return settings
    }
}

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6); the port may be 0 for an ephemeral one.
public func parseListenAddress(_ text: String) -> (host: String, port: Int)? {
    guard let colon = text.lastIndex(of: ":") else { return nil }
    var host = String(text[..<colon])
    guard let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    guard !host.isEmpty, !host.contains(" ") else { return nil }
    return (host, port)
}
