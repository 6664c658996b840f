import ArgumentParser
import Foundation
import PortcullisConfig
import PortcullisPolicy
import PortcullisProtocol
import PortcullisYAML
import SwiftASN1
import X509

/// `policy explain --cert FILE`: the policy decision the gateway would make for a certificate, with the
/// identity, the rule, the reason code, the grants and limits, and (with `--diff`) what a change would change.
struct PolicyExplain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Explain whether a certificate would be admitted on a route, by which rule, and what it may do.",
        discussion: """
            Computed by the gateway's own code: the certificate's facts as admission extracts them, the identity \
            mapping, the decision (with its audit reason code) and the session's grants and limits. The \
            certificate is assumed to verify: chain, validity and revocation are checked before policy.

            The gateway-wide allowed_origins, the routes and the policies directory come from --config FILE (as \
            'serve --config' reads it), or from the --dev defaults without it; --policies overrides the directory.

            With --diff DIR2, explains the certificate under the policies above and under DIR2, and lists what \
            changes from the first to the second: identity, \
            decision, rule, grants added (+) and removed (-), limits and topic verdicts (~).

            Exit status: 0 when admitted and every --publish/--subscribe topic is allowed; 1 when refused or a \
            topic is forbidden. With --diff: 0 when nothing changes for this certificate, 1 when something does. \
            2 when there is no answer (an unreadable certificate, a configuration or policy set the gateway \
            would refuse, listed with file:line on stderr); 64 for a usage error.
            """)

    @Option(name: .customLong("cert"), help: ArgumentHelp("The client certificate (PEM; the first certificate of a chain file).", valueName: "file"))
    var certificate: String

    @Option(help: ArgumentHelp("The Origin header the client sends (default: none, as a device).", valueName: "origin"))
    var origin: String?

    @Option(help: ArgumentHelp("The route path (default: the first broker route, else the first route).", valueName: "path"))
    var path: String?

    @Option(help: ArgumentHelp("A topic to try publishing to (repeatable).", valueName: "topic"))
    var publish: [String] = []

    @Option(help: ArgumentHelp("A filter to try subscribing to (repeatable).", valueName: "filter"))
    var subscribe: [String] = []

    @Option(help: ArgumentHelp("Policies directory (default: the configuration's, ./policies for --dev).", valueName: "dir"))
    var policies: String?

    @Option(help: ArgumentHelp("Gateway configuration file, for its allowed_origins, routes and policies.", valueName: "file"))
    var config: String?

    @Option(help: ArgumentHelp("A second policies directory: show what changes from DIR to DIR2.", valueName: "dir2"))
    var diff: String?

    @Flag(help: "Print JSON.")
    var json = false

    func validate() throws {
        for topic in publish {
            if let problem = Topic.problem(withName: topic) { throw ValidationError("--publish '\(topic)': \(problem)") }
        }
        for filter in subscribe {
            if let problem = Topic.problem(withFilter: filter) { throw ValidationError("--subscribe '\(filter)': \(problem)") }
        }
    }

    func run() throws {
        let configuration: GatewayConfiguration
        do {
            configuration = try config.map(GatewayConfiguration.load(path:)) ?? .development()
        } catch let error as DiagnosticsError {
            failure(["invalid configuration:"] + error.diagnostics.map { "  \($0)" }, status: 2)
        }
        let facts: CertificateFacts
        do {
            facts = try Self.readFacts(path: certificate)
        } catch {
            failure(["\(certificate): \(error)"], status: 2)
        }
        let route = path ?? (configuration.routes.first { $0.kind == .broker } ?? configuration.routes.first)?.path ?? "/"
        let question = PolicyExplanation.Question(
            certificate: facts, route: route, origin: origin, publish: publish, subscribe: subscribe)
        let explain = { (directory: String) -> PolicyExplanation in
            PolicyExplanation.explain(
                question, policies: Self.load(directory), gatewayOrigins: OriginMatcher(configuration.allowedOrigins),
                routes: configuration.routes.map(\.path))
        }
        let current = explain(policies ?? configuration.policiesDirectory)
        guard let diff else {
            if json { printJSON(current) } else { say(Self.text(current, subject: facts.subject)) }
            if !current.allAllowed { throw ExitCode(1) }
            return
        }
        let comparison = PolicyExplanationDiff(before: current, after: explain(diff))
        if json { printJSON(comparison) } else { say(Self.text(comparison, subject: facts.subject)) }
        if !comparison.isEmpty { throw ExitCode(1) }
    }

    /// The policy set the gateway would load from `directory`; when it would refuse it, says why and exits 2.
    private static func load(_ directory: String) -> PolicySet {
        do {
            return try PolicySet.load(directory: directory)
        } catch let error as DiagnosticsError {
            failure(["the gateway would refuse the policies in \(directory):"] + error.diagnostics.map { "  \($0)" }, status: 2)
        } catch {
            failure(["cannot read the policies in \(directory): \(error)"], status: 2)
        }
    }

    /// Largest certificate file read: a certificate chain is a few KiB; anything far larger is not one.
    static let maximumCertificateFileBytes = 1 << 20

    /// The facts admission extracts from the leaf certificate, over the DER bytes the file holds (the
    /// fingerprint is of those bytes, as of the bytes a client presents).
    static func readFacts(path: String) throws -> CertificateFacts {
        guard let file = FileHandle(forReadingAtPath: path) else { throw ValidationError("cannot open the file") }
        defer { try? file.close() }
        let data = try file.read(upToCount: maximumCertificateFileBytes + 1) ?? Data()
        guard data.count <= maximumCertificateFileBytes else {
            throw ValidationError("larger than \(maximumCertificateFileBytes) bytes; not a certificate file")
        }
        let text = String(decoding: data, as: UTF8.self)
        guard let leaf = try PEMDocument.parseMultiple(pemString: text).first(where: { $0.discriminator == "CERTIFICATE" })
        else { throw ValidationError("no PEM certificate in the file") }
        return CertificateFacts(certificate: try Certificate(derEncoded: leaf.derBytes), derBytes: leaf.derBytes)
    }

    static func text(_ explanation: PolicyExplanation, subject: String) -> String {
        var lines = ["certificate: \(subject)"]
        lines.append("route:       \(explanation.route), " + (explanation.origin.map { "Origin \($0)" } ?? "no Origin header"))
        if let identity = explanation.identity {
            let groups = identity.groups.isEmpty ? "" : " (groups: \(identity.groups.joined(separator: ", ")))"
            lines.append("identity:    \(identity.name)\(groups), from mapping \(identity.mapping): \(identity.rule ?? "?")")
        } else {
            lines.append("identity:    none")
        }
        let rule = explanation.rule.map { " by rule '\($0)'" + (explanation.ruleLocation.map { " (\($0))" } ?? "") } ?? ""
        if explanation.admitted {
            lines.append("decision:    ADMITTED\(rule)")
        } else {
            lines.append("decision:    REFUSED, \(explanation.reason ?? "?")\(rule)")
            lines.append("reason:      \(explanation.detail)")
        }
        if let grants = explanation.grants {
            func list(_ patterns: [String]) -> String { patterns.isEmpty ? "(none)" : patterns.joined(separator: ", ") }
            lines.append("publish:     \(list(grants.publish))")
            lines.append("subscribe:   \(list(grants.subscribe))")
            if !grants.denyPublish.isEmpty { lines.append("deny publish:   \(list(grants.denyPublish))") }
            if !grants.denySubscribe.isEmpty { lines.append("deny subscribe: \(list(grants.denySubscribe))") }
        }
        if let limits = explanation.limits {
            lines.append("limits:      " + limits.described.map { "\($0.name) \($0.value)" }.joined(separator: ", "))
        }
        for topic in explanation.topics {
            let verdict = topic.allowed ? "allowed" : "FORBIDDEN: \(topic.reason ?? "")"
            lines.append("\(topic.action.rawValue) \(topic.topic): \(verdict)")
        }
        return lines.joined(separator: "\n")
    }

    static func text(_ comparison: PolicyExplanationDiff, subject: String) -> String {
        var lines = ["certificate: \(subject)"]
        if comparison.isEmpty {
            lines.append("no change for this certificate on \(comparison.after.route)")
            return lines.joined(separator: "\n")
        }
        for change in comparison.changes {
            switch (change.before, change.after) {
            case (nil, let added?): lines.append("+ \(change.aspect) \(added)")
            case (let removed?, nil): lines.append("- \(change.aspect) \(removed)")
            default: lines.append("~ \(change.aspect): \(change.before ?? "none") -> \(change.after ?? "none")")
            }
        }
        return lines.joined(separator: "\n")
    }
}
