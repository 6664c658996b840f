import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOWebSocket
import PortcullisProtocol

/// A message the broker delivered: its topic, the sender's verified identity (set by the gateway), the payload.
public struct Delivery: Sendable, Equatable {
    public var topic: String
    public var from: String
    public var payload: MessagingProtocol.Payload

    /// The payload as text (a JSON value as written, or binary as UTF-8).
    public var text: String {
        switch payload {
        case .json(let bytes), .binary(let bytes): String(decoding: bytes, as: UTF8.self)
        }
    }
}

/// An `error` frame from the gateway: a stable code (`forbidden`, `rate_limited`, `invalid_topic`, ...) and
/// a message.
public struct BrokerError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: String
    public var message: String
    public var description: String { "\(code): \(message)" }
}

/// A device's publish/subscribe session on a `broker` route (`docs/protocol.md`), with an async API:
/// `subscribe` and `publish` return once the gateway acknowledged them (or throw its `BrokerError`), and
/// deliveries arrive on ``deliveries``.
public final class BrokerSession: Sendable {
    public let connection: WebSocketConnection
    /// Messages for this session's subscriptions, in arrival order.
    public let deliveries: AsyncStream<Delivery>
    /// Errors the gateway sent without an id (a binary publish refused, for example).
    public let errors: AsyncStream<BrokerError>
    /// What the gateway told the session unasked (`certificate_expiring`), as code and message.
    public let notices: AsyncStream<BrokerError>

    private struct State {
        var nextID = 1
        var pending: [String: EventLoopPromise<Void>] = [:]
        var closed = false
        var closeFrame: CloseFrame?
        var lastReceived = ContinuousClock.now
    }

    /// A close frame: its status code (nil when it carried none) and reason.
    public struct CloseFrame: Sendable, Equatable {
        public var code: Int?
        public var reason: String
    }

    /// The close frame the gateway sent, once it has (1008 with `certificate_revoked`, 1001 at shutdown, ...);
    /// nil while the session is open, and when the connection ended without one.
    public var peerCloseFrame: CloseFrame? { state.withLockedValue { $0.closeFrame } }

    /// When the last frame of any kind (pongs included) arrived: a client that pings can tell a silent gateway
    /// from a quiet one.
    public var lastReceived: ContinuousClock.Instant { state.withLockedValue { $0.lastReceived } }

    private let state = NIOLockedValueBox(State())
    private let deliveriesContinuation: AsyncStream<Delivery>.Continuation
    private let errorsContinuation: AsyncStream<BrokerError>.Continuation
    private let noticesContinuation: AsyncStream<BrokerError>.Continuation

    /// Connects and upgrades; throws ``GatewayClient/ClientError`` with the status and reason when refused.
    public static func connect(
        host: String = "127.0.0.1", port: Int, path: String = "/v1/messages", origins: [String] = [],
        tls: GatewayClient.TLSOptions, localAddress: SocketAddress? = nil,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> BrokerSession {
        switch try await GatewayClient.connect(
            host: host, port: port, path: path, origins: origins, tls: tls, localAddress: localAddress, group: group)
        {
        case .upgraded(let connection):
            return BrokerSession(connection: connection)
        case .refused(let status, _, let body):
            throw GatewayClient.ClientError(description: "refused with \(status): \(body.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    public init(connection: WebSocketConnection) {
        self.connection = connection
        (deliveries, deliveriesContinuation) = AsyncStream<Delivery>.makeStream()
        (errors, errorsContinuation) = AsyncStream<BrokerError>.makeStream()
        (notices, noticesContinuation) = AsyncStream<BrokerError>.makeStream()
        Task { [self] in await pump() }
    }

    public func subscribe(_ filter: String) async throws {
        try await request { id in .subscribe(topic: filter, id: id) }
    }

    public func unsubscribe(_ filter: String) async throws {
        try await request { id in .unsubscribe(topic: filter, id: id) }
    }

    /// Publishes a JSON value (given as JSON text, e.g. `{"t":21.5}` or `"hello"`) and waits for the ack.
    public func publish(_ topic: String, json: String) async throws {
        try await request { id in .publish(topic: topic, payload: .json(Array(json.utf8)), id: id) }
    }

    /// Publishes without waiting for an acknowledgement (the gateway still answers errors).
    public func publishWithoutAck(_ topic: String, json: String) async throws {
        try await send(.publish(topic: topic, payload: .json(Array(json.utf8)), id: nil))
    }

    /// Publishes bytes in the binary envelope (no base64, no ack).
    public func publish(_ topic: String, binary: [UInt8]) async throws {
        try await send(.publish(topic: topic, payload: .binary(binary), id: nil))
    }

    public func close() async {
        await connection.close()
    }

    private func send(_ request: MessagingProtocol.Request) async throws {
        let (binary, bytes) = MessagingProtocol.encode(request)
        if binary { try await connection.send(binary: bytes) } else { try await connection.send(text: String(decoding: bytes, as: UTF8.self)) }
    }

    /// Sends a request with a fresh id and waits for the gateway's `ack` (or its `error`).
    private func request(_ make: ([UInt8]) -> MessagingProtocol.Request) async throws {
        let promise = connection.channel.eventLoop.makePromise(of: Void.self)
        let key = state.withLockedValue { state -> String? in
            guard !state.closed else { return nil }
            defer { state.nextID += 1 }
            state.pending[String(state.nextID)] = promise
            return String(state.nextID)
        }
        guard let key else {
            promise.fail(GatewayClient.ClientError(description: "the session is closed"))
            return try await promise.futureResult.get()
        }
        do {
            try await send(make(Array("\"\(key)\"".utf8)))
        } catch {
            state.withLockedValue { $0.pending.removeValue(forKey: key) }?.fail(error)
        }
        try await promise.futureResult.get()
    }

    private func pump() async {
        for await message in connection.messages {
            state.withLockedValue { $0.lastReceived = .now }
            let event: MessagingProtocol.Event?
            switch message {
            case .text(let text):
                event = Array(text.utf8).withUnsafeBytes { MessagingProtocol.decodeEvent(binary: false, bytes: $0) }
            case .binary(let bytes):
                event = bytes.withUnsafeBytes { MessagingProtocol.decodeEvent(binary: true, bytes: $0) }
            case .close(let code, let reason):
                state.withLockedValue { $0.closeFrame = CloseFrame(code: code, reason: reason) }
                event = nil
            case .pong:
                event = nil
            }
            switch event {
            case .message(let topic, let from, let payload):
                deliveriesContinuation.yield(Delivery(topic: topic, from: from, payload: payload))
            case .ack(let id):
                resume(id: id, with: nil)
            case .error(let id?, let code, let message):
                resume(id: id, with: BrokerError(code: code, message: message))
            case .error(nil, let code, let message):
                errorsContinuation.yield(BrokerError(code: code, message: message))
            case .notice(let code, let message):
                noticesContinuation.yield(BrokerError(code: code, message: message))
            case nil:
                break
            }
        }
        let pending = state.withLockedValue { state in
            state.closed = true
            defer { state.pending = [:] }
            return state.pending
        }
        for promise in pending.values {
            promise.fail(GatewayClient.ClientError(description: "the connection closed"))
        }
        deliveriesContinuation.finish()
        errorsContinuation.finish()
        noticesContinuation.finish()
    }

    private func resume(id: [UInt8], with error: BrokerError?) {
        let key = String(decoding: id, as: UTF8.self).trimmingCharacters(in: CharacterSet(charactersIn: "\""))
        guard let promise = state.withLockedValue({ $0.pending.removeValue(forKey: key) }) else { return }
        if let error { promise.fail(error) } else { promise.succeed() }
    }
}
