@testable import PortcullisDoctor
import Testing

/// doctor's reading of the gateway's answer to its upgrade request, without a network: bytes in, an answer or a
/// refusal out, whatever pieces they arrive in.
@Suite("doctor's reading of the upgrade answer")
struct UpgradeAnswerReaderTests {
    static let switching = Array(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc=\r\n\r\n".utf8)
    static let forbidden = Array(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\ncontent-length:  14\r\nDate: Thu, 03 Dec 2026 19:00:00 GMT\r\n\r\nnot permitted\n".utf8)

    /// Reads `bytes` in pieces of `size`, as long as the reader wants more.
    static func read(_ bytes: [UInt8], size: Int) throws(UpgradeAnswerReader.Failure) -> UpgradeAnswerReader {
        var reader = UpgradeAnswerReader()
        var offset = 0
        while reader.wantsMore, offset < bytes.count {
            try reader.append(bytes[offset..<min(offset + size, bytes.count)])
            offset += size
        }
        return reader
    }

    @Test("A 101's head is the answer: status, reason and headers, and nothing waited for after it", arguments: [1, 7, 4096])
    func switchingProtocols(size: Int) throws {
        let reader = try Self.read(Self.switching + [0x81, 0x02, 0x68, 0x69], size: size)
        let answer = try #require(reader.answer)
        #expect(answer.status == 101 && answer.reason == "Switching Protocols")
        #expect(answer.headers.count == 3 && answer.headers[2] == UpgradeAnswer.Header(name: "Sec-WebSocket-Accept", value: "abc="))
        #expect(!reader.wantsMore)
        // What arrived with the head is kept as its body, as it comes: byte by byte nothing, in one piece the frame.
        if size == 1 { #expect(answer.body.isEmpty) }
        if size == 4096 { #expect(answer.body.hasSuffix("hi")) }
    }

    @Test("A refusal's body is waited for as long as its Content-Length says, then trimmed", arguments: [1, 5, 4096])
    func refusal(size: Int) throws {
        let reader = try Self.read(Self.forbidden, size: size)
        let answer = try #require(reader.answer)
        #expect(answer.status == 403 && answer.reason == "Forbidden" && answer.body == "not permitted")
        #expect(answer.value(of: "content-length") == "14" && answer.value(of: "date")?.hasPrefix("Thu") == true)
        #expect(!reader.wantsMore)

        var partial = UpgradeAnswerReader()
        try partial.append(Self.forbidden.dropLast(6))
        #expect(partial.hasHead && partial.wantsMore && partial.answer?.body == "not perm")
    }

    @Test("A body is waited for up to 4 KiB, and kept to that; without a Content-Length, what came along is kept")
    func bodyBounds() throws {
        var large = UpgradeAnswerReader()
        try large.append(Array("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000000\r\n\r\n".utf8))
        try large.append([UInt8](repeating: UInt8(ascii: "x"), count: 4095))
        #expect(large.wantsMore)
        try large.append([UInt8](repeating: UInt8(ascii: "x"), count: 100))
        #expect(!large.wantsMore && large.answer?.body.utf8.count == UpgradeAnswerReader.maximumBodyLength)

        var unsized = UpgradeAnswerReader()
        try unsized.append(Array("HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nno such route".utf8))
        #expect(!unsized.wantsMore && unsized.answer?.body == "no such route" && unsized.answer?.status == 404)
    }

    @Test(
        "What is not an HTTP/1 status line is refused with the head's start",
        arguments: [
            ("SSH-2.0-OpenSSH_9.6\r\n\r\n", "SSH-2.0-OpenSSH_9.6"), ("HTTP/2 200\r\n\r\n", "HTTP/2 200"),
            ("HTTP/1.1 600 Nope\r\n\r\n", "HTTP/1.1 600 Nope"), ("HTTP/1.1\r\n\r\n", "HTTP/1.1"), ("\r\n\r\n", ""),
        ])
    func notHTTP(head: String, start: String) {
        #expect(throws: UpgradeAnswerReader.Failure.notHTTP(start)) { try Self.read(Array(head.utf8), size: 3) }
    }

    @Test("16 KiB without the end of the head are refused, and so is whatever follows")
    func headBound() throws {
        var reader = UpgradeAnswerReader()
        let line = Array("X-Filler: \(String(repeating: "a", count: 1000))\r\n".utf8)
        try reader.append(Array("HTTP/1.1 200 OK\r\n".utf8))
        var failure: UpgradeAnswerReader.Failure?
        while failure == nil {
            do { try reader.append(line) } catch { failure = error }
        }
        #expect(failure == .headTooLong)
        #expect(throws: UpgradeAnswerReader.Failure.headTooLong) { try reader.append(Array("\r\n".utf8)) }
        #expect(reader.answer == nil && failure?.description == "the answer's head is over 16 KiB")

        // Just under the bound is read.
        let filler = String(repeating: "a", count: UpgradeAnswerReader.maximumHeadLength - 40)
        let near = try Self.read(Array("HTTP/1.1 200 OK\r\nX-Filler: \(filler)\r\n\r\n".utf8), size: 1000)
        #expect(near.answer?.status == 200)
    }

    @Test("Header lines without a colon are skipped; names are kept as sent, values trimmed")
    func headerLines() throws {
        let head = try UpgradeAnswerReader.head("HTTP/1.1 401 Unauthorized\r\nno colon here\r\nX-Reason : \t a: b \r\n")
        #expect(head.status == 401 && head.reason == "Unauthorized")
        #expect(head.headers == [UpgradeAnswer.Header(name: "X-Reason ", value: "a: b")])
        #expect(head.value(of: "x-reason") == nil, "a name is compared as sent, blanks included")
    }
}
