/// One problem found while reading a configuration or policy file, located by file and line.
public struct Diagnostic: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    /// 1-based line, or nil when the problem concerns the file as a whole.
    public var line: Int?
    public var message: String

    public init(file: String, line: Int?, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    public var description: String {
        if let line { return "\(file):\(line): \(message)" }
        return "\(file): \(message)"
    }
}

/// Every problem found in a set of files; thrown so that a caller can print them all at once.
public struct DiagnosticsError: Error, Sendable, CustomStringConvertible {
    public var diagnostics: [Diagnostic]

    public init(_ diagnostics: [Diagnostic]) {
        self.diagnostics = diagnostics
    }

    public var description: String {
        diagnostics.map(\.description).joined(separator: "\n")
    }
}
