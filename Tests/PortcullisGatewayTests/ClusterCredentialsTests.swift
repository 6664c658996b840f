import Foundation
import PortcullisConfig
import PortcullisNATS
import PortcullisTestSupport
import Testing

@testable import PortcullisGateway

/// The shared broker signing in to a real nats-server with an NKey (an `nkey:` user) and with a user JWT from a
/// `.creds` file (operator mode, the JWTs minted here); and what the gateway says when the key is wrong, when the
/// server sends no nonce, and when a file is missing, damaged or open to others.
@Suite("Shared broker: NKey and JWT sign-in to NATS", .serialized)
struct ClusterCredentialsTests {
    /// A nats-server with `authorization` in a scratch directory for `body`, removed afterwards.
    static func withNATS(
        _ authorization: NATSServer.Authorization, _ body: (NATSServer) async throws -> Void
    ) async throws {
        let directory = try ClusterTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let nats = try await NATSServer.start(in: directory, authorization: authorization)
        defer { nats.stop() }
        try await body(nats)
    }

    /// Writes a secret file, owner-only as a key should be (or `mode`), and returns its path.
    static func secret(_ text: String, named name: String, in nats: NATSServer, mode: Int = 0o600) throws -> String {
        let path = "\(nats.directory)/\(name)"
        #expect(FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode]))
        return path
    }

    /// The configuration change that joins a gateway to `nats` with `nkey_seed_file` or `credentials`.
    static func joining(_ nats: NATSServer, seedFile: String? = nil, credentials: String? = nil) -> (inout GatewayConfiguration) -> Void {
        let port = nats.port
        return { configuration in
            var settings = GatewayConfiguration.NATS(url: "nats://127.0.0.1:\(port)")!
            settings.nkeySeedFile = seedFile
            settings.credentialsFile = credentials
            configuration.nats = settings
        }
    }

    /// A publish on gateway `a` reaches a subscriber on gateway `b`, through NATS, stamped with its sender.
    static func expectCrossing(_ a: TestGateway, _ b: TestGateway) async throws {
        #expect(try await ClusterTests.ready(a) == nil)
        #expect(try await ClusterTests.ready(b) == nil)
        let remote = try await b.broker(b.operatorCredential)
        try await remote.subscribe("devices/+/telemetry")
        let remoteLog = DeliveryLog(remote)
        let device = try await a.broker(a.device)
        let topic = "devices/demo-device/telemetry"
        #expect(try await ClusterTests.probe(from: device, topic: topic, until: remoteLog), "B's subscription never reached NATS")
        try await device.publish(topic, json: #""across""#)
        #expect(try await remoteLog.wait { $0.text == #""across""# && $0.from == "demo-device" })
        #expect(ClusterTests.metrics(b).contains("portcullis_nats_connected 1"))
        await device.close()
        await remote.close()
    }

    /// The value of an unlabelled metric of `gw`.
    static func metric(_ gw: TestGateway, _ name: String) -> Double? {
        ClusterTests.metrics(gw).split(separator: "\n").lazy
            .compactMap { line -> Double? in
                let fields = line.split(separator: " ")
                return fields.count == 2 && fields[0] == name ? Double(fields[1]) : nil
            }
            .first
    }

    /// Waits until `gw` is not ready for a reason containing `text` and has failed to connect `failures` times
    /// (it keeps retrying); returns the reason.
    static func refused(_ gw: TestGateway, saying text: String, failures: Double = 3) async throws -> String? {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if let reason = gw.gateway.notReadyReason, reason.contains(text),
                (metric(gw, "portcullis_nats_connection_failures_total") ?? 0) >= failures
            {
                return reason
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return gw.gateway.notReadyReason
    }

    @Test("An NKey user (nkey_seed_file) signs in and messages cross; a wrong seed is refused, said in /readyz, and retried")
    func nkeyUser() async throws {
        let user = NKeyPair.generate(.user)
        try await Self.withNATS(.nkeys([user.publicKey])) { nats in
            let seedFile = try Self.secret(user.encodedSeed() + "\n", named: "gateway.nk", in: nats)
            let join = Self.joining(nats, seedFile: seedFile)
            try await withGateway(adjust: join) { a in
                try await withGateway(adjust: join) { b in
                    try await Self.expectCrossing(a, b)
                }
            }

            let stranger = NKeyPair.generate(.user)
            let wrongFile = try Self.secret(stranger.encodedSeed(), named: "stranger.nk", in: nats)
            try await withGateway(adjust: Self.joining(nats, seedFile: wrongFile)) { gw in
                let reason = try #require(try await Self.refused(gw, saying: "Authorization Violation"))
                #expect(
                    reason.hasPrefix("NATS is unreachable: NATS refused the sign-in with the NKey \(stranger.publicKey) (Authorization Violation): check nats.nkey_seed_file"),
                    "\(reason)")
                #expect(!reason.contains(stranger.encodedSeed()))
                // What a load balancer's health check reads.
                let admin = try #require(try await gw.gateway.startAdmin(.init(host: "127.0.0.1", port: 0)).port)
                let readyz = try await ExternalTool("curl").run(
                    ["-s", "-w", " %{http_code}", "http://127.0.0.1:\(admin)/readyz"], holdInput: 0
                ).output
                #expect(readyz.hasPrefix("not ready: \(reason)"), "\(readyz)")
                #expect(readyz.hasSuffix(" 503"), "\(readyz)")
                #expect(Self.metric(gw, "portcullis_nats_connected") == 0)
                #expect((Self.metric(gw, "portcullis_nats_errors_total") ?? 0) >= 3)
                let down = try #require(await gw.auditRecord { $0.event == "nats_unavailable" })
                #expect(down.detail?.contains("Authorization Violation") == true, "\(down)")
                // Sessions stay open; their publishes are refused as in any NATS outage.
                let device = try await gw.broker(gw.device)
                await expectRefusal("unavailable") { try await device.publish("devices/demo-device/telemetry", json: "1") }
                await device.close()
            }
        }
    }

    @Test("A renewed seed file is read at reload and signs the next connection in; a damaged one rejects the reload")
    func renewalAtReload() async throws {
        let (first, second) = (NKeyPair.generate(.user), NKeyPair.generate(.user))
        try await Self.withNATS(.nkeys([first.publicKey, second.publicKey])) { nats in
            let seedFile = try Self.secret(first.encodedSeed(), named: "gateway.nk", in: nats)
            try await withGateway(adjust: Self.joining(nats, seedFile: seedFile)) { gw in
                #expect(try await ClusterTests.ready(gw) == nil)
                let cluster = try #require(gw.gateway.cluster)
                // The file watcher reloads when the seed file changes.
                #expect(ReloadWatcher.watchedPaths(of: gw.gateway.runtime.configuration).contains(seedFile))

                let seed = second.encodedSeed()
                let damaged = String(seed.prefix(30)) + (seed.dropFirst(30).first == "A" ? "B" : "A") + String(seed.dropFirst(31))
                _ = try Self.secret(damaged, named: "gateway.nk", in: nats)
                let rejected = await gw.gateway.reload(trigger: "test")
                #expect(rejected.result == .rejected)
                #expect(rejected.lines.contains { $0.contains("nats.nkey_seed_file \(seedFile): the NKey seed: its checksum does not match") }, "\(rejected.lines)")
                #expect(!rejected.lines.joined().contains(damaged))
                #expect("\(cluster.credentials.signIn)" == "with the NKey \(first.publicKey)")

                _ = try Self.secret(seed + "\n", named: "gateway.nk", in: nats)
                let renewed = await gw.gateway.reload(trigger: "test")
                #expect(renewed.result == .applied)
                #expect(renewed.lines == ["NATS credentials renewed, used from the next connection to NATS"], "\(renewed.lines)")
                #expect("\(cluster.credentials.signIn)" == "with the NKey \(second.publicKey)")
                // The connection in use stays.
                #expect(gw.gateway.notReadyReason == nil)
                #expect(await gw.gateway.reload(trigger: "test").result == .unchanged)
                let record = try #require(await gw.auditRecord { $0.event == "reload" && $0.reason == "applied" })
                #expect(record.detail?.contains("NATS credentials renewed") == true, "\(record)")

                // NATS now knows only the second key: the gateway comes back signed in with it.
                nats.stop()
                try nats.authorize(.nkeys([second.publicKey]))
                #expect(try await eventually { gw.gateway.notReadyReason != nil }, "the gateway did not notice NATS stop")
                #expect(try await nats.restart())
                #expect(try await ClusterTests.ready(gw, within: 120) == nil, "\(gw.gateway.notReadyReason ?? "")")
                let device = try await gw.broker(gw.device)
                try await device.publish("devices/demo-device/telemetry", json: "1")
                await device.close()
            }
        }
    }

    @Test("A .creds file (operator mode, JWTs minted in the test) signs in and messages cross; a JWT of an unknown account is refused")
    func credsUser() async throws {
        let chain = NATSTrustChain()
        try await Self.withNATS(.trustChain(chain)) { nats in
            let user = NKeyPair.generate(.user)
            let jwt = try chain.userJWT(user, name: "portcullis-gateway", subjects: ["portcullis.>"])
            let credentials = try Self.secret(
                NATSTrustChain.credsFile(jwt: jwt, seed: user.encodedSeed()), named: "gateway.creds", in: nats)
            let join = Self.joining(nats, credentials: credentials)
            try await withGateway(adjust: join) { a in
                try await withGateway(adjust: join) { b in
                    try await Self.expectCrossing(a, b)
                }
            }

            // A user of an account the server does not know: signed, well formed, and refused.
            let rogue = NKeyPair.generate(.user)
            let rogueJWT = try chain.userJWT(rogue, name: "rogue", subjects: ["portcullis.>"], issuer: NKeyPair.generate(.account))
            let rogueFile = try Self.secret(
                NATSTrustChain.credsFile(jwt: rogueJWT, seed: rogue.encodedSeed()), named: "rogue.creds", in: nats)
            try await withGateway(adjust: Self.joining(nats, credentials: rogueFile)) { gw in
                let reason = try #require(try await Self.refused(gw, saying: "Authorization Violation"))
                #expect(reason.contains("NATS refused the sign-in with the user JWT of \(rogue.publicKey) (Authorization Violation): check nats.credentials"), "\(reason)")
                #expect(!reason.contains(rogue.encodedSeed()) && !reason.contains(rogueJWT))
            }
        }
    }

    @Test("An NKey against a server that sends no nonce (password users only) fails each attempt, saying why")
    func noNonce() async throws {
        try await Self.withNATS(.passwords) { nats in
            let key = NKeyPair.generate(.user)
            let seedFile = try Self.secret(key.encodedSeed(), named: "gateway.nk", in: nats)
            try await withGateway(adjust: Self.joining(nats, seedFile: seedFile)) { gw in
                let reason = try #require(try await Self.refused(gw, saying: "sent no nonce"))
                #expect(reason.hasPrefix("NATS is unreachable: the NATS server sent no nonce, which signing in with the NKey \(key.publicKey) needs"), "\(reason)")
                // The attempt ends before CONNECT: nats-server had nothing to refuse.
                #expect(Self.metric(gw, "portcullis_nats_errors_total") == 0)
            }
        }
    }

    @Test("A missing, damaged or mismatched secret file stops the start, naming the file, never the secret; an open one is warned about")
    func startupErrors() throws {
        let directory = try ClusterTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let user = NKeyPair.generate(.user)
        let seed = user.encodedSeed()
        let damaged = String(seed.prefix(30)) + (seed.dropFirst(30).first == "A" ? "B" : "A") + String(seed.dropFirst(31))
        let chain = NATSTrustChain()
        let otherJWT = try chain.userJWT(NKeyPair.generate(.user), name: "other", subjects: ["portcullis.>"])
        func write(_ name: String, _ text: String, mode: Int = 0o600) -> String {
            let path = "\(directory)/\(name)"
            #expect(FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode]))
            return path
        }
        var nats = GatewayConfiguration.NATS(url: "nats://127.0.0.1:4222")!
        let cases: [(seedFile: String?, credentials: String?, expected: String)] = [
            ("\(directory)/absent.nk", nil, "nats.nkey_seed_file \(directory)/absent.nk: cannot read it (there is no such file)"),
            (write("damaged.nk", damaged), nil, "nats.nkey_seed_file \(directory)/damaged.nk: the NKey seed: its checksum does not match"),
            (write("account.nk", NKeyPair.generate(.account).encodedSeed()), nil, "an account's; signing in takes a user's (SU…)"),
            (nil, write("seed-only.creds", seed), "nats.credentials \(directory)/seed-only.creds: no user JWT"),
            (nil, write("mismatch.creds", NATSTrustChain.credsFile(jwt: otherJWT, seed: seed)), "they are not one user's"),
        ]
        for (seedFile, credentials, expected) in cases {
            nats.nkeySeedFile = seedFile
            nats.credentialsFile = credentials
            var warnings: [String] = []
            do {
                _ = try NATSConnection.Settings(nats, warnings: &warnings)
                Issue.record("accepted \(seedFile ?? credentials ?? "")")
            } catch let error as GatewayStartupError {
                #expect(error.description.contains(expected), "\(error)")
                #expect(!error.description.contains(seed) && !error.description.contains(damaged), "\(error)")
            }
        }

        nats.credentialsFile = nil
        nats.nkeySeedFile = write("owner-only.nk", seed)
        var warnings: [String] = []
        let settings = try NATSConnection.Settings(nats, warnings: &warnings)
        #expect(warnings.isEmpty, "\(warnings)")
        #expect("\(settings.credentials.signIn)" == "with the NKey \(user.publicKey)")
        nats.nkeySeedFile = write("open.nk", seed, mode: 0o644)
        _ = try NATSConnection.Settings(nats, warnings: &warnings)
        #expect(warnings.count == 1 && warnings.first?.contains("readable by its group or others (mode 644)") == true, "\(warnings)")
    }

    @Test("password_file: one line, read up to a bound, UTF-8, never in a message; an open one is warned about")
    func passwordFile() throws {
        let directory = try ClusterTests.scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func write(_ name: String, _ bytes: [UInt8], mode: Int = 0o600) -> String {
            let path = "\(directory)/\(name)"
            #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes), attributes: [.posixPermissions: mode]))
            return path
        }
        var nats = GatewayConfiguration.NATS(url: "nats://127.0.0.1:4222")!
        nats.user = "gateway"
        nats.passwordFile = write("password", Array("s3cret-Pa55\n".utf8))
        var warnings: [String] = []
        let settings = try NATSConnection.Settings(nats, warnings: &warnings)
        #expect(warnings.isEmpty, "\(warnings)")
        guard case .password(let user, let password) = settings.credentials.signIn else {
            Issue.record("signs in \(settings.credentials.signIn)")
            return
        }
        #expect(user == "gateway" && password == "s3cret-Pa55")

        nats.passwordFile = write("open", Array("s3cret-Pa55".utf8), mode: 0o640)
        _ = try NATSConnection.Settings(nats, warnings: &warnings)
        #expect(warnings.count == 1 && warnings.first?.contains("holds a password and is readable by its group or others (mode 640)") == true, "\(warnings)")

        let refused: [(file: String, expected: String)] = [
            (write("huge", [UInt8](repeating: 0x61, count: NATSCredentials.maximumFileSize + 1)),
             "larger than \(NATSCredentials.maximumFileSize) bytes, too large to hold a password"),
            (write("latin1", [0x73, 0x33, 0xE9, 0x0A]), "not UTF-8 text"),
            ("\(directory)/absent", "cannot read it (there is no such file)"),
        ]
        for (file, expected) in refused {
            nats.passwordFile = file
            #expect {
                _ = try NATSConnection.Settings(nats, warnings: &warnings)
            } throws: { error in
                "\(error)".contains("nats.password_file \(file): \(expected)") && !"\(error)".contains("s3cret")
            }
        }
    }
}
