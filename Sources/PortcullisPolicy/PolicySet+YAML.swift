import Foundation
import PortcullisProtocol
import PortcullisYAML

extension PolicySet {
    /// Loads every `*.yaml` / `*.yml` file of `directory` (in name order) into one policy set.
    ///
    /// - Throws: ``DiagnosticsError`` listing every problem in every file (file:line and what is wrong):
    ///   malformed YAML, unknown keys, wrong types, duplicate rule names, invalid origins or fingerprints.
    public static func load(directory: String) throws -> PolicySet {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue
        else {
            throw DiagnosticsError([Diagnostic(file: directory, line: nil, message: "policies directory not found")])
        }
        let names = try fileNames(in: directory)
        var sources: [(file: String, text: String)] = []
        var diagnostics: [Diagnostic] = []
        for name in names {
            let path = (directory as NSString).appendingPathComponent(name)
            do {
                sources.append((path, try String(contentsOfFile: path, encoding: .utf8)))
            } catch {
                diagnostics.append(Diagnostic(file: path, line: nil, message: "cannot read: \(error.localizedDescription)"))
            }
        }
        if sources.isEmpty && diagnostics.isEmpty {
            diagnostics.append(
                Diagnostic(file: directory, line: nil, message: "no policy files (*.yaml); every session would be refused"))
        }
        do {
            let set = try parse(sources)
            if diagnostics.isEmpty { return set }
        } catch let error as DiagnosticsError {
            diagnostics += error.diagnostics
        }
        throw DiagnosticsError(diagnostics)
    }

    /// The policy files of `directory` (`*.yaml`, `*.yml`), in name order: what ``load(directory:)`` reads.
    public static func fileNames(in directory: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory)
            .filter { $0.hasSuffix(".yaml") || $0.hasSuffix(".yml") }
            .sorted()
    }

    /// Parses policy documents given as (file name, text) pairs; the order of mapping rules and rules is the
    /// order of the documents and, within each, of the file.
    public static func parse(_ sources: [(file: String, text: String)]) throws -> PolicySet {
        var mappings: [IdentityMappingRule] = []
        var rules: [PolicyRule] = []
        var diagnostics: [Diagnostic] = []
        var ruleNames: [String: String] = [:]
        for source in sources {
            let reader = YAMLReader(file: source.file)
            defer { diagnostics += reader.diagnostics }
            guard let root = reader.parse(source.text),
                let top = reader.mapping(root, what: "a policy file", allowed: ["identity_mapping", "rules"])
            else { continue }
            if let list = top["identity_mapping"].flatMap({ reader.sequence($0.value, what: "identity_mapping") }) {
                mappings += list.compactMap { readMapping($0, reader: reader) }
            }
            if let list = top["rules"].flatMap({ reader.sequence($0.value, what: "rules") }) {
                for item in list {
                    guard let rule = readRule(item, reader: reader) else { continue }
                    if let previous = ruleNames[rule.name] {
                        reader.report(line: item.line, "rule name '\(rule.name)' is already used at \(previous)")
                        continue
                    }
                    ruleNames[rule.name] = rule.location
                    rules.append(rule)
                }
            }
        }
        guard diagnostics.isEmpty else { throw DiagnosticsError(diagnostics) }
        return PolicySet(mappings: mappings, rules: rules)
    }

    private static func readMapping(_ value: YAMLValue, reader: YAMLReader) -> IdentityMappingRule? {
        guard
            let fields = reader.mapping(
                value, what: "an identity_mapping entry", allowed: ["source", "match", "identity", "groups"])
        else { return nil }
        let before = reader.diagnostics.count
        var rule = IdentityMappingRule(source: .commonName, location: "\(reader.file):\(value.line)")
        if let source = fields["source"] {
            if let text = reader.string(source.value, what: "source") {
                if let parsed = IdentitySource(rawValue: text) {
                    rule.source = parsed
                } else {
                    let known = IdentitySource.allCases.map(\.rawValue).joined(separator: ", ")
                    reader.report(line: source.value.line, "unknown source '\(text)' (one of: \(known))")
                }
            }
        } else {
            reader.report(line: value.line, "an identity_mapping entry needs a 'source'")
        }
        if let match = fields["match"], let text = reader.string(match.value, what: "match") {
            if rule.source == .fingerprint, normalizedFingerprint(text) == nil {
                reader.report(line: match.value.line, "'\(text)' is not a SHA-256 fingerprint (64 hex digits)")
            } else if text.filter({ $0 == "*" }).count > 1 {
                reader.report(line: match.value.line, "match may contain at most one '*'")
            }
            rule.match = text
        } else if rule.source == .fingerprint {
            reader.report(line: value.line, "a fingerprint mapping needs 'match' with the pinned fingerprint")
        }
        if let identity = fields["identity"], let text = reader.string(identity.value, what: "identity") {
            if text.isEmpty { reader.report(line: identity.value.line, "identity must not be empty") }
            if text.contains("{*}") && (rule.match.map { !$0.contains("*") } ?? true) {
                reader.report(line: identity.value.line, "identity uses {*} but match has no '*'")
            }
            rule.identity = text
        } else if rule.source == .fingerprint {
            reader.report(line: value.line, "a fingerprint mapping needs an explicit 'identity'")
        }
        if let groups = fields["groups"], let list = reader.strings(groups.value, what: "groups") {
            rule.groups = list
        }
        return reader.diagnostics.count == before ? rule : nil
    }

    private static func readRule(_ value: YAMLValue, reader: YAMLReader) -> PolicyRule? {
        let allowed: Set<String> = [
            "name", "effect", "identities", "groups", "routes", "origins", "allow_missing_origin", "publish",
            "subscribe", "limits",
        ]
        guard let fields = reader.mapping(value, what: "a rule", allowed: allowed) else { return nil }
        let before = reader.diagnostics.count
        var rule = PolicyRule(name: "", routes: [], location: "\(reader.file):\(value.line)")
        if let name = fields["name"], let text = reader.string(name.value, what: "name"), !text.isEmpty {
            rule.name = text
        } else {
            reader.report(line: value.line, "a rule needs a non-empty 'name'")
        }
        if let effect = fields["effect"], let text = reader.string(effect.value, what: "effect") {
            if let parsed = PolicyRule.Effect(rawValue: text) {
                rule.effect = parsed
            } else {
                reader.report(line: effect.value.line, "effect must be 'allow' or 'deny', not '\(text)'")
            }
        }
        if let identities = fields["identities"], let list = reader.strings(identities.value, what: "identities") {
            for name in list where name != "*" {
                if let problem = Identity.problem(withName: name) {
                    reader.report(line: identities.value.line, "identity \(String(reflecting: name)): \(problem)")
                }
            }
            rule.identities = list
        }
        if let groups = fields["groups"], let list = reader.strings(groups.value, what: "groups") {
            rule.groups = list
        }
        if rule.identities.isEmpty && rule.groups.isEmpty {
            reader.report(line: value.line, "rule '\(rule.name)' names no 'identities' or 'groups'; it would never apply")
        }
        if let routes = fields["routes"], let list = reader.strings(routes.value, what: "routes") {
            for route in list where route != "*" && !route.hasPrefix("/") {
                reader.report(line: routes.value.line, "route '\(route)' must be a path starting with '/' or '*'")
            }
            rule.routes = list
        }
        if rule.routes.isEmpty {
            reader.report(line: value.line, "rule '\(rule.name)' grants no 'routes'")
        }
        if let origins = fields["origins"], let list = reader.strings(origins.value, what: "origins") {
            for entry in list {
                if let problem = OriginMatcher.problem(with: entry) {
                    reader.report(line: origins.value.line, problem)
                }
            }
            rule.origins = OriginMatcher(list)
        }
        if let missing = fields["allow_missing_origin"],
            let flag = reader.bool(missing.value, what: "allow_missing_origin")
        {
            rule.allowMissingOrigin = flag
        }
        for key in ["publish", "subscribe"] {
            guard let field = fields[key], let patterns = reader.strings(field.value, what: key) else { continue }
            for pattern in patterns {
                if let problem = patternProblem(pattern) {
                    reader.report(line: field.value.line, "\(key) pattern '\(pattern)': \(problem)")
                }
            }
            if key == "publish" { rule.publish = patterns } else { rule.subscribe = patterns }
        }
        if let limits = fields["limits"] {
            rule.limits = readLimits(limits.value, reader: reader)
        }
        return reader.diagnostics.count == before ? rule : nil
    }

    private static func patternProblem(_ pattern: String) -> String? {
        let probe = Template(pattern, variables: topicVariables).expand { _ in "x" } ?? pattern
        if probe.contains("{") || probe.contains("}") {
            return "unknown variable (known: \(topicVariables.sorted().map { "{\($0)}" }.joined(separator: ", ")))"
        }
        return Topic.problem(withFilter: probe)
    }

    private static func readLimits(_ value: YAMLValue, reader: YAMLReader) -> Limits {
        var limits = Limits()
        let keys: Set<String> = [
            "sessions", "messages_per_second", "bytes_per_second", "subscriptions", "max_message_bytes",
            "on_rate_limit", "max_violations",
        ]
        guard let fields = reader.mapping(value, what: "limits", allowed: keys) else { return limits }
        func number(_ key: String, _ range: ClosedRange<Int>) -> Int? {
            fields[key].flatMap { reader.integer($0.value, what: "limits.\(key)", range: range) }
        }
        limits.sessions = number("sessions", 1...1_000_000)
        limits.messagesPerSecond = number("messages_per_second", 1...10_000_000).map(Double.init)
        limits.bytesPerSecond = number("bytes_per_second", 1...(1 << 40)).map(Double.init)
        limits.subscriptions = number("subscriptions", 1...1_000_000)
        limits.maxMessageBytes = number("max_message_bytes", 1...(64 << 20))
        limits.maxViolations = number("max_violations", 1...1_000_000) ?? limits.maxViolations
        if let field = fields["on_rate_limit"], let text = reader.string(field.value, what: "limits.on_rate_limit") {
            if let parsed = Limits.OnRateLimit(rawValue: text) {
                limits.onRateLimit = parsed
            } else {
                reader.report(line: field.value.line, "limits.on_rate_limit must be 'drop' or 'close', not '\(text)'")
            }
        }
        return limits
    }
}
