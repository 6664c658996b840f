/// Text with `{name}` variables (`device-{*}`, `devices/{identity}/#`), parsed once and expanded in one pass:
/// a value that itself contains `{…}` (a certificate name is the client's to choose) is never expanded again.
struct Template: Sendable, Hashable {
    enum Part: Sendable, Hashable {
        case text(String)
        case variable(String)
    }

    let parts: [Part]

    /// Splits `text` at each `{name}` whose name is one of `variables`; anything else stays text.
    init(_ text: String, variables: Set<String>) {
        var parts: [Part] = []
        var literal = ""
        var rest = text[...]
        while let open = rest.firstIndex(of: "{") {
            literal += rest[..<open]
            guard let close = rest[open...].firstIndex(of: "}"),
                variables.contains(String(rest[rest.index(after: open)..<close]))
            else {
                literal.append("{")
                rest = rest[rest.index(after: open)...]
                continue
            }
            if !literal.isEmpty { parts.append(.text(literal)) }
            literal = ""
            parts.append(.variable(String(rest[rest.index(after: open)..<close])))
            rest = rest[rest.index(after: close)...]
        }
        literal += rest
        if !literal.isEmpty { parts.append(.text(literal)) }
        self.parts = parts
    }

    var hasVariables: Bool { parts.contains { if case .variable = $0 { true } else { false } } }

    /// The text with every variable replaced by `value(name)`; nil when any of them has no value.
    func expand(_ value: (String) -> String?) -> String? {
        var result = ""
        for part in parts {
            switch part {
            case .text(let text): result += text
            case .variable(let name):
                guard let replacement = value(name) else { return nil }
                result += replacement
            }
        }
        return result
    }
}
