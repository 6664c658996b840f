import Foundation
import PortcullisAudit
import PortcullisConfig
import PortcullisYAML
import Testing

@Suite("Gateway configuration")
struct ConfigurationTests {
    @Test("A complete file decodes, with relative paths resolved against its directory")
    func completeFile() throws {
        let config = try GatewayConfiguration.parse(
            """
            listen: "[::1]:9443"
            tls:
              certificate: pki/issued/server.crt
              key: pki/private/server.key
              client_ca: /etc/portcullis/clients.pem
              crl: pki/crl.pem
              min_version: "1.3"
              key_exchange: [x25519, p256]
            allowed_origins: ["https://console.example.test"]
            routes:
              - path: /v1/echo
                kind: echo
            policies: policies
            audit_dir: /var/log/portcullis
            handshake_timeout: 5s
            max_header_bytes: 4096
            max_message_bytes: 65536
            event_loops: 1
            """, file: "/etc/portcullis/gateway.yaml", baseDirectory: "/etc/portcullis")
        #expect(config.listenHost == "::1" && config.listenPort == 9443)
        #expect(config.tls.certificateChain == "/etc/portcullis/pki/issued/server.crt")
        #expect(config.tls.clientCA == "/etc/portcullis/clients.pem")
        #expect(config.tls.crl == "/etc/portcullis/pki/crl.pem")
        #expect(config.tls.minimumVersion == .v1_3)
        #expect(config.tls.keyExchange == [.x25519, .p256])
        #expect(config.routes == [.init(path: "/v1/echo", kind: .echo)])
        #expect(config.policiesDirectory == "/etc/portcullis/policies")
        #expect(config.auditDirectory == "/var/log/portcullis")
        #expect(config.handshakeTimeout == 5)
        #expect(config.maxHeaderBytes == 4096 && config.maxMessageBytes == 65536)
        #expect(config.eventLoops == 1)
        #expect(throws: (any Error).self) {
            try GatewayConfiguration.parse(
                "tls: {certificate: a, key: b, client_ca: c}\nroutes: [{path: /e, kind: echo}]\nevent_loops: 0\n", file: "g.yaml",
                baseDirectory: ".")
        }
    }

    @Test("Defaults: port 443 on all interfaces, TLS 1.2 minimum, a 10 s handshake deadline, 1 MiB messages")
    func defaults() throws {
        let config = try GatewayConfiguration.parse(
            "tls: {certificate: a, key: b, client_ca: c}\nroutes: [{path: /e, kind: echo}]\n", file: "g.yaml",
            baseDirectory: ".")
        #expect(config.listenPort == 443 && config.listenHost == "0.0.0.0")
        #expect(config.tls.minimumVersion == .v1_2)
        #expect(config.tls.crl == nil)
        #expect(config.tls.keyExchange == nil)
        #expect(config.handshakeTimeout == 10)
        #expect(config.maxMessageBytes == 1 << 20)
        #expect(config.eventLoops == nil, "one per core")
    }

    @Test("The audit section and on_audit_failure decode; defaults are batch fsync and refusing new sessions")
    func auditSettings() throws {
        let base = "tls: {certificate: a, key: b, client_ca: c}\nroutes: [{path: /e, kind: echo}]\n"
        let defaults = try GatewayConfiguration.parse(base, file: "g.yaml", baseDirectory: ".")
        #expect(defaults.audit == AuditSettings())
        #expect(defaults.audit.fsync == .batch && defaults.audit.fsyncInterval == .milliseconds(10))
        #expect(defaults.onAuditFailure == .refuseNewSessions)
        let config = try GatewayConfiguration.parse(
            base + """
                audit:
                  fsync: always
                  fsync_interval: 5ms
                  fsync_records: 50
                  queue_capacity: 1000
                  segment_max_bytes: 1048576
                  segment_max_age: 1h
                  checkpoint_interval: 30s
                  checkpoint_records: 500
                on_audit_failure: continue
                drain_timeout: 3s
                """, file: "g.yaml", baseDirectory: ".")
        #expect(config.drainTimeout == 3 && defaults.drainTimeout == 10)
        #expect(config.audit.fsync == .always && config.audit.fsyncInterval == .milliseconds(5))
        #expect(config.audit.fsyncRecords == 50 && config.audit.queueCapacity == 1000)
        #expect(config.audit.segmentMaxBytes == 1 << 20 && config.audit.segmentMaxAge == .seconds(3600))
        #expect(config.audit.checkpointInterval == .seconds(30) && config.audit.checkpointRecords == 500)
        #expect(config.onAuditFailure == .continue)

        do {
            _ = try GatewayConfiguration.parse(
                base + "audit:\n  fsync: sometimes\n  segment_max_bytes: 10\n  rotate: daily\non_audit_failure: panic\n",
                file: "g.yaml", baseDirectory: ".")
            Issue.record("expected diagnostics")
        } catch let error as DiagnosticsError {
            let text = error.diagnostics.map(\.description)
            #expect(text.contains("g.yaml:4: audit.fsync must be always, batch or never, not 'sometimes'"), "\(text)")
            #expect(text.contains { $0.hasPrefix("g.yaml:5: audit.segment_max_bytes") }, "\(text)")
            #expect(text.contains { $0.hasPrefix("g.yaml:6: unknown key 'rotate'") }, "\(text)")
            #expect(text.contains("g.yaml:7: on_audit_failure must be refuse_new_sessions or continue, not 'panic'"), "\(text)")
        }
    }

    @Test("Live-operation settings decode: expiry warning, reload watching, the admin listener; off turns each off")
    func liveOperationSettings() throws {
        let base = "tls: {certificate: a, key: b, client_ca: c}\nroutes: [{path: /e, kind: echo}]\n"
        let defaults = try GatewayConfiguration.parse(base, file: "dir/g.yaml", baseDirectory: "dir")
        #expect(defaults.certificateExpiryWarning == 300)
        #expect(defaults.reloadWatchInterval == 1 && defaults.reloadDebounce == 0.5)
        #expect(defaults.admin == GatewayConfiguration.Admin(host: "127.0.0.1", port: 9443))
        let config = try GatewayConfiguration.parse(
            base + """
                certificate_expiry_warning: 1h
                reload: {watch_interval: 250ms, debounce: 2s}
                admin: {listen: "[::1]:9100", client_ca: admin-ca.pem}
                """, file: "dir/g.yaml", baseDirectory: "dir")
        #expect(config.certificateExpiryWarning == 3600)
        #expect(config.reloadWatchInterval == 0.25 && config.reloadDebounce == 2)
        #expect(config.admin == GatewayConfiguration.Admin(host: "::1", port: 9100, clientCA: "dir/admin-ca.pem"))
        let off = try GatewayConfiguration.parse(
            base + "certificate_expiry_warning: off\nreload: {watch_interval: off}\nadmin: {listen: off}\n",
            file: "g.yaml", baseDirectory: ".")
        #expect(off.certificateExpiryWarning == 0 && off.reloadWatchInterval == 0 && off.admin == nil)
        do {
            _ = try GatewayConfiguration.parse(
                base + "reload: {watch_interval: often}\nadmin: {listen: nowhere, port: 1}\n", file: "g.yaml", baseDirectory: ".")
            Issue.record("expected diagnostics")
        } catch let error as DiagnosticsError {
            let text = error.diagnostics.map(\.description)
            #expect(text.contains { $0.hasPrefix("g.yaml:3: reload.watch_interval must be a duration from 10ms to 1h") }, "\(text)")
            #expect(text.contains("g.yaml:4: admin.listen must be HOST:PORT (e.g. 127.0.0.1:9443) or off"), "\(text)")
            #expect(text.contains { $0.hasPrefix("g.yaml:4: unknown key 'port'") }, "\(text)")
        }
    }

    @Test("Every problem is reported with file and line")
    func everyProblemListed() {
        do {
            _ = try GatewayConfiguration.parse(
                """
                listen: nowhere
                tls:
                  certificate: a
                  min_version: "1.1"
                  key_exchange: [x25519, ffdhe2048]
                allowed_origins: ["https://ok.example", "https://bad.example/path"]
                routes:
                  - path: /v1/echo
                    kind: broker-ish
                handshake_timeout: soon
                colour: blue
                """, file: "g.yaml", baseDirectory: ".")
            Issue.record("expected the configuration to be refused")
        } catch let error as DiagnosticsError {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.hasPrefix("g.yaml:1: listen must be HOST:PORT") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:2: tls needs 'key'") })
            #expect(lines.contains { $0.hasPrefix("g.yaml:2: tls needs 'client_ca'") })
            #expect(lines.contains { $0.hasPrefix("g.yaml:4: tls.min_version") })
            #expect(lines.contains { $0.hasPrefix("g.yaml:5: tls.key_exchange must list groups among") })
            #expect(lines.contains { $0.hasPrefix("g.yaml:6: 'https://bad.example/path' is not an origin") })
            #expect(lines.contains { $0.hasPrefix("g.yaml:9: unknown route kind 'broker-ish'") })
            #expect(lines.contains { $0.hasPrefix("g.yaml:10: handshake_timeout must be a duration from 100ms to 10m") })
            #expect(lines.contains { $0.hasPrefix("g.yaml:11: unknown key 'colour'") })
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }

    @Test("close_timeout decodes (5 s by default); max_outbound_bytes that cannot hold one largest message is refused at its line")
    func sessionLimits() throws {
        let base = "tls: {certificate: a, key: b, client_ca: c}\nroutes: [{path: /e, kind: echo}]\n"
        #expect(try GatewayConfiguration.parse(base, file: "g.yaml", baseDirectory: ".").closeTimeout == 5)
        let configured = try GatewayConfiguration.parse(
            base + "close_timeout: 2s\nmax_message_bytes: 16777216\nmax_outbound_bytes: 67108864\n", file: "g.yaml",
            baseDirectory: ".")
        #expect(configured.closeTimeout == 2 && configured.maxOutboundBytes == 64 << 20)
        // 16 MiB messages cannot be delivered through the default 4 MiB outbound bound.
        for (extra, line) in [
            ("max_message_bytes: 16777216\n", 3),
            ("max_message_bytes: 1048576\nmax_outbound_bytes: 1048576\n", 4),
        ] {
            do {
                _ = try GatewayConfiguration.parse(base + extra, file: "g.yaml", baseDirectory: ".")
                Issue.record("expected \(extra) to be refused")
            } catch let error as DiagnosticsError {
                let lines = error.diagnostics.map(\.description)
                #expect(lines.contains { $0.hasPrefix("g.yaml:\(line): max_outbound_bytes (") && $0.contains("must hold one largest message") }, "\(lines)")
            }
        }
    }

    @Test(
        "Every duration has bounds: a value past them (1e17s would overflow a timer) is refused at its line, the bounds themselves are accepted",
        arguments: [
            ("handshake_timeout", GatewayConfiguration.Bounds.handshakeTimeout, "handshake_timeout: %@"),
            ("ping_interval", GatewayConfiguration.Bounds.pingInterval, "ping_interval: %@"),
            ("ping_timeout", GatewayConfiguration.Bounds.pingTimeout, "ping_timeout: %@"),
            ("drain_timeout", GatewayConfiguration.Bounds.drainTimeout, "drain_timeout: %@"),
            ("close_timeout", GatewayConfiguration.Bounds.closeTimeout, "close_timeout: %@"),
            ("certificate_expiry_warning", GatewayConfiguration.Bounds.certificateExpiryWarning, "certificate_expiry_warning: %@"),
            ("reload.watch_interval", GatewayConfiguration.Bounds.reloadWatchInterval, "reload: {watch_interval: %@}"),
            ("reload.debounce", GatewayConfiguration.Bounds.reloadDebounce, "reload: {debounce: %@}"),
            ("audit.fsync_interval", GatewayConfiguration.Bounds.auditFsyncInterval, "audit: {fsync_interval: %@}"),
            ("audit.segment_max_age", GatewayConfiguration.Bounds.auditSegmentMaxAge, "audit: {segment_max_age: %@}"),
            ("audit.checkpoint_interval", GatewayConfiguration.Bounds.auditCheckpointInterval, "audit: {checkpoint_interval: %@}"),
        ])
    func durationBounds(key: String, bounds: ClosedRange<Double>, line template: String) throws {
        let base = "tls: {certificate: a, key: b, client_ca: c}\nroutes: [{path: /e, kind: echo}]\n"
        func parse(_ value: String) throws -> GatewayConfiguration {
            try GatewayConfiguration.parse(
                base + template.replacingOccurrences(of: "%@", with: value) + "\n", file: "g.yaml", baseDirectory: ".")
        }
        _ = try parse("\(bounds.lowerBound)s")
        _ = try parse("\(bounds.upperBound)s")
        for value in ["1e17s", "\(bounds.upperBound * 1.001)s", "\(bounds.lowerBound / 2)s", "0", "-1s", "nan", "inf"] {
            do {
                _ = try parse(value)
                Issue.record("\(key): \(value) was accepted")
            } catch let error as DiagnosticsError {
                let lines = error.diagnostics.map(\.description)
                #expect(
                    lines == ["g.yaml:3: \(key) must be a duration from \(formatDuration(bounds.lowerBound)) to "
                        + "\(formatDuration(bounds.upperBound)), such as 10s, 500ms, 2m or 1h"], "\(value): \(lines)")
            }
        }
    }

    @Test("Connection limits: defaults, numbers, off, and bad values at their line")
    func connectionLimits() throws {
        let base = "tls: {certificate: a, key: b, client_ca: c}\nroutes: [{path: /e, kind: echo}]\n"
        let defaults = try GatewayConfiguration.parse(base, file: "g.yaml", baseDirectory: ".").limits
        #expect(defaults.maxConnections == 10_000 && defaults.perAddressConnections == 1_000)
        #expect(defaults.perAddressNewPerSecond == 100 && defaults.refusalAuditInterval == 60)
        let set = try GatewayConfiguration.parse(
            base + "limits:\n  max_connections: 500\n  per_address: {connections: off, new_per_second: 7}\n"
                + "  refusal_audit_interval: off\n",
            file: "g.yaml", baseDirectory: ".").limits
        #expect(set.maxConnections == 500 && set.perAddressConnections == nil && set.perAddressNewPerSecond == 7)
        #expect(set.refusalAuditInterval == 0)
        #expect(GatewayConfiguration.development().limits.perAddressNewPerSecond == nil)
        do {
            _ = try GatewayConfiguration.parse(
                base + "limits:\n  max_connections: 0\n  per_address: {connections: many}\n  refusal_audit_interval: 1e17s\n",
                file: "g.yaml", baseDirectory: ".")
            Issue.record("bad limits were accepted")
        } catch let error as DiagnosticsError {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.hasPrefix("g.yaml:4: limits.max_connections must be a whole number from 1 to 1000000") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:5: limits.per_address.connections must be") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:6: limits.refusal_audit_interval must be a duration from 1s to 1d") }, "\(lines)")
        }
    }

    @Test("proxy_protocol.trusted takes addresses and CIDR blocks; IPv4 matches its IPv4-mapped form; typos are refused at their line")
    func proxyProtocol() throws {
        let base = "tls: {certificate: a, key: b, client_ca: c}\nroutes: [{path: /e, kind: echo}]\n"
        #expect(try GatewayConfiguration.parse(base, file: "g.yaml", baseDirectory: ".").proxyProtocol == nil)
        let proxy = try #require(
            try GatewayConfiguration.parse(
                base + "proxy_protocol:\n  trusted: [10.1.0.0/16, 127.0.0.2, 'fd00::/8', '::1']\n", file: "g.yaml",
                baseDirectory: "."
            ).proxyProtocol)
        #expect(proxy.trusted.map(\.description) == ["10.1.0.0/16", "127.0.0.2", "fd00::/8", "::1"])
        #expect(proxy.trusts("10.1.255.3") && proxy.trusts("::ffff:10.1.0.9") && proxy.trusts("127.0.0.2"))
        #expect(proxy.trusts("fdab::1") && proxy.trusts("::1"))
        #expect(!proxy.trusts("10.2.0.1") && !proxy.trusts("127.0.0.1") && !proxy.trusts("fe80::1") && !proxy.trusts("unknown"))
        let everyIPv4 = try AddressRange.parse("0.0.0.0/0").get()
        #expect(everyIPv4.contains("203.0.113.1"))
        #expect(!everyIPv4.contains("2001:db8::1"), "IPv4's /0 is IPv4 only")
        do {
            _ = try GatewayConfiguration.parse(
                base + "proxy_protocol:\n  trusted:\n    - 10.1.2.3/8\n    - 10.0.0.0/33\n    - balancer.local\n"
                    + "    - 10.0.0.0/-1\n",
                file: "g.yaml", baseDirectory: ".")
            Issue.record("bad trusted addresses were accepted")
        } catch let error as DiagnosticsError {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.hasPrefix("g.yaml:5: proxy_protocol.trusted: '10.1.2.3/8' has host bits set past /8") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:6: proxy_protocol.trusted: '10.0.0.0/33': the prefix length must be 0 to 32") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:7: proxy_protocol.trusted: 'balancer.local' is not an IP address") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:8: proxy_protocol.trusted: '10.0.0.0/-1'") }, "\(lines)")
        }
        #expect(throws: DiagnosticsError.self) {
            try GatewayConfiguration.parse(base + "proxy_protocol:\n  trusted: []\n", file: "g.yaml", baseDirectory: ".")
        }
        #expect(throws: DiagnosticsError.self) {
            try GatewayConfiguration.parse(base + "proxy_protocol: {}\n", file: "g.yaml", baseDirectory: ".")
        }
    }

    @Test("nats: url, mutual TLS files, user and password file, subject prefix; bad values are refused at their line")
    func nats() throws {
        let base = "tls: {certificate: a, key: b, client_ca: c}\nroutes: [{path: /e, kind: echo}]\n"
        #expect(try GatewayConfiguration.parse(base, file: "g.yaml", baseDirectory: ".").nats == nil)
        let full = try #require(
            try GatewayConfiguration.parse(
                base + "nats:\n  url: tls://nats.internal:4443\n  tls: {certificate: n.crt, key: n.key, ca: ca.crt}\n"
                    + "  user: gateway\n  password_file: secret\n  subject_prefix: acme.portcullis\n  name: gw-1\n",
                file: "g.yaml", baseDirectory: "/etc/portcullis"
            ).nats)
        #expect(full.host == "nats.internal" && full.port == 4443 && full.secure)
        #expect(full.certificate == "/etc/portcullis/n.crt" && full.key == "/etc/portcullis/n.key" && full.ca == "/etc/portcullis/ca.crt")
        #expect(full.user == "gateway" && full.passwordFile == "/etc/portcullis/secret")
        #expect(full.subjectPrefix == "acme.portcullis" && full.name == "gw-1")
        let plain = try #require(
            try GatewayConfiguration.parse(base + "nats: {url: 'nats://[::1]'}\n", file: "g.yaml", baseDirectory: ".").nats)
        #expect(plain.host == "::1" && plain.port == 4222 && !plain.secure && plain.subjectPrefix == "portcullis")
        for url in ["http://x:4222", "nats://", "nats://host:0", "nats://host:99999", "nats://user:pw@host", "nats://host/path"] {
            #expect(GatewayConfiguration.NATS(url: url) == nil, "\(url)")
        }
        do {
            _ = try GatewayConfiguration.parse(
                base + "nats:\n  url: nats://127.0.0.1\n  tls: {certificate: n.crt}\n  user: gateway\n"
                    + "  subject_prefix: 'a.*.b'\n",
                file: "g.yaml", baseDirectory: ".")
            Issue.record("a bad nats section was accepted")
        } catch let error as DiagnosticsError {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.hasPrefix("g.yaml:5: nats.tls needs both certificate and key") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:5: nats.tls is for a tls:// url") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:4: nats needs both user and password_file") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:7: nats.subject_prefix:") }, "\(lines)")
        }
        #expect(throws: DiagnosticsError.self) {
            try GatewayConfiguration.parse(base + "nats: {user: x}\n", file: "g.yaml", baseDirectory: ".")
        }
    }

    @Test("nats: a .creds file or an NKey seed file, resolved against the configuration's directory; one way to sign in")
    func natsCredentials() throws {
        let base = "tls: {certificate: a, key: b, client_ca: c}\nroutes: [{path: /e, kind: echo}]\n"
        let creds = try #require(
            try GatewayConfiguration.parse(
                base + "nats:\n  url: tls://nats.internal\n  tls: {ca: ca.crt}\n  credentials: nats/gw.creds\n",
                file: "g.yaml", baseDirectory: "/etc/portcullis"
            ).nats)
        #expect(creds.credentialsFile == "/etc/portcullis/nats/gw.creds" && creds.nkeySeedFile == nil && creds.user == nil)
        let seed = try #require(
            try GatewayConfiguration.parse(
                base + "nats: {url: 'nats://127.0.0.1', nkey_seed_file: /secrets/gw.nk}\n", file: "g.yaml",
                baseDirectory: "/etc/portcullis"
            ).nats)
        #expect(seed.nkeySeedFile == "/secrets/gw.nk" && seed.credentialsFile == nil)
        do {
            _ = try GatewayConfiguration.parse(
                base + "nats:\n  url: nats://127.0.0.1\n  user: gateway\n  password_file: secret\n"
                    + "  credentials: gw.creds\n  nkey_seed_file: gw.nk\n",
                file: "g.yaml", baseDirectory: ".")
            Issue.record("three ways to sign in were accepted")
        } catch let error as DiagnosticsError {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.hasPrefix("g.yaml:7: nats.credentials: give one way to sign in to NATS: user and password_file, credentials, or nkey_seed_file (user/password_file is given already)") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:8: nats.nkey_seed_file: give one way to sign in to NATS") }, "\(lines)")
            #expect(lines.count == 2, "\(lines)")
        }
        do {
            _ = try GatewayConfiguration.parse(
                base + "nats:\n  url: nats://127.0.0.1\n  nkey_seed_file: gw.nk\n  credentials: [a]\n  user: gateway\n",
                file: "g.yaml", baseDirectory: ".")
            Issue.record("a bad nats section was accepted")
        } catch let error as DiagnosticsError {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains { $0.hasPrefix("g.yaml:6: nats.credentials") && $0.contains("string") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:7: nats.user: give one way to sign in to NATS") && $0.contains("(nkey_seed_file is given already)") }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("g.yaml:4: nats needs both user and password_file") }, "\(lines)")
        }
    }

    @Test("Durations and listen addresses parse as operators write them")
    func smallParsers() {
        #expect(parseDuration("500ms") == 0.5)
        #expect(parseDuration("2m") == 120)
        #expect(parseDuration("1h") == 3600)
        #expect(parseDuration("10") == 10)
        #expect(parseDuration("ten") == nil)
        // A number that is finite until multiplied by its unit is no duration.
        #expect(parseDuration("1e308d") == nil && parseDuration("1e300d") == 1e300 * 86400)
        #expect(formatDuration(0.1) == "100ms" && formatDuration(600) == "10m" && formatDuration(3650 * 86400) == "3650d")
        #expect(formatDuration(90) == "90s" && formatDuration(0.0005) == "0.0005s")
        #expect(parseListenAddress("127.0.0.1:0")! == ("127.0.0.1", 0))
        #expect(parseListenAddress("[::1]:8443")! == ("::1", 8443))
        #expect(parseListenAddress("localhost") == nil)
        #expect(parseListenAddress("host:70000") == nil)
    }

    // FuzzGatewayConfiguration checks that every upstream that loads has a host; `ws://[]:80/` had none.
    @Test("An upstream URL without a host is refused at its line")
    func upstreamWithoutHost() {
        #expect(GatewayConfiguration.Upstream(url: "ws://[]:80/") == nil)
        #expect(GatewayConfiguration.Upstream(url: "wss://[]]:443/ws") == nil)
        #expect(GatewayConfiguration.Upstream(url: "ws://[::1]:8080/")?.host == "::1")
        do {
            _ = try GatewayConfiguration.parse(
                "tls: {certificate: a, key: b, client_ca: c}\nroutes:\n  - path: /x\n    kind: upstream\n"
                    + "    upstream: \"ws://[]:80/\"\n",
                file: "g.yaml", baseDirectory: ".")
            Issue.record("an upstream without a host was accepted")
        } catch let error as DiagnosticsError {
            let lines = error.diagnostics.map(\.description)
            #expect(lines.contains("g.yaml:5: upstream 'ws://[]:80/' is not a ws:// or wss:// URL"), "\(lines)")
        } catch {
            Issue.record("unexpected error \(error)")
        }
    }
}

@Suite("Shipped configuration example")
struct ExampleConfigurationTests {
    @Test("portcullis.example.yaml is valid and listens on 443")
    func exampleIsValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let config = try GatewayConfiguration.load(path: root.appendingPathComponent("portcullis.example.yaml").path)
        #expect(config.listenPort == 443)
        #expect(config.tls.crl?.hasSuffix("pki/crl.pem") == true)
        #expect(config.auditDirectory == "/var/log/portcullis")
        #expect(config.admin?.host == "127.0.0.1")
    }
}
