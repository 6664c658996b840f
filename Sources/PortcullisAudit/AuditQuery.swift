import Foundation

/// Which records `audit query`, `audit tail` and `audit stats` show. Within one field any of the values
/// matches; all the fields given must match.
///
/// Matching works on the raw line (the writer's fixed encoding makes `"identity":"x"` mean exactly that), so
/// scanning a million records needs no JSON parser.
public struct AuditFilter: Sendable {
    /// Inclusive lower bound, as an ``AuditTime`` string (timestamps sort as text).
    public var since: String?
    /// Exclusive upper bound.
    public var until: String?
    /// Needles per field; a record matches a field when it contains one of them.
    private var fields: [[[UInt8]]] = []

    public init() {}

    /// Adds an exact match on a string member, e.g. `("identity", ["device-1"])`. An empty list adds nothing.
    public mutating func require(_ key: String, anyOf values: [String]) {
        guard !values.isEmpty else { return }
        fields.append(values.map { Array("\"\(key)\":".utf8) + Array(jsonString($0).utf8) })
    }

    /// Adds a match on the peer: `host:port` exactly, or a bare address with any port (`[v6]` or `v6`).
    public mutating func requirePeer(anyOf values: [String]) {
        guard !values.isEmpty else { return }
        fields.append(values.map { value in
            let prefix = Array("\"peer\":\"".utf8)
            let bracketed = value.hasPrefix("[")
            let hasPort = bracketed ? value.contains("]:") : value.filter { $0 == ":" }.count == 1
            if hasPort { return prefix + Array(value.utf8) + [UInt8(ascii: "\"")] }
            let host = value.contains(":") && !bracketed ? "[\(value)]" : value
            return prefix + Array(host.utf8) + [UInt8(ascii: ":")]
        })
    }

    /// Whether the sealed line `line` passes.
    public func matches(_ line: UnsafeRawBufferPointer) -> Bool {
        if since != nil || until != nil {
            guard let time = AuditChain.rawString(AuditChain.memberNeedle("time"), in: line) else { return false }
            let text = String(decoding: time, as: UTF8.self)
            if let since, text < since { return false }
            if let until, text >= until { return false }
        }
        for needles in fields where !needles.contains(where: { AuditChain.find($0, in: line) != nil }) {
            return false
        }
        return true
    }
}

/// Reads an audit directory's segments in order.
public struct AuditReader: Sendable {
    public let layout: AuditDirectory

    public init(directory: String) {
        layout = AuditDirectory(path: directory)
    }

    /// Calls `body` with every complete line that passes `filter`, oldest first, until it returns false. Segments
    /// that lie wholly outside the filter's time range are not read.
    public func forEachLine(
        matching filter: AuditFilter, _ body: (UnsafeRawBufferPointer) throws -> Bool
    ) throws {
        let segments = layout.segments()
        let starts = filter.since != nil || filter.until != nil
            ? segments.map { layout.firstRecord(in: $0)?.time.map(AuditTime.format) } : []
        for (index, segment) in segments.enumerated() {
            if let until = filter.until, let start = starts[index], start >= until { break }
            if let since = filter.since, index + 1 < segments.count, let next = starts[index + 1], next <= since {
                continue
            }
            let data = try Data(contentsOf: URL(fileURLWithPath: segment), options: .alwaysMapped)
            var keepGoing = true
            try data.withUnsafeBytes { bytes in
                try PortcullisAudit.forEachLine(bytes) { line, _, terminated in
                    guard terminated else { return false }
                    if filter.matches(line) { keepGoing = try body(line) }
                    return keepGoing
                }
            }
            if !keepGoing { return }
        }
    }

    /// Decodes one line.
    public static func decode(_ line: UnsafeRawBufferPointer) -> AuditRecord? {
        try? JSONDecoder().decode(AuditRecord.self, from: Data(line))
    }
}
