import ArgumentParser
import Foundation
import NIOCore
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

    /// The class of a failure to connect (``ConnectErrorClass``, as the reconnecting client reads it too) as an
    /// exit status: where it stopped, and the gateway's alert in plain words.
    static func classify(_ error: any Error, target: GatewayURL) -> ConnectFailure {
        let text = String(describing: error)
        let place = "\(target.host):\(target.port)"
        switch ConnectErrorClass(error) {
        case .tlsAlert(let alert):
            return ConnectFailure(exit: .tlsRefused, message: "TLS refused: the gateway sent \(alert): \(alert.explanation)")
        case .upgradeTimedOut:
            return ConnectFailure(exit: .unreachable, message: "\(place): \(text)")
        case .unresolved:
            return ConnectFailure(exit: .unreachable, message: "cannot resolve \(target.host)")
        case .unreachable(let attempts) where !attempts.isEmpty:
            return ConnectFailure(exit: .unreachable, message: "cannot connect to \(place): \(attempts.joined(separator: "; "))")
        case .unreachable, .connectTimedOut:
            return ConnectFailure(exit: .unreachable, message: "cannot connect to \(place): \(text)")
        case .hostnameMismatch:
            return ConnectFailure(
                exit: .tlsRefused,
                message: "TLS refused here: the gateway's certificate does not name \(target.host) (try --server-name): \(text)")
        case .gatewayUntrusted:
            return ConnectFailure(
                exit: .tlsRefused, message: "TLS refused here: the gateway's certificate does not verify against --ca: \(text)")
        case .tlsFailed:
            return ConnectFailure(exit: .tlsRefused, message: "TLS failed: \(text)")
        case .closedWithoutAnswer:
            return ConnectFailure(exit: .tlsRefused, message: "the gateway closed the connection without an HTTP answer: \(text)")
        }
    }
}

/// Prints `failure` and exits with its status.
func finish(_ failure: ConnectFailure) -> Never {
    StandardStreams.error("portcullis connect: \(failure.message)\n")
    Foundation.exit(failure.exit.rawValue)
}

/// The gateway's close as told: its code and reason.
func closeMessage(code: Int?, reason: String) -> String {
    "closed by the gateway: \(code.map(String.init) ?? "no code")\(reason.isEmpty ? "" : " \(reason)")"
}

/// One line for a script: a JSON object with sorted keys.
func printJSONLine(_ object: [String: Any]) {
    guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
    StandardStreams.output(Array(data) + [10])
}

