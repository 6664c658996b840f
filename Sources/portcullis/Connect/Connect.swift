import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import PortcullisClient

/// `portcullis connect`: a WSS client for a terminal, with a client certificate (like websocat).
struct Connect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connect",
        abstract: "Connect to a gateway with a client certificate: send lines, print messages; or publish and subscribe.",
        discussion: """
            portcullis connect wss://HOST:PORT/PATH --cert C --key K --ca CA sends each line of standard input as a \
            text message and prints each message received; end of input closes the connection (1000). \
            connect sub and connect pub speak the broker protocol (docs/protocol.md).

            \(ConnectExit.table)
            """,
        subcommands: [ConnectLines.self, ConnectSubscribe.self, ConnectPublish.self],
        defaultSubcommand: ConnectLines.self
    )
}

/// The exit status of `connect` by the class of what happened, documented in every `--help`.
enum ConnectExit: Int32 {
    case success = 0
    /// A file could not be read, or the TLS material is unusable.
    case badInput = 1
    /// Name resolution or the TCP connection failed.
    case unreachable = 2
    /// The TLS handshake failed: an alert from the gateway, or its certificate did not verify here.
    case tlsRefused = 3
    /// The gateway answered the upgrade with an HTTP refusal (401, 403, 404, 429, 503...).
    case httpRefused = 4
    /// The gateway ended the session (its close frame, or the connection dropped) before this side did.
    case closedByGateway = 5
    /// The broker answered a subscribe or publish with an error.
    case brokerRefused = 6

    static let table = """
        Exit status: 0 success; 1 a file unreadable or unusable; 2 the gateway unreachable (name resolution, TCP, or no answer within --timeout); \
        3 TLS refused (the gateway's alert, or its certificate did not verify); 4 HTTP refused (the status and the \
        gateway's reason are printed); 5 the gateway ended the session before this side did (its close code and reason \
        are printed); 6 a subscribe \
        or publish refused by the broker; 64 a usage error.
        """
}

/// A failure of `connect`, with the exit status of its class.
struct ConnectFailure: Error {
    var exit: ConnectExit
    var message: String
}

/// What every `connect` command takes.
struct ConnectOptions: ParsableArguments {
    @OptionGroup var device: DeviceOptions

    @Flag(help: "One JSON object per line, for tools.")
    var json = false

    /// Connects and upgrades, or fails with the class of the failure.
    func open() async throws(ConnectFailure) -> WebSocketConnection {
        let target: GatewayURL
        let tls: GatewayClient.TLSOptions
        do {
            target = try device.gateway
            for (file, what) in [(device.cert, "certificate"), (device.key, "key"), (device.ca, "CA bundle")] where !FileManager.default.isReadableFile(atPath: file) {
                throw ConnectFailure(exit: .badInput, message: "cannot read the \(what) \(file)")
            }
            tls = try GatewayClient.TLSOptions(
                certificateChain: device.cert, privateKey: device.key, trustRoots: device.ca, serverName: device.serverName ?? target.host
            ).prepared()
        } catch let failure as ConnectFailure {
            throw failure
        } catch {
            throw ConnectFailure(exit: .badInput, message: "cannot use the TLS material: \(error)")
        }
        let outcome: GatewayClient.Outcome
        do {
            outcome = try await GatewayClient.connect(
                host: target.host, port: target.port, path: target.path, origins: device.origin.map { [$0] } ?? [], tls: tls,
                timeout: .milliseconds(Int64(device.timeout * 1000)))
        } catch {
            throw Self.classify(error, target: target)
        }
        switch outcome {
        case .upgraded(let connection):
            return connection
        case .refused(let status, _, let body):
            let reason = body.trimmingCharacters(in: .whitespacesAndNewlines)
            throw ConnectFailure(exit: .httpRefused, message: "refused: HTTP \(status)\(reason.isEmpty ? "" : ": \(reason)")")
        }
    }

    /// Ends the process (exit 2) unless cancelled within `timeout`: the gateway's acknowledgement is a future
    /// that no cancellation ends.
    func acknowledgementDeadline(_ what: String) -> Task<Void, Never> {
        let seconds = device.timeout
        return Task {
            guard (try? await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))) != nil else { return }
            finish(ConnectFailure(exit: .unreachable, message: "no acknowledgement of the \(what) within \(seconds) s"))
        }
    }

    /// The class of a failure to connect: where it stopped, and the gateway's alert in plain words.
    static func classify(_ error: any Error, target: GatewayURL) -> ConnectFailure {
        let text = String(describing: error)
        if let alert = TLSAlert.named(in: text) {
            return ConnectFailure(exit: .tlsRefused, message: "TLS refused: the gateway sent \(alert): \(alert.explanation)")
        }
        switch error {
        case let timedOut as GatewayClient.TimeoutError:
            return ConnectFailure(exit: .unreachable, message: "\(target.host):\(target.port): \(timedOut)")
        case let connection as NIOConnectionError:
            if connection.connectionErrors.isEmpty {
                return ConnectFailure(exit: .unreachable, message: "cannot resolve \(target.host)")
            }
            let reasons = connection.connectionErrors.map { "\($0.target): \($0.error)" }.joined(separator: "; ")
            return ConnectFailure(exit: .unreachable, message: "cannot connect to \(target.host):\(target.port): \(reasons)")
        case is IOError, is ChannelError:
            return ConnectFailure(exit: .unreachable, message: "cannot connect to \(target.host):\(target.port): \(text)")
        case is NIOSSLExtraError where text.contains("hostname") || text.contains("Hostname"):
            return ConnectFailure(
                exit: .tlsRefused,
                message: "TLS refused here: the gateway's certificate does not name \(target.host) (try --server-name): \(text)")
        case is NIOSSLError, is BoringSSLError, is NIOSSLExtraError:
            if text.contains("CERTIFICATE_VERIFY_FAILED") {
                return ConnectFailure(
                    exit: .tlsRefused, message: "TLS refused here: the gateway's certificate does not verify against --ca: \(text)")
            }
            return ConnectFailure(exit: .tlsRefused, message: "TLS failed: \(text)")
        default:
            // The gateway refuses a certificate in the handshake; with TLS 1.3 that can reach the client as a
            // connection closed before any HTTP answer.
            return ConnectFailure(exit: .tlsRefused, message: "the gateway closed the connection without an HTTP answer: \(text)")
        }
    }
}

/// Prints `failure` and exits with its status.
func finish(_ failure: ConnectFailure) -> Never {
    FileHandle.standardError.write(Data("portcullis connect: \(failure.message)\n".utf8))
    Foundation.exit(failure.exit.rawValue)
}

/// The gateway's close as told: its code and reason.
func closeMessage(code: Int?, reason: String) -> String {
    "closed by the gateway: \(code.map(String.init) ?? "no code")\(reason.isEmpty ? "" : " \(reason)")"
}

/// One line for a script: a JSON object with sorted keys.
func printJSONLine(_ object: [String: Any]) {
    guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
    FileHandle.standardOutput.write(data + Data("\n".utf8))
}

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

/// `connect sub URL TOPIC...`: deliveries printed with their verified sender.
struct ConnectSubscribe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sub",
        abstract: "Subscribe to topic filters and print each delivery with its verified sender.",
        discussion: """
            Each delivery is printed as 'TOPIC FROM PAYLOAD' (PAYLOAD the JSON value as sent, or base64 for a binary \
            one); with --json as {"topic":...,"from":...,"payload":...} or {"topic":...,"from":...,"base64":...}. \
            Runs until the gateway closes the session or the process is interrupted.

            \(ConnectExit.table)
            """)

    @OptionGroup var options: ConnectOptions

    @Argument(help: "Topic filters (+ one level, # the rest).")
    var topics: [String]

    func validate() throws {
        if topics.isEmpty { throw ValidationError("give at least one topic filter") }
    }

    func run() async throws {
        let connection: WebSocketConnection
        do { connection = try await options.open() } catch { finish(error) }
        let session = BrokerSession(connection: connection)
        let deadline = options.acknowledgementDeadline("subscribe")
        defer { deadline.cancel() }
        for topic in topics {
            do {
                try await session.subscribe(topic)
            } catch let error as BrokerError {
                finish(ConnectFailure(exit: .brokerRefused, message: "subscribe \(topic) refused: \(error)"))
            } catch {
                finish(ConnectFailure(exit: .closedByGateway, message: "subscribe \(topic): \(error)"))
            }
            FileHandle.standardError.write(Data("subscribed to \(topic)\n".utf8))
        }
        for await delivery in session.deliveries {
            switch delivery.payload {
            case .json(let bytes):
                let text = String(decoding: bytes, as: UTF8.self)
                if options.json {
                    let value = (try? JSONSerialization.jsonObject(with: Data(bytes), options: .fragmentsAllowed)) ?? text
                    printJSONLine(["topic": delivery.topic, "from": delivery.from, "payload": value])
                } else {
                    say("\(delivery.topic) \(delivery.from) \(text)")
                }
            case .binary(let bytes):
                let encoded = Data(bytes).base64EncodedString()
                if options.json {
                    printJSONLine(["topic": delivery.topic, "from": delivery.from, "base64": encoded])
                } else {
                    say("\(delivery.topic) \(delivery.from) \(encoded)")
                }
            }
        }
        // A subscriber runs until interrupted: any end of the session is the gateway's.
        let close = session.peerCloseFrame
        finish(ConnectFailure(
            exit: .closedByGateway,
            message: close.map { closeMessage(code: $0.code, reason: $0.reason) } ?? "the connection dropped without a close frame"))
    }
}

/// `connect pub URL TOPIC PAYLOAD`: one publish, acknowledged.
struct ConnectPublish: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pub",
        abstract: "Publish one message and wait for the gateway's acknowledgement.",
        discussion: """
            PAYLOAD is a JSON value ({"t":21.5}, 42, "text"); anything that is not one is sent as a JSON string.

            \(ConnectExit.table)
            """)

    @OptionGroup var options: ConnectOptions

    @Argument(help: "The topic.")
    var topic: String

    @Argument(help: "The payload: a JSON value, or text sent as a JSON string.")
    var payload: String

    func run() async throws {
        let connection: WebSocketConnection
        do { connection = try await options.open() } catch { finish(error) }
        let session = BrokerSession(connection: connection)
        let deadline = options.acknowledgementDeadline("publish")
        do {
            defer { deadline.cancel() }
            try await session.publish(topic, json: Self.jsonValue(payload))
        } catch let error as BrokerError {
            finish(ConnectFailure(exit: .brokerRefused, message: "publish to \(topic) refused: \(error)"))
        } catch {
            finish(ConnectFailure(exit: .closedByGateway, message: "publish to \(topic): \(error)"))
        }
        if options.json { printJSONLine(["published": true, "topic": topic]) } else { say("published to \(topic)") }
        await session.close()
    }

    /// `text` when it is one JSON value, else `text` as a JSON string.
    static func jsonValue(_ text: String) -> String {
        if (try? JSONSerialization.jsonObject(with: Data(text.utf8), options: .fragmentsAllowed)) != nil { return text }
        let quoted = try? JSONSerialization.data(withJSONObject: [text], options: .withoutEscapingSlashes)
        return quoted.map { String(decoding: $0.dropFirst().dropLast(), as: UTF8.self) } ?? "\"\""
    }
}
