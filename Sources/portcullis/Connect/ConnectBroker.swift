import ArgumentParser
import Foundation
import PortcullisClient

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
        for topic in topics {
            do {
                try await session.subscribe(topic)
            } catch let error as BrokerError {
                finish(ConnectFailure(exit: .brokerRefused, message: "subscribe \(topic) refused: \(error)"))
            } catch {
                finish(ConnectFailure(exit: .closedByGateway, message: "subscribe \(topic): \(error)"))
            }
            StandardStreams.error("subscribed to \(topic)\n")
        }
        // Acknowledged: from here the subscriber runs until the gateway or the user ends it.
        deadline.cancel()
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
