import Foundation

/// Reads the gateway's answer to the upgrade request from its bytes as they arrive: the head (the status line and
/// the header lines, up to the blank line), then a refusal's body, as long as its `Content-Length` says. Pure:
/// ``ConnectionProbe`` receives, this reads; the bytes can come in pieces of any size.
///
/// Bounded: no more bytes are wanted once 16 KiB are held without the end of the head (a read adds at most one
/// TLS record, 16 KiB, to them), and no more than 4 KiB of a body. A 101's head is all that is read: what follows
/// it is left to the frames. (`package`: for the fuzz target, `Fuzz/DoctorProbe`.)
package struct UpgradeAnswerReader {
    /// Bytes held without the end of the head, after which the answer is refused.
    package static let maximumHeadLength = 16_384
    /// The most of a refusal's body that is waited for and kept.
    package static let maximumBodyLength = 4_096

    package enum Failure: Error, Equatable, CustomStringConvertible {
        /// ``maximumHeadLength`` bytes held, and the head has not ended.
        case headTooLong
        /// The status line is not HTTP/1.x's with a status from 100 to 599; the head's first 80 characters.
        case notHTTP(String)

        package var description: String {
            switch self {
            case .headTooLong: "the answer's head is over 16 KiB"
            case .notHTTP(let start): "the answer is not HTTP: \(start)"
            }
        }
    }

    private var received: [UInt8] = []
    /// Why the answer was refused, once it was.
    private var failure: Failure?
    /// The answer without its body, once the head has ended.
    private var head: UpgradeAnswer?
    /// Where the body starts in `received`.
    private var bodyStart = 0
    /// How much of the body is waited for: a refusal's `Content-Length`, at most ``maximumBodyLength``.
    private var expectedBodyLength = 0

    package init() {}

    /// Whether the head has ended (and the answer is known, if perhaps without all of its body).
    package var hasHead: Bool { head != nil }

    /// Whether more bytes are wanted: the head has not ended, or a refusal's body is shorter than its
    /// `Content-Length` (up to 4 KiB).
    package var wantsMore: Bool {
        head == nil || received.count - bodyStart < expectedBodyLength
    }

    /// The answer, once the head has ended: with as much of the body as has arrived.
    package var answer: UpgradeAnswer? {
        guard var answer = head else { return nil }
        let body = received[bodyStart...].prefix(Self.maximumBodyLength)
        answer.body = String(decoding: body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return answer
    }

    /// Takes the next bytes received.
    /// - Throws: ``Failure`` when the head is over 16 KiB or is not HTTP; the reader then refuses whatever follows
    ///   the same way.
    package mutating func append(_ bytes: some Collection<UInt8>) throws(Failure) {
        if let failure { throw failure }
        let searchedUpTo = max(0, received.count - 3)
        received += bytes
        guard head == nil else { return }
        do throws(Failure) {
            let separator: [UInt8] = Array("\r\n\r\n".utf8)
            let candidates = received.indices.dropLast(3).dropFirst(searchedUpTo)
            guard let headEnd = candidates.first(where: { received[$0..<$0 + 4].elementsEqual(separator) }) else {
                if received.count >= Self.maximumHeadLength { throw .headTooLong }
                return
            }
            let answer = try Self.head(String(decoding: received[..<headEnd], as: UTF8.self))
            head = answer
            bodyStart = headEnd + 4
            if answer.status != 101 {
                expectedBodyLength = answer.value(of: "content-length").flatMap { Int($0) }.map { min($0, Self.maximumBodyLength) } ?? 0
            }
        } catch {
            failure = error
            throw error
        }
    }

    /// The status line and header lines of `text`, the head without its blank line.
    package static func head(_ text: String) throws(Failure) -> UpgradeAnswer {
        var lines = text.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ", maxSplits: 2)
        guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/1."), let status = Int(statusLine[1]), (100...599).contains(status)
        else {
            throw .notHTTP(String(text.prefix(80)))
        }
        let headers = lines.compactMap { line -> UpgradeAnswer.Header? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return UpgradeAnswer.Header(
                name: String(line[..<colon]), value: line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        return UpgradeAnswer(status: status, reason: statusLine.count > 2 ? String(statusLine[2]) : "", headers: headers, body: "")
    }
}
