import Foundation
import NIOCore
import PortcullisAudit
import PortcullisConfig
import PortcullisYAML

/// What one reload did.
public struct ReloadOutcome: Sendable {
    public enum Result: String, Sendable {
        /// The new set is in force.
        case applied
        /// Everything validated and nothing differed; the running set stays (and with it its session tickets).
        case unchanged
        /// Something was invalid: the previous set stays in force.
        case rejected
    }

    public var result: Result
    /// What changed (applied), or every problem found (rejected), one per line.
    public var lines: [String]
    /// Open sessions checked against the new set, and how many of them it ended.
    public var sessionsChecked = 0
    public var sessionsEnded = 0
}

/// Serialises reloads: a SIGHUP arriving while a file change is being applied waits for it, so two reloads
/// never race to install.
actor ReloadQueue {
    private var last: Task<ReloadOutcome, Never>?

    func run(_ work: @escaping @Sendable () async -> ReloadOutcome) async -> ReloadOutcome {
        let previous = last
        let task = Task {
            _ = await previous?.value
            return await work()
        }
        last = task
        return await task.value
    }
}

extension Gateway {
    /// Reloads policies, client CAs, CRL, server certificate and key, origins and routes from `load`'s
    /// configuration, and the files the gateway signs in to NATS with (used from the next connection to NATS):
    /// everything is validated first and swapped in at once; when anything is invalid the running set stays in
    /// force. Then every open session is checked against the new set and the ones it no longer admits are closed
    /// with 1008. Audited either way (`reload`, `reload_failed`).
    ///
    /// Settings that only a restart can change (listen address, audit log, admin listener) are kept, and the
    /// outcome says so.
    ///
    /// - Parameter trigger: what asked for it, for the log and the audit record (`SIGHUP`, `file change: …`).
    public func reload(
        trigger: String, configuration load: @escaping @Sendable () throws -> GatewayConfiguration
    ) async -> ReloadOutcome {
        await reloads.run { await self.performReload(trigger: trigger, load: load) }
    }

    /// Reloads the files of the running configuration (for `serve --dev`, whose configuration is built in).
    public func reload(trigger: String) async -> ReloadOutcome {
        let configuration = runtime.configuration
        return await reload(trigger: trigger) { configuration }
    }

    /// A reload, already in the queue (``reloads``): what ``reload(trigger:configuration:)`` runs.
    func performReload(trigger: String, load: () throws -> GatewayConfiguration) async -> ReloadOutcome {
        let current = runtime
        let runtime: GatewayRuntime
        let notApplied: [String]
        let renewedNATSCredentials: NATSConnection.Credentials?
        do {
            var proposed = try load()
            notApplied = Self.keepRestartOnlySettings(of: current.configuration, in: &proposed)
            runtime = try GatewayRuntime.load(proposed, previous: current)
            renewedNATSCredentials = try renewedCredentials(for: proposed.nats)
        } catch let error as DiagnosticsError {
            return rejectReload(trigger: trigger, problems: error.diagnostics.map(\.description))
        } catch let error as GatewayStartupError {
            return rejectReload(trigger: trigger, problems: error.problems)
        } catch {
            return rejectReload(trigger: trigger, problems: ["\(error)"])
        }

        let changes = runtime.summary.changes(from: current.summary)
            + Self.settingChanges(from: current.configuration, to: runtime.configuration) + runtime.notes
            + (renewedNATSCredentials == nil ? [] : ["NATS credentials renewed, used from the next connection to NATS"])
        let restartNote = notApplied.isEmpty ? [] : ["needs a restart, not applied: \(notApplied.joined(separator: ", "))"]
        if changes.isEmpty {
            metrics.reloads(.unchanged)
            let lines = ["no change"] + restartNote
            logger.info("reload: \(lines.joined(separator: "; "))", metadata: ["reload.trigger": "\(trigger)"])
            var record = AuditRecord(event: "reload", decision: "allow", reason: "unchanged")
            record.detail = "\(trigger): " + lines.joined(separator: "; ")
            audit(record)
            return ReloadOutcome(result: .unchanged, lines: lines)
        }
        install(runtime)
        if let renewedNATSCredentials { cluster?.credentials = renewedNATSCredentials }
        warnIfOpenFilesBindConnections()
        metrics.reloads(.applied)
        metrics.addRoutes(runtime.configuration.routes)
        let trustChanged = runtime.summary.certificateAuthorities != current.summary.certificateAuthorities
        let open = openSessions()
        var record = AuditRecord(event: "reload", decision: "allow", reason: "applied")
        record.detail = "\(trigger): " + (changes + restartNote).joined(separator: "; ")
            + "; re-checking \(open.count) open session(s)"
        audit(record)
        logger.notice(
            "reloaded: \((changes + restartNote).joined(separator: "; "))",
            metadata: ["reload.trigger": "\(trigger)", "sessions.open": "\(open.count)"])
        // The others learn of a new CRL at once (one from them is already theirs).
        if runtime.summary.crlVersions != current.summary.crlVersions, trigger != Self.crlFromNATS { announceCRL() }
        let ended = await recheck(open, under: runtime, trustChanged: trustChanged)
        return ReloadOutcome(
            result: .applied, lines: changes + restartNote, sessionsChecked: open.count, sessionsEnded: ended)
    }

    /// The files `nats` signs in with, read again: their credentials when they differ from those in use (a renewed
    /// `.creds` file, a rotated certificate), nil when they do not. Throws ``GatewayStartupError`` for a file that
    /// is missing or damaged now, which rejects the reload: the credentials in use stay.
    private func renewedCredentials(for nats: GatewayConfiguration.NATS?) throws -> NATSConnection.Credentials? {
        guard let nats, let cluster else { return nil }
        var warnings: [String] = []
        let renewed = try NATSConnection.Settings(nats, warnings: &warnings).credentials
        guard renewed.digest != cluster.credentials.digest else { return nil }
        for warning in warnings { logger.warning("\(warning)") }
        return renewed
    }

    private func rejectReload(trigger: String, problems: [String]) -> ReloadOutcome {
        metrics.reloads(.rejected)
        logger.error(
            "reload rejected, the running configuration stays in force: \(problems.joined(separator: "; "))",
            metadata: ["reload.trigger": "\(trigger)"])
        var record = AuditRecord(event: "reload_failed", decision: "deny", reason: "invalid_configuration")
        record.detail = "\(trigger): " + problems.joined(separator: "; ") + "; the running configuration stays in force"
        audit(record)
        return ReloadOutcome(result: .rejected, lines: problems)
    }

    /// Checks each session against `runtime` and ends those it refuses; returns how many it ended.
    func recheck(_ sessions: [OpenConnection], under runtime: GatewayRuntime, trustChanged: Bool) async -> Int {
        await withTaskGroup(of: Bool.self) { group in
            for session in sessions {
                group.addTask {
                    let connection = session.connection
                    guard let admitted = try? await session.channel.eventLoop.submit({ connection.session }).get()
                    else { return false }
                    let verdict = await runtime.recheck(admitted, trustChanged: trustChanged)
                    session.channel.pipeline.fireUserInboundEventTriggered(verdict)
                    if case .end = verdict { return true }
                    return false
                }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
    }

    /// Copies into `proposed` what a reload cannot change, and names what it would have changed.
    static func keepRestartOnlySettings(
        of current: GatewayConfiguration, in proposed: inout GatewayConfiguration
    ) -> [String] {
        var kept: [String] = []
        if (proposed.listenHost, proposed.listenPort) != (current.listenHost, current.listenPort) {
            kept.append("listen \(proposed.listenHost):\(proposed.listenPort)")
            (proposed.listenHost, proposed.listenPort) = (current.listenHost, current.listenPort)
        }
        if proposed.auditDirectory != current.auditDirectory || proposed.audit != current.audit {
            kept.append("audit")
            (proposed.auditDirectory, proposed.audit) = (current.auditDirectory, current.audit)
        }
        if proposed.eventLoops != current.eventLoops {
            kept.append("event_loops")
            proposed.eventLoops = current.eventLoops
        }
        if proposed.nats != current.nats {
            kept.append("nats")
            proposed.nats = current.nats
        }
        if proposed.admin != current.admin {
            kept.append("admin")
            proposed.admin = current.admin
        }
        if (proposed.reloadWatchInterval, proposed.reloadDebounce) != (current.reloadWatchInterval, current.reloadDebounce) {
            kept.append("reload")
            (proposed.reloadWatchInterval, proposed.reloadDebounce) = (current.reloadWatchInterval, current.reloadDebounce)
        }
        return kept
    }

    /// The settings that differ, besides what ``RuntimeSummary/changes(from:)`` reports; they apply to new
    /// sessions.
    static func settingChanges(from old: GatewayConfiguration, to new: GatewayConfiguration) -> [String] {
        var names: [String] = []
        func compare<Value: Equatable>(_ name: String, _ path: KeyPath<GatewayConfiguration, Value>) {
            if old[keyPath: path] != new[keyPath: path] { names.append(name) }
        }
        compare("tls.min_version", \.tls.minimumVersion)
        compare("tls.key_exchange", \.tls.keyExchange)
        compare("tls.certificate", \.tls.certificateChain)
        compare("tls.key", \.tls.privateKey)
        compare("tls.client_ca", \.tls.clientCA)
        compare("tls.client_intermediates", \.tls.clientIntermediates)
        compare("tls.crl", \.tls.crl)
        compare("tls.crl_expired", \.tls.crlExpired)
        compare("policies", \.policiesDirectory)
        // Paths and kinds of routes are in the summary's changes; the backends they forward to are not.
        if old.routes.map(\.upstream) != new.routes.map(\.upstream) { names.append("upstreams") }
        compare("handshake_timeout", \.handshakeTimeout)
        compare("max_header_bytes", \.maxHeaderBytes)
        compare("max_message_bytes", \.maxMessageBytes)
        compare("ping_interval", \.pingInterval)
        compare("ping_timeout", \.pingTimeout)
        compare("max_outbound_bytes", \.maxOutboundBytes)
        compare("drain_timeout", \.drainTimeout)
        compare("on_audit_failure", \.onAuditFailure)
        compare("certificate_expiry_warning", \.certificateExpiryWarning)
        compare("limits", \.limits)
        compare("close_timeout", \.closeTimeout)
        compare("compression", \.compression)
        compare("compression_context_takeover", \.compressionContextTakeover)
        return names.isEmpty ? [] : ["settings for new sessions: \(names.joined(separator: ", "))"]
    }
}
