import FuzzDriver
import FuzzSupport
import Glibc
import PortcullisConfig
import PortcullisNATS
import PortcullisYAML

/// The configuration loader (`GatewayConfiguration.parse`, behind `load(path:)` at start and on every reload)
/// on YAML text. Any input may be refused, with diagnostics; none may crash, trap or hang. A configuration that
/// loads must hold what the loader promises to check: routes, ports, paths resolved against the file's
/// directory, and every duration within its bounds (a timer past Int64 nanoseconds ends the process).
enum ConfigurationFile {
    static let name = "portcullis.yaml"
    /// Where the file is read from: relative paths in it must come out under it.
    static let directory = "/etc/portcullis"
}

func checkLoaded(_ configuration: GatewayConfiguration) {
    typealias Bounds = GatewayConfiguration.Bounds
    require(!configuration.routes.isEmpty, "a configuration without routes loaded")
    require(Set(configuration.routes.map(\.path)).count == configuration.routes.count, "a route path loaded twice")
    for route in configuration.routes {
        require(route.path.hasPrefix("/"), "route path \(String(reflecting: route.path)) is no path")
        require((route.kind == .upstream) == (route.upstream != nil), "route \(route.path): upstream and kind disagree")
        if let upstream = route.upstream {
            require((1...65535).contains(upstream.port) && !upstream.host.isEmpty, "upstream \(upstream.url) has no host or port")
            require(upstream.target.hasPrefix("/"), "upstream \(upstream.url) has the target \(upstream.target)")
        }
        for name in route.subprotocols {
            require(GatewayConfiguration.isSubprotocolToken(name), "subprotocol \(String(reflecting: name)) is no token")
        }
    }
    require((0...65535).contains(configuration.listenPort) && !configuration.listenHost.isEmpty, "listen address")
    if let admin = configuration.admin {
        require((0...65535).contains(admin.port) && !admin.host.isEmpty, "admin listen address")
    }
    let tls = configuration.tls
    let paths = [tls.certificateChain, tls.privateKey, tls.clientCA, configuration.policiesDirectory, configuration.auditDirectory]
        + [tls.clientIntermediates, tls.crl, configuration.admin?.clientCA].compactMap { $0 }
        + configuration.routes.compactMap(\.upstream).flatMap { [$0.certificate, $0.key, $0.trustRoots].compactMap { $0 } }
        + [configuration.nats?.certificate, configuration.nats?.key, configuration.nats?.ca, configuration.nats?.passwordFile]
        .compactMap { $0 }
        + [configuration.nats?.credentialsFile, configuration.nats?.nkeySeedFile].compactMap { $0 }
    if let nats = configuration.nats {
        require((1...65535).contains(nats.port) && !nats.host.isEmpty, "nats url \(nats.url) has no host or port")
        let ways = [nats.user != nil || nats.passwordFile != nil, nats.credentialsFile != nil, nats.nkeySeedFile != nil]
        require(ways.filter { $0 }.count <= 1, "nats with more than one way to sign in loaded")
        require(SubjectMapping(prefix: nats.subjectPrefix) != nil, "nats.subject_prefix \(nats.subjectPrefix) loaded")
    }
    if let proxy = configuration.proxyProtocol {
        require(!proxy.trusted.isEmpty, "proxy_protocol without trusted addresses loaded")
    }
    for path in paths {
        require(path.hasPrefix("/"), "path \(String(reflecting: path)) is not resolved against the file's directory")
    }
    require(
        configuration.maxOutboundBytes >= configuration.maxMessageBytes + GatewayConfiguration.largestDeliveryOverhead,
        "max_outbound_bytes cannot hold a largest message")
    let durations: [(String, Double, ClosedRange<Double>)] = [
        ("handshake_timeout", configuration.handshakeTimeout, Bounds.handshakeTimeout),
        ("ping_interval", configuration.pingInterval, Bounds.pingInterval),
        ("ping_timeout", configuration.pingTimeout, Bounds.pingTimeout),
        ("drain_timeout", configuration.drainTimeout, Bounds.drainTimeout),
        ("close_timeout", configuration.closeTimeout, Bounds.closeTimeout),
        ("reload.debounce", configuration.reloadDebounce, Bounds.reloadDebounce),
    ]
    for (name, seconds, bounds) in durations {
        require(bounds.contains(seconds), "\(name) \(seconds) is out of \(bounds)")
    }
    // These may also be 0 (`off`).
    let durationsOrOff: [(String, Double, ClosedRange<Double>)] = [
        ("certificate_expiry_warning", configuration.certificateExpiryWarning, Bounds.certificateExpiryWarning),
        ("reload.watch_interval", configuration.reloadWatchInterval, Bounds.reloadWatchInterval),
        ("limits.refusal_audit_interval", configuration.limits.refusalAuditInterval, Bounds.refusalAuditInterval),
    ]
    for (name, seconds, bounds) in durationsOrOff {
        require(seconds == 0 || bounds.contains(seconds), "\(name) \(seconds) is out of \(bounds)")
    }
    let audit = configuration.audit
    for (name, duration, bounds) in [
        ("audit.fsync_interval", audit.fsyncInterval, Bounds.auditFsyncInterval),
        ("audit.segment_max_age", audit.segmentMaxAge, Bounds.auditSegmentMaxAge),
        ("audit.checkpoint_interval", audit.checkpointInterval, Bounds.auditCheckpointInterval),
    ] {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        // The microsecond rounding of the conversion may take a bound's last fraction off.
        require(seconds >= bounds.lowerBound - 1e-6 && seconds <= bounds.upperBound, "\(name) \(seconds) is out of \(bounds)")
    }
}

func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    // The configuration file is read as UTF-8 text; one that is not is refused before the loader sees it.
    guard let text = String(validating: UnsafeBufferPointer(start: data, count: count), as: UTF8.self) else { return 0 }
    do {
        checkLoaded(try GatewayConfiguration.parse(text, file: ConfigurationFile.name, baseDirectory: ConfigurationFile.directory))
    } catch let error as DiagnosticsError {
        require(!error.diagnostics.isEmpty, "a configuration refused without a diagnostic")
        for diagnostic in error.diagnostics {
            require(diagnostic.file == ConfigurationFile.name, "a diagnostic names the file \(String(reflecting: diagnostic.file))")
            require(diagnostic.line.map { $0 >= 1 } ?? true, "a diagnostic on line \(diagnostic.line!)")
        }
    } catch {
        require(false, "the configuration loader threw something else than diagnostics: \(error)")
    }
    return 0
}

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
