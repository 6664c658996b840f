import Foundation
import Yams

/// A YAML value with the line it came from, read strictly: callers name the keys they accept and
/// everything else becomes a diagnostic. Yams gives us the node tree with marks; the strictness and the
/// collection of every problem (rather than stopping at the first) is ours, as nats-server does.
public struct YAMLValue: Sendable {
    enum Kind: Sendable {
        case scalar(String, quoted: Bool)
        case sequence([YAMLValue])
        case mapping([(key: String, keyLine: Int, value: YAMLValue)])
        case null
    }

    let kind: Kind
    /// 1-based line of the value in its file.
    public let line: Int

    init(kind: Kind, line: Int) {
        self.kind = kind
        self.line = line
    }

    /// Whether this is the unquoted scalar `word` (such as `off`).
    public func isWord(_ word: String) -> Bool {
        if case .scalar(word, quoted: false) = kind { return true }
        return false
    }
}

/// A file being read: its name for diagnostics and the problems found so far.
public final class YAMLReader {
    public let file: String
    public private(set) var diagnostics: [Diagnostic] = []

    public init(file: String) {
        self.file = file
    }

    /// Parses `text`; a syntax error is recorded and nil returned. An empty document reads as an empty mapping.
    public func parse(_ text: String) -> YAMLValue? {
        do {
            // Plain scalars stay untyped strings: the readers decide what each key's value means. Yams's
            // default resolver matched every scalar against its bool, int, float, null and timestamp
            // expressions, over half the time of loading a policy set of 100,000 devices.
            guard let node = try Yams.compose(yaml: text, .basic) else {
                return YAMLValue(kind: .mapping([]), line: 1)
            }
            return convert(node)
        } catch let error as YamlError {
            report(line: Self.line(of: error), "invalid YAML: \(Self.describe(error))")
        } catch {
            report(line: nil, "invalid YAML: \(error)")
        }
        return nil
    }

    public func report(line: Int?, _ message: String) {
        diagnostics.append(Diagnostic(file: file, line: line, message: message))
    }

    private func convert(_ node: Node) -> YAMLValue? {
        let line = (node.mark?.line).map { $0 } ?? 0
        switch node {
        case .scalar(let scalar):
            if scalar.style == .plain, ["", "~", "null", "Null", "NULL"].contains(scalar.string) {
                return YAMLValue(kind: .null, line: line)
            }
            return YAMLValue(kind: .scalar(scalar.string, quoted: scalar.style != .plain), line: line)
        case .sequence(let sequence):
            return YAMLValue(kind: .sequence(sequence.compactMap(convert)), line: line)
        case .mapping(let mapping):
            var pairs: [(key: String, keyLine: Int, value: YAMLValue)] = []
            var seen: Set<String> = []
            for (key, value) in mapping {
                let keyLine = key.mark?.line ?? line
                guard let name = key.string else {
                    report(line: keyLine, "mapping keys must be plain strings")
                    continue
                }
                if !seen.insert(name).inserted {
                    report(line: keyLine, "duplicate key '\(name)'")
                    continue
                }
                if let converted = convert(value) {
                    pairs.append((name, keyLine, converted))
                }
            }
            return YAMLValue(kind: .mapping(pairs), line: line)
        case .alias:
            report(line: line, "YAML aliases are not supported here")
            return nil
        }
    }

    private static func line(of error: YamlError) -> Int? {
        switch error {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _):
            return mark.line
        default:
            return nil
        }
    }

    private static func describe(_ error: YamlError) -> String {
        switch error {
        case .scanner(_, let problem, _, _), .parser(_, let problem, _, _), .composer(_, let problem, _, _):
            return problem
        default:
            return "\(error)"
        }
    }
}

// MARK: - Typed access that reports instead of throwing

extension YAMLReader {
    /// The entries of a mapping, reporting every key not in `allowed` as unknown.
    public func mapping(
        _ value: YAMLValue,
        what: String,
        allowed: Set<String>
    ) -> [String: (value: YAMLValue, line: Int)]? {
        guard case .mapping(let pairs) = value.kind else {
            report(line: value.line, "\(what) must be a mapping")
            return nil
        }
        var result: [String: (value: YAMLValue, line: Int)] = [:]
        for pair in pairs {
            if allowed.contains(pair.key) {
                result[pair.key] = (pair.value, pair.keyLine)
            } else {
                let known = allowed.sorted().joined(separator: ", ")
                report(line: pair.keyLine, "unknown key '\(pair.key)' in \(what) (known keys: \(known))")
            }
        }
        return result
    }

    public func sequence(_ value: YAMLValue, what: String) -> [YAMLValue]? {
        switch value.kind {
        case .sequence(let items): return items
        case .null: return []
        default:
            report(line: value.line, "\(what) must be a list")
            return nil
        }
    }

    public func string(_ value: YAMLValue, what: String) -> String? {
        guard case .scalar(let text, _) = value.kind else {
            report(line: value.line, "\(what) must be a string")
            return nil
        }
        return text
    }

    public func strings(_ value: YAMLValue, what: String) -> [String]? {
        if case .scalar(let text, _) = value.kind { return [text] }
        guard let items = sequence(value, what: what) else { return nil }
        var result: [String] = []
        for item in items {
            guard let text = string(item, what: "each entry of \(what)") else { return nil }
            result.append(text)
        }
        return result
    }

    public func bool(_ value: YAMLValue, what: String) -> Bool? {
        if case .scalar(let text, false) = value.kind {
            switch text.lowercased() {
            case "true", "yes", "on": return true
            case "false", "no", "off": return false
            default: break
            }
        }
        report(line: value.line, "\(what) must be true or false")
        return nil
    }

    public func integer(_ value: YAMLValue, what: String, range: ClosedRange<Int>) -> Int? {
        if case .scalar(let text, _) = value.kind, let number = Int(text), range.contains(number) {
            return number
        }
        report(line: value.line, "\(what) must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        return nil
    }

    /// A duration such as `10s`, `500ms`, `2m` or `1h`, in seconds, within `range`. Every duration has bounds:
    /// the gateway turns them into nanosecond timers, and a value past Int64's range would end the process.
    public func duration(_ value: YAMLValue, what: String, range: ClosedRange<Double>) -> Double? {
        if case .scalar(let text, _) = value.kind, let seconds = parseDuration(text), range.contains(seconds) {
            return seconds
        }
        report(
            line: value.line,
            "\(what) must be a duration from \(formatDuration(range.lowerBound)) to \(formatDuration(range.upperBound)), "
                + "such as 10s, 500ms, 2m or 1h")
        return nil
    }
}

/// `seconds` in the largest unit of `parseDuration` that writes it as a whole number: 0.1 → `100ms`, 600 → `10m`.
public func formatDuration(_ seconds: Double) -> String {
    for (suffix, factor) in [("d", 86400.0), ("h", 3600), ("m", 60), ("s", 1)] where seconds >= factor {
        if let count = Int(exactly: seconds / factor) { return "\(count)\(suffix)" }
    }
    return Int(exactly: seconds * 1000).map { "\($0)ms" } ?? "\(seconds)s"
}

/// Parses `500ms`, `10s`, `2m`, `1h`, `7d` (or a bare number of seconds) into seconds.
public func parseDuration(_ text: String) -> Double? {
    let trimmed = text.trimmingCharacters(in: .whitespaces)
    let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
    for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
        guard let number = Double(trimmed.dropLast(suffix.count)), (number * factor).isFinite else { return nil }
        return number * factor
    }
    return Double(trimmed).flatMap { $0.isFinite ? $0 : nil }
}
