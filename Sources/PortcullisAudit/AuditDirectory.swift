import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The files of an audit directory.
///
/// - `audit.jsonl`: the active segment, the one being appended to (and the one `tail -f` follows);
/// - `audit-<first seq, 20 digits>.jsonl`: closed segments, renamed from `audit.jsonl` when it rotates;
/// - `audit.lock`: the lock every writer (gateway, `portcullis pki`) holds while it appends or rotates;
/// - `checkpoint-key.pem` (0600) and `checkpoint-key.pub.pem`: the Ed25519 key that signs checkpoints;
/// - `checkpoint.json`: the latest signed checkpoint, which also shows when the log was cut short.
public struct AuditDirectory: Sendable {
    public let path: String

    public init(path: String) {
        self.path = path
    }

    public var activeSegment: String { "\(path)/audit.jsonl" }
    public var lockFile: String { "\(path)/audit.lock" }
    public var checkpointKey: String { "\(path)/checkpoint-key.pem" }
    public var checkpointPublicKey: String { "\(path)/checkpoint-key.pub.pem" }
    public var latestCheckpoint: String { "\(path)/checkpoint.json" }

    /// The name a segment gets when it is closed.
    public func closedSegment(firstSeq: UInt64) -> String {
        let digits = String(firstSeq)
        return "\(path)/audit-\(String(repeating: "0", count: max(0, 20 - digits.count)))\(digits).jsonl"
    }

    /// Every segment in chain order: the closed ones by their first sequence number, then the active one.
    public func segments() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        let closed = names.compactMap { name -> (UInt64, String)? in
            guard name.hasPrefix("audit-"), name.hasSuffix(".jsonl"),
                let first = UInt64(name.dropFirst(6).dropLast(6))
            else { return nil }
            return (first, "\(path)/\(name)")
        }
        var ordered = closed.sorted { $0.0 < $1.0 }.map(\.1)
        if FileManager.default.fileExists(atPath: activeSegment) { ordered.append(activeSegment) }
        return ordered
    }

    /// The last sealed record of the log: the newest segment with one, read from its end.
    func head() -> (seq: UInt64, hash: [UInt8])? {
        for segment in segments().reversed() {
            if let link = lastLink(in: segment) { return (link.seq, link.hash) }
        }
        return nil
    }

    /// The chain fields of the last complete, well-formed line of `file`.
    func lastLink(in file: String) -> AuditChain.Link? {
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_size > 0 else { return nil }
        // Records are a few hundred bytes; widen the window when one is longer.
        var window = min(Int(status.st_size), 64 * 1024)
        while true {
            var bytes = [UInt8](repeating: 0, count: window)
            let read = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, window, off_t(Int(status.st_size) - window)) }
            guard read == window else { return nil }
            var found: AuditChain.Link?
            var sawStart = false
            bytes.withUnsafeBytes { buffer in
                var lines: [(Int, Int)] = []
                var start = 0
                for index in 0..<buffer.count where buffer[index] == 0x0A {
                    lines.append((start, index))
                    start = index + 1
                }
                // The first line of a window that does not start the file may be cut.
                for (from, to) in lines.reversed() where from > 0 || window == Int(status.st_size) {
                    if let link = AuditChain.link(of: UnsafeRawBufferPointer(rebasing: buffer[from..<to]), checkHash: false) {
                        found = link
                        return
                    }
                }
                sawStart = window == Int(status.st_size)
            }
            if found != nil || sawStart { return found }
            window = min(Int(status.st_size), window * 4)
        }
    }

    /// The first record's `seq` and `time` in `file`.
    func firstRecord(in file: String) -> (seq: UInt64, time: Date?)? {
        guard let handle = FileHandle(forReadingAtPath: file) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: 64 * 1024), let newline = data.firstIndex(of: 0x0A) else {
            return nil
        }
        let line = data[data.startIndex..<newline]
        return line.withUnsafeBytes { bytes -> (UInt64, Date?)? in
            guard let link = AuditChain.link(of: bytes, checkHash: false) else { return nil }
            let time = AuditChain.rawString(AuditChain.memberNeedle("time"), in: bytes)
                .flatMap { AuditTime.parse(String(decoding: $0, as: UTF8.self)) }
            return (link.seq, time)
        }
    }
}

/// The log's timestamps: RFC 3339, UTC, milliseconds (`2026-12-01T22:13:09.123Z`), so that they sort as text.
public enum AuditTime {
    /// Formats `date` (by hand: `Date.formatted` costs microseconds, and the writer formats every record).
    public static func format(_ date: Date) -> String {
        // Years 0000 to 9999, as RFC 3339 writes them: a date from an operator's bound (`--since 1e20s`) is
        // clamped instead of overflowing the conversion to whole seconds.
        let interval = min(max(date.timeIntervalSince1970, -62_167_219_200), 253_402_300_799.9995)
        var seconds = time_t(interval.rounded(.down))
        var millis = Int(((interval - Double(seconds)) * 1000).rounded(.down))
        if millis >= 1000 { millis = 999 }
        if millis < 0 { millis = 0; seconds = time_t(interval) }
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }

    /// Formats timestamps into bytes, reusing the date and time of day while they stay in the same second: the
    /// writer stamps every record, and most of a batch shares its second.
    struct Stamper {
        private var second = Int.min
        private var prefix: [UInt8] = []

        mutating func format(_ date: Date, into out: inout [UInt8]) {
            let interval = date.timeIntervalSince1970
            let whole = Int(interval.rounded(.down))
            if whole != second {
                second = whole
                prefix = Array(AuditTime.format(Date(timeIntervalSince1970: Double(whole))).utf8.dropLast(4))
            }
            let millis = min(999, max(0, Int(((interval - Double(whole)) * 1000).rounded(.down))))
            out.removeAll(keepingCapacity: true)
            out.append(contentsOf: prefix)
            out.append(UInt8(ascii: "0") + UInt8(millis / 100))
            out.append(UInt8(ascii: "0") + UInt8(millis / 10 % 10))
            out.append(UInt8(ascii: "0") + UInt8(millis % 10))
            out.append(UInt8(ascii: "Z"))
        }
    }

    /// Parses an RFC 3339 timestamp, with or without fractional seconds, in UTC or with an offset. The log's own
    /// form (`2026-12-01T22:13:09.123Z`) is read by hand: reports parse one per record.
    public static func parse(_ text: String) -> Date? {
        if let date = parseStamp(Array(text.utf8)) { return date }
        return parseGeneral(text)
    }

    private static func parseStamp(_ bytes: [UInt8]) -> Date? {
        guard bytes.count == 24, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-"),
            bytes[10] == UInt8(ascii: "T"), bytes[13] == UInt8(ascii: ":"), bytes[16] == UInt8(ascii: ":"),
            bytes[19] == UInt8(ascii: "."), bytes[23] == UInt8(ascii: "Z")
        else { return nil }
        func number(_ range: Range<Int>) -> Int32? {
            var value: Int32 = 0
            for index in range {
                let digit = bytes[index] &- UInt8(ascii: "0")
                guard digit < 10 else { return nil }
                value = value * 10 + Int32(digit)
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
            let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
            let millis = number(20..<23), (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60,
            second < 61
        else { return nil }
        var parts = tm()
        parts.tm_year = year - 1900
        parts.tm_mon = month - 1
        parts.tm_mday = day
        parts.tm_hour = hour
        parts.tm_min = minute
        parts.tm_sec = second
        return Date(timeIntervalSince1970: Double(timegm(&parts)) + Double(millis) / 1000)
    }

    private static func parseGeneral(_ text: String) -> Date? {
        let withFraction = ISO8601DateFormatter()
        withFraction.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = withFraction.date(from: text) { return date }
        let plain = ISO8601DateFormatter()
        plain.formatOptions = [.withInternetDateTime]
        return plain.date(from: text)
    }
}
