import ArgumentParser
@preconcurrency import Foundation
import Logging
import PortcullisConfig
import PortcullisGateway
import PortcullisPKI
import PortcullisYAML

#if canImport(Glibc)
import Glibc
#endif

/// `portcullis serve`: run the gateway from a configuration file, or with the embedded development default.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the gateway.",
        discussion: """
            With --dev, needs nothing else: creates a development PKI in --pki (default ./pki) when it has no \
            CA, loads ./policies, audits to ./audit and listens on 127.0.0.1:8443.

            Exit status: 0 after a clean shutdown (SIGINT/SIGTERM); 1 when the gateway cannot start (every \
            problem is listed, configuration errors with file:line).
            """
    )

    @Option(name: .long, help: ArgumentHelp("YAML configuration file.", valueName: "file"))
    var config: String?

    @Flag(name: .long, help: "Run with the embedded development default (creating a dev PKI when needed).")
    var dev = false

    @Option(name: .long, help: ArgumentHelp("Listen address, overriding the configuration.", valueName: "host:port"))
    var listen: String?

    @Option(name: .long, help: ArgumentHelp("PKI directory: its ca.crt, issued/server.crt, private/server.key and crl.pem.", valueName: "dir"))
    var pki: String?

    @Option(name: .long, help: ArgumentHelp("Policies directory.", valueName: "dir"))
    var policies: String?

    @Option(name: .customLong("audit-dir"), help: ArgumentHelp("Audit log directory.", valueName: "dir"))
    var auditDir: String?

    @Option(
        name: .customLong("admin-listen"),
        help: ArgumentHelp(
            "Admin listener (/healthz, /readyz, /metrics) address, overriding the configuration; 'off' for none.",
            valueName: "host:port"))
    var adminListen: String?

    func validate() throws {
        if config == nil && !dev {
            throw ValidationError("give --config FILE, or --dev for the embedded development default")
        }
        if config != nil && dev {
            throw ValidationError("--config and --dev exclude each other")
        }
        if let listen, parseListenAddress(listen) == nil {
            throw ValidationError("--listen must be HOST:PORT, e.g. 127.0.0.1:8443 or [::1]:8443")
        }
        if let adminListen, adminListen != "off", parseListenAddress(adminListen) == nil {
            throw ValidationError("--admin-listen must be HOST:PORT, e.g. 127.0.0.1:9443, or off")
        }
    }

    /// How the configuration is made from the command line: at start, and again for every reload.
    struct ConfigurationSource: Sendable {
        var file: String?
        var pki: String
        var explicitPKI: Bool
        var listen: String?
        var policies: String?
        var auditDir: String?
        var adminListen: String?

        /// - Throws: ``DiagnosticsError`` for an invalid configuration file.
        func load() throws -> GatewayConfiguration {
            var configuration: GatewayConfiguration
            if let file {
                configuration = try GatewayConfiguration.load(path: file)
                if explicitPKI {
                    configuration.tls = GatewayConfiguration.tls(fromPKI: pki, minimumVersion: configuration.tls.minimumVersion)
                }
            } else {
                configuration = .development(pki: pki)
            }
            if let listen, let (host, port) = parseListenAddress(listen) {
                (configuration.listenHost, configuration.listenPort) = (host, port)
            }
            if let policies { configuration.policiesDirectory = policies }
            if let auditDir { configuration.auditDirectory = auditDir }
            if adminListen == "off" {
                configuration.admin = nil
            } else if let adminListen, let (host, port) = parseListenAddress(adminListen) {
                configuration.admin = GatewayConfiguration.Admin(host: host, port: port, clientCA: configuration.admin?.clientCA)
            }
            return configuration
        }
    }

    func run() async throws {
        var logger = Logger(label: "portcullis")
        logger.logLevel = .info
        let configuration: GatewayConfiguration
        var bootstrap: (createdCA: Bool, issued: [InventoryEntry])?
        let pkiDirectory = pki ?? ProcessInfo.processInfo.environment["PORTCULLIS_PKI"] ?? "pki"
        let source = ConfigurationSource(
            file: config, pki: pkiDirectory, explicitPKI: pki != nil, listen: listen, policies: policies,
            auditDir: auditDir, adminListen: adminListen)
        if dev {
            do {
                bootstrap = try PKIDirectory(path: pkiDirectory).bootstrapDevelopment()
            } catch {
                fail(["cannot prepare the development PKI in \(pkiDirectory): \(error)"])
            }
        }
        do {
            configuration = try source.load()
        } catch let error as DiagnosticsError {
            fail(["invalid configuration:"] + error.diagnostics.map { "  \($0)" })
        }

        let gateway: Gateway
        // Signals are caught before anything is printed: a SIGTERM right after the banner must drain, not kill.
        let (signals, continuation) = AsyncStream<Int32>.makeStream()
        var sources: [any DispatchSourceSignal] = []
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            Glibc.signal(signal, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signal, queue: .global())
            source.setEventHandler { continuation.yield(signal) }
            source.resume()
            sources.append(source)
        }
        defer { sources.forEach { $0.cancel() } }
        let address: String
        var adminAddress: String?
        do {
            gateway = try Gateway(configuration: configuration, logger: logger)
            let bound = try await gateway.start()
            address = "\(configuration.listenHost):\(bound.port ?? configuration.listenPort)"
            if let admin = configuration.admin {
                do {
                    let port = try await gateway.startAdmin(admin).port ?? admin.port
                    adminAddress = "\(admin.clientCA == nil ? "http" : "https")://\(admin.host):\(port)"
                } catch let error as GatewayStartupError {
                    await gateway.shutdown(deadline: .zero)
                    throw error
                }
            }
        } catch let error as GatewayStartupError {
            fail(["cannot start:"] + error.problems.map { "  \($0)" })
        }
        let watcher = configuration.reloadWatchInterval > 0
            ? ReloadWatcher.run(
                interval: .microseconds(Int64(configuration.reloadWatchInterval * 1e6)),
                debounce: .microseconds(Int64(configuration.reloadDebounce * 1e6)),
                paths: { ReloadWatcher.watchedPaths(of: gateway.runtime.configuration, extra: source.file.map { [$0] } ?? []) },
                changed: { paths in
                    _ = await gateway.reload(trigger: "file change: \(paths.joined(separator: ", "))") { try source.load() }
                })
            : nil
        if let bootstrap {
            // The development PKI went through the same issuance as `pki issue`, and is audited the same way.
            let audit = PKIAudit(log: gateway.auditLog)
            if bootstrap.createdCA { audit.record("init", nil, detail: "development CA created by serve --dev") }
            for entry in bootstrap.issued { audit.record("issue", entry, detail: "serve --dev") }
            printDevelopmentBanner(
                configuration: configuration, address: address, admin: adminAddress, pki: pkiDirectory, bootstrap: bootstrap)
        } else {
            emit(
                "portcullis: listening on \(address); audit log in \(configuration.auditDirectory)/audit.jsonl"
                    + (adminAddress.map { "; admin on \($0)" } ?? "") + "\n")
        }

        for await signal in signals {
            if signal == SIGHUP {
                logger.info("reloading", metadata: ["signal": "SIGHUP"])
                _ = await gateway.reload(trigger: "SIGHUP") { try source.load() }
                continue
            }
            logger.info("shutting down", metadata: ["signal": "\(signal == SIGINT ? "SIGINT" : "SIGTERM")"])
            break
        }
        watcher?.cancel()
        await gateway.shutdown(deadline: .microseconds(Int64(gateway.runtime.configuration.drainTimeout * 1e6)))
    }

    private func printDevelopmentBanner(
        configuration: GatewayConfiguration, address: String, admin: String?, pki: String,
        bootstrap: (createdCA: Bool, issued: [InventoryEntry])
    ) {
        let directory = PKIDirectory(path: pki)
        let names = bootstrap.issued.map(\.name).joined(separator: ", ")
        let made = bootstrap.createdCA ? "created a development CA and issued \(names)"
            : bootstrap.issued.isEmpty ? "reusing the existing PKI" : "reusing the CA, issued \(names)"
        let port = address.split(separator: ":").last.map(String.init) ?? "8443"
        let device = "-cert \(directory.certificatePath("demo-device")) -key \(directory.keyPath("demo-device"))"
        emit("""
            Portcullis development gateway listening on wss://\(address)  (\(made) in \(pki)/)
              policies:  \(configuration.policiesDirectory)/
              audit log: \(configuration.auditDirectory)/audit.jsonl
              routes:    \(configuration.routes.map { "\($0.path) (\($0.kind.rawValue))" }.joined(separator: ", "))
              admin:     \(admin.map { "\($0)/metrics, /healthz, /readyz" } ?? "off")
              reload:    edit policies/ or revoke with `portcullis pki revoke`: picked up on change (or kill -HUP)

            Connect the demo device with openssl (expect "HTTP/1.1 101 Switching Protocols"):
              (printf 'GET /v1/echo HTTP/1.1\\r\\nHost: localhost:\(port)\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n'; sleep 1) | openssl s_client -quiet -no_ign_eof -connect 127.0.0.1:\(port) -servername localhost -CAfile \(directory.caCertificatePath) \(device)

            Connect it with Python (pip install websockets) and echo a message:
              python3 -c 'import asyncio, ssl, websockets
            async def main():
                tls = ssl.create_default_context(cafile="\(directory.caCertificatePath)")
                tls.load_cert_chain("\(directory.certificatePath("demo-device"))", "\(directory.keyPath("demo-device"))")
                async with websockets.connect("wss://localhost:\(port)/v1/echo", ssl=tls) as ws:
                    await ws.send("hello from demo-device"); print(await ws.recv())
            asyncio.run(main())'

            Publish and subscribe on /v1/messages (docs/protocol.md): see the README's walkthrough, with
            pki/issued/demo-operator.crt subscribing to devices/+/telemetry.

            Stop with Ctrl-C.

            """)
    }

    /// Writes to standard output unbuffered, so the banner shows at once even when piped.
    private func emit(_ text: String) {
        StandardStreams.serverOutput(text)
    }

    private func fail(_ lines: [String]) -> Never {
        StandardStreams.error(lines.map { "portcullis: \($0)" }.joined(separator: "\n") + "\n")
        Foundation.exit(1)
    }
}
