import ArgumentParser
import Foundation
import PortcullisClient

/// `connect URL`: standard input's lines out as text messages, messages in printed.
struct ConnectLines: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lines",
        abstract: "Send each line of standard input as a text message; print each message received (the default).",
        discussion: """
            Text messages are printed as they are, one per line; binary ones as 'binary N bytes: HEX'. With --json each \
            is {"type":"text","text":...} or {"type":"binary","base64":...}. End of input closes with 1000 and waits \
            for the gateway's close.

            \(ConnectExit.table)
            """)

    @OptionGroup var options: ConnectOptions

    func run() async throws {
        let connection: WebSocketConnection
        do { connection = try await options.open() } catch { finish(error) }
        let lines = StandardInputLines()
        let inputEnded = OnceFlag()
        let sender = Task {
            for await line in lines.stream {
                try await connection.send(text: line)
                lines.taken()
            }
            inputEnded.set()
            await connection.close()
        }
        var failure: ConnectFailure?
        var closed = false
        for await message in connection.messages {
            switch message {
            case .text(let text):
                if options.json { printJSONLine(["type": "text", "text": text]) } else { say(text) }
            case .binary(let bytes):
                if options.json {
                    printJSONLine(["type": "binary", "base64": Data(bytes).base64EncodedString()])
                } else {
                    say("binary \(bytes.count) bytes: \(bytes.map { String(format: "%02x", $0) }.joined())")
                }
            case .pong:
                break
            case .close(let code, let reason):
                closed = true
                // The answer to this side's close (end of input) is the normal end; any close the gateway starts
                // is the gateway ending the session, 1000 included.
                if !inputEnded.isSet || code != 1000 {
                    failure = ConnectFailure(exit: .closedByGateway, message: closeMessage(code: code, reason: reason))
                }
            }
        }
        sender.cancel()
        if !closed { failure = ConnectFailure(exit: .closedByGateway, message: "the connection dropped without a close frame") }
        if let failure { finish(failure) }
    }
}

/// Standard input's lines, read on a thread of its own (a blocking read must not hold a concurrency thread),
/// at most `window` ahead of the sends: `cat huge.log | portcullis connect` must not hold the file in memory.
final class StandardInputLines: Sendable {
    let stream: AsyncStream<String>
    private let window: DispatchSemaphore

    init(window: Int = 16) {
        let (stream, continuation) = AsyncStream<String>.makeStream()
        let window = DispatchSemaphore(value: window)
        self.stream = stream
        self.window = window
        let thread = Thread {
            while let line = readLine(strippingNewline: true) {
                window.wait()
                continuation.yield(line)
            }
            continuation.finish()
        }
        thread.start()
    }

    /// A line was sent: the reader may read one more.
    func taken() { window.signal() }
}

/// A flag set once, read from another task.
final class OnceFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}
