import Crypto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The log's line format and hash chain.
///
/// A line is the record's JSON object with two members added last: `"prev"`, the previous record's hash, and
/// `"hash"`, the SHA-256 of the line's bytes with the `,"hash":"…"` member taken out. So the canonical
/// encoding a hash covers is exactly what is on disk minus that member, and anyone can check a line with
/// `sed 's/,"hash":"[0-9a-f]*"}$/}/' | sha256sum`. Every hash covers `prev`, so each record seals all the
/// records before it; an Ed25519 checkpoint over one hash seals the whole log up to there.
///
/// Written by hand: the format is ours, and the writer, `audit query` and `audit verify` read it straight from
/// the bytes (no JSON parser on the hot path) because the fixed layout allows it.
public enum AuditChain {
    /// The `prev` of the very first record.
    public static let genesis = String(repeating: "0", count: 64)

    static let hashMember = Array(#","hash":""#.utf8)
    static let prevMember = Array(#","prev":""#.utf8)
    static let seqPrefix = Array(#"{"seq":"#.utf8)
    /// `,"hash":"` + 64 hex digits + `"}`.
    static let hashSuffixLength = hashMember.count + 64 + 2
    /// `,"prev":"` + 64 hex digits + `"`.
    static let prevMemberLength = prevMember.count + 64 + 1

    /// Completes a record's `body` (its JSON object without the closing brace) into a line: adds `prev`, computes
    /// the hash, adds it and the closing brace. Returns the hash (hex).
    static func seal(_ body: inout [UInt8], prev: [UInt8]) -> [UInt8] {
        body.append(contentsOf: prevMember)
        body.append(contentsOf: prev)
        body.append(UInt8(ascii: "\""))
        var hasher = SHA256()
        hasher.update(data: body)
        hasher.update(data: [UInt8(ascii: "}")])
        let hash = hex(hasher.finalize())
        body.append(contentsOf: hashMember)
        body.append(contentsOf: hash)
        body.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: "}")])
        return hash
    }

    /// The chain fields of one line (without its newline), or nil when the line does not have the layout.
    public struct Link: Equatable, Sendable {
        public var seq: UInt64
        /// The hash the line claims for itself (hex).
        public var hash: [UInt8]
        /// The hash the line names as its predecessor's (hex).
        public var prev: [UInt8]
        /// Whether `hash` is the SHA-256 of the line without its `hash` member.
        public var intact: Bool
    }

    /// Reads a line's `seq`, `prev` and `hash`; with `checkHash`, recomputes the hash (the expensive part).
    public static func link(of line: UnsafeRawBufferPointer, checkHash: Bool = true) -> Link? {
        let count = line.count
        guard count >= seqPrefix.count + hashSuffixLength + prevMemberLength,
            starts(line, with: seqPrefix, at: 0),
            line[count - 1] == UInt8(ascii: "}"), line[count - 2] == UInt8(ascii: "\""),
            starts(line, with: hashMember, at: count - hashSuffixLength),
            starts(line, with: prevMember, at: count - hashSuffixLength - prevMemberLength),
            line[count - hashSuffixLength - 1] == UInt8(ascii: "\"")
        else { return nil }
        var seq: UInt64 = 0
        var index = seqPrefix.count
        while index < count, let digit = asciiDigit(line[index]) {
            let (times, overflow1) = seq.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(UInt64(digit))
            guard !overflow1, !overflow2 else { return nil }
            seq = sum
            index += 1
        }
        guard index > seqPrefix.count, index < count, line[index] == UInt8(ascii: ",") else { return nil }
        let hashStart = count - 2 - 64
        let prevStart = count - hashSuffixLength - 1 - 64
        let hash = Array(line[hashStart..<(hashStart + 64)])
        let prev = Array(line[prevStart..<(prevStart + 64)])
        guard hash.allSatisfy(isHexDigit), prev.allSatisfy(isHexDigit) else { return nil }
        var intact = true
        if checkHash {
            var hasher = SHA256()
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: line[0..<(count - hashSuffixLength)]))
            hasher.update(data: [UInt8(ascii: "}")])
            intact = hex(hasher.finalize()) == hash
        }
        return Link(seq: seq, hash: hash, prev: prev, intact: intact)
    }

    /// The raw (still JSON-escaped) value of the top-level string member `key`, e.g. `"event"`.
    ///
    /// Sound on our own lines: inside a JSON string every `"` is escaped, so `"key":"` can only occur as a member.
    public static func rawString(_ needle: [UInt8], in line: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        rawString(needle, in: line, from: 0)
    }

    /// ``rawString(_:in:)`` for several members at once, given in the order the writer encodes them
    /// (``AuditRecord``'s key order), each searched for after the one before: one pass over the line.
    public static func rawStrings(_ needles: [[UInt8]], in line: UnsafeRawBufferPointer) -> [UnsafeRawBufferPointer?] {
        var offset = 0
        return needles.map { needle in
            guard let value = rawString(needle, in: line, from: offset) else { return nil }
            offset = line.baseAddress!.distance(to: value.baseAddress!) + value.count
            return value
        }
    }

    private static func rawString(_ needle: [UInt8], in line: UnsafeRawBufferPointer, from offset: Int) -> UnsafeRawBufferPointer? {
        guard offset <= line.count, let found = find(needle, in: UnsafeRawBufferPointer(rebasing: line[offset...])) else {
            return nil
        }
        let start = offset + found
        var index = start + needle.count
        let valueStart = index
        while index < line.count {
            switch line[index] {
            case UInt8(ascii: "\\"): index += 2
            case UInt8(ascii: "\""): return UnsafeRawBufferPointer(rebasing: line[valueStart..<index])
            default: index += 1
            }
        }
        return nil
    }

    /// `"key":"` for ``rawString(_:in:)``.
    public static func memberNeedle(_ key: String) -> [UInt8] {
        Array("\"\(key)\":\"".utf8)
    }

    /// The offset of `needle` in `haystack`, if it occurs.
    public static func find(_ needle: [UInt8], in haystack: UnsafeRawBufferPointer) -> Int? {
        guard !needle.isEmpty, let base = haystack.baseAddress, haystack.count >= needle.count else { return nil }
        return needle.withUnsafeBytes { needleBytes -> Int? in
            guard let hit = memmem(base, haystack.count, needleBytes.baseAddress!, needle.count) else { return nil }
            return base.distance(to: UnsafeRawPointer(hit))
        }
    }

    /// glibc's memmem (two-way search, vectorised), which Swift's Glibc module does not declare because it is a
    /// GNU extension. Every needle here starts with `"`, which JSON is full of, so a first-byte scan is slow.
    private static let memmem: @convention(c) (UnsafeRawPointer, Int, UnsafeRawPointer, Int) -> UnsafeMutableRawPointer? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "memmem") else {
            fatalError("the C library has no memmem")
        }
        return unsafeBitCast(symbol, to: (@convention(c) (UnsafeRawPointer, Int, UnsafeRawPointer, Int) -> UnsafeMutableRawPointer?).self)
    }()

    /// The message a checkpoint signs: the last record it covers, by sequence number and hash.
    /// What a checkpoint of the first format signed: the sequence number and hash, without the time. Only
    /// read, for logs written before the second format.
    public static func checkpointMessage(seq: UInt64, hash: [UInt8]) -> [UInt8] {
        Array("portcullis-audit-checkpoint:\(seq):".utf8) + hash
    }

    /// What a checkpoint signs: which statement it is, the last record it covers and when it was made.
    ///
    /// `kind` separates the statements, so that no signature can stand for another: `record` is an
    /// `audit_checkpoint` record in the log (covering the records before it), `latest` is `checkpoint.json`
    /// while the writer runs (covering the log through that record; re-signed with a fresh time every
    /// checkpoint interval), `closed` is `checkpoint.json` written when the writer stopped.
    public static func checkpointMessage(kind: String, seq: UInt64, hash: [UInt8], time: String) -> [UInt8] {
        Array("portcullis-audit-checkpoint-v2:\(kind):\(seq):\(time):".utf8) + hash
    }

    static func starts(_ line: UnsafeRawBufferPointer, with prefix: [UInt8], at offset: Int) -> Bool {
        guard offset >= 0, offset + prefix.count <= line.count else { return false }
        for (index, byte) in prefix.enumerated() where line[offset + index] != byte { return false }
        return true
    }

    static func hex(_ digest: some Sequence<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in digest {
            out.append(hexDigit(byte >> 4))
            out.append(hexDigit(byte & 0xF))
        }
        return out
    }

    private static func asciiDigit(_ byte: UInt8) -> UInt8? {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") ? byte - UInt8(ascii: "0") : nil
    }

    private static func isHexDigit(_ byte: UInt8) -> Bool {
        (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "f"))
    }
}

/// Calls `body` with each line of `data` (without its newline) and its 1-based number; the last line is
/// `terminated: false` when the data does not end with a newline (a torn write).
public func forEachLine(
    _ data: UnsafeRawBufferPointer, _ body: (_ line: UnsafeRawBufferPointer, _ number: Int, _ terminated: Bool) throws -> Bool
) rethrows {
    guard let base = data.baseAddress else { return }
    var start = 0
    var number = 0
    while start < data.count {
        number += 1
        let rest = data.count - start
        if let newline = memchr(base + start, 0x0A, rest) {
            let end = base.distance(to: UnsafeRawPointer(newline))
            guard try body(UnsafeRawBufferPointer(rebasing: data[start..<end]), number, true) else { return }
            start = end + 1
        } else {
            _ = try body(UnsafeRawBufferPointer(rebasing: data[start..<data.count]), number, false)
            return
        }
    }
}
