import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket

/// The device side of a Portcullis connection: a client certificate, a TLS connection, a WebSocket upgrade.
///
/// Unlike general WebSocket clients it reports a refused upgrade with its status and reason, which is what
/// an operator needs to see (and the tests assert on).
public enum GatewayClient {
    /// TLS material of a device: its certificate chain and key, and the CA that signs the gateway's certificate.
    public struct TLSOptions: Sendable {
        public var certificateChain: String?
        public var privateKey: String?
        public var trustRoots: String
        public var serverName: String?
        public var minimumVersion: TLSVersion
        public var maximumVersion: TLSVersion?
        /// A context built once by ``prepared()``: reading PEM files and building a context for every
        /// connection would dominate a client that opens thousands of them.
        private var preparedContext: NIOSSLContext?

        /// - Parameters: paths to PEM files; `certificateChain`/`privateKey` nil to connect without a certificate.
        public init(
            certificateChain: String?, privateKey: String?, trustRoots: String, serverName: String? = "localhost",
            minimumVersion: TLSVersion = .tlsv12, maximumVersion: TLSVersion? = nil
        ) {
            self.certificateChain = certificateChain
            self.privateKey = privateKey
            self.trustRoots = trustRoots
            self.serverName = serverName
            self.minimumVersion = minimumVersion
            self.maximumVersion = maximumVersion
        }

        /// Options around a context already built (from certificate and key bytes read once, say), so that what
        /// the connection presents is exactly what the caller read.
        init(context: NIOSSLContext, trustRoots: String, serverName: String?) {
            self.init(certificateChain: nil, privateKey: nil, trustRoots: trustRoots, serverName: serverName)
            preparedContext = context
        }

        /// These options with their TLS context built now, so that connections made with them share it.
        public func prepared() throws -> TLSOptions {
            var options = self
            options.preparedContext = try makeContext()
            return options
        }

        func makeContext() throws -> NIOSSLContext {
            if let preparedContext { return preparedContext }
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.trustRoots = .file(trustRoots)
            configuration.minimumTLSVersion = minimumVersion
            configuration.maximumTLSVersion = maximumVersion
            if let certificateChain, let privateKey {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateChain).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: privateKey, format: .pem))
            }
            return try NIOSSLContext(configuration: configuration)
        }
    }

    /// What the gateway answered to the upgrade request.
    public enum Outcome: Sendable {
        case upgraded(WebSocketConnection)
        /// Refused at the HTTP stage: status code, response headers, and the plain-text reason.
        case refused(status: Int, headers: [(String, String)], body: String)

        public var connection: WebSocketConnection? {
            if case .upgraded(let connection) = self { return connection }
            return nil
        }

        public var status: Int {
            switch self {
            case .upgraded: 101
            case .refused(let status, _, _): status
            }
        }
    }

    /// Makes the handler that takes the place of the message stream after the upgrade: it reads and writes
    /// `WebSocketFrame`s itself (pings included). Called on the connection's event loop. A load generator
    /// uses it to stay off the async stream for every frame. A write from `handlerAdded` must be deferred
    /// with `eventLoop.execute`: the HTTP response decoder, which also inspects writes, leaves the pipeline in
    /// a task already scheduled then.
    public typealias FrameHandlerFactory = @Sendable () -> any ChannelHandler

    public struct ClientError: Error, CustomStringConvertible {
        public var description: String
    }

    /// The gateway did not complete TCP, TLS and the upgrade within the `timeout` given to ``connect``.
    public struct TimeoutError: Error, CustomStringConvertible {
        public var timeout: TimeAmount
        public var description: String {
            "no answer to the upgrade within \(Double(timeout.nanoseconds) / 1e9) s"
        }
    }

    /// Connects to `host:port`, completes TLS, and asks to upgrade `path` to a WebSocket.
    ///
    /// - Parameters:
    ///   - origins: `Origin` header values to send (none for a device; two to test a duplicate header).
    ///   - headers: extra request headers.
    ///   - tls: the client certificate and trust roots; nil for plain `ws://`.
    ///   - localAddress: the address to connect from (a load generator spreads its sessions over loopback
    ///     addresses, since one source address has only some 28,000 ephemeral ports); nil lets the system choose.
    ///   - timeout: how long TCP, TLS and the upgrade may take together before the attempt is abandoned with
    ///     ``TimeoutError``; nil waits as long as the gateway keeps the connection open (and TCP's connect
    ///     timeout).
    /// - Throws: when TCP or TLS fails, or the gateway closes the connection without an HTTP answer (as it
    ///   does when it refuses the certificate).
    public static func connect(
        host: String = "127.0.0.1",
        port: Int,
        path: String,
        origins: [String] = [],
        headers: [(String, String)] = [],
        tls: TLSOptions?,
        answerPings: Bool = true,
        frameHandler: FrameHandlerFactory? = nil,
        localAddress: SocketAddress? = nil,
        timeout: TimeAmount? = nil,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> Outcome {
        // NIO's request encoder writes names and values as given: a CR or LF in one (a certificate name passed on
        // in X-Portcullis-Identity, say) would split the request. Refused before anything is sent.
        for (name, value) in headers + origins.map({ ("Origin", $0) }) {
            guard isHeaderName(name), isHeaderValue(value) else { throw InvalidHeaderError(name: name) }
        }
        var requestHeaders = HTTPHeaders()
        requestHeaders.add(name: "Host", value: "\(tls?.serverName ?? host):\(port)")
        requestHeaders.add(name: "Upgrade", value: "websocket")
        requestHeaders.add(name: "Connection", value: "Upgrade")
        let key = Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        requestHeaders.add(name: "Sec-WebSocket-Key", value: key)
        requestHeaders.add(name: "Sec-WebSocket-Version", value: "13")
        for origin in origins { requestHeaders.add(name: "Origin", value: origin) }
        for (name, value) in headers { requestHeaders.add(name: name, value: value) }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: requestHeaders)
        return try await exchange(
            host: host, port: port, head: head, key: key, tls: tls, answerPings: answerPings, frameHandler: frameHandler,
            localAddress: localAddress, timeout: timeout, group: group)
    }

    /// Sends an arbitrary request head (a plain GET, a POST, a request with broken upgrade headers) and returns
    /// the gateway's answer; for diagnostics and tests of refusals.
    public static func send(
        request head: HTTPRequestHead,
        host: String = "127.0.0.1",
        port: Int,
        tls: TLSOptions,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> Outcome {
        let key = head.headers["Sec-WebSocket-Key"].first ?? ""
        return try await exchange(
            host: host, port: port, head: head, key: key, tls: tls, answerPings: true, frameHandler: nil, localAddress: nil,
            timeout: nil, group: group)
    }

    private static func exchange(
        host: String, port: Int, head: HTTPRequestHead, key: String, tls: TLSOptions?, answerPings: Bool,
        frameHandler: FrameHandlerFactory?, localAddress: SocketAddress?, timeout: TimeAmount?, group: any EventLoopGroup
    ) async throws -> Outcome {
        // nil TLS options: a plain ws:// connection (an upstream backend on a private network).
        let context = try tls?.makeContext()
        // An IP address is not a valid SNI name (RFC 6066 §3) and NIOSSL refuses one; without a name, the
        // server's certificate is checked against the connected address instead.
        let serverName = tls?.serverName.flatMap { (try? SocketAddress(ipAddress: $0, port: 0)) == nil ? $0 : nil }
        var bootstrap = ClientBootstrap(group: group).channelOption(.socketOption(.tcp_nodelay), value: 1)
        if let localAddress { bootstrap = bootstrap.bind(to: localAddress) }
        if let timeout { bootstrap = bootstrap.connectTimeout(timeout) }
        let channel = try await bootstrap.connect(host: host, port: port).get()
        let promise = channel.eventLoop.makePromise(of: Outcome.self)
        if let timeout {
            // A gateway (or a middlebox) that accepts TCP and then says nothing would hold the attempt forever:
            // neither TLS nor the HTTP decoder has a deadline of its own.
            let deadline = channel.eventLoop.scheduleTask(in: timeout) {
                promise.fail(TimeoutError(timeout: timeout))
                channel.close(promise: nil)
            }
            promise.futureResult.whenComplete { _ in deadline.cancel() }
        }
        do {
            try await channel.eventLoop.submit {
                let pipeline = channel.pipeline.syncOperations
                if let context {
                    try pipeline.addHandler(NIOSSLClientHandler(context: context, serverHostname: serverName))
                }
                let encoder = HTTPRequestEncoder()
                let decoder = ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .forwardBytes))
                try pipeline.addHandler(encoder)
                try pipeline.addHandler(decoder)
                try pipeline.addHandler(
                    UpgradeResponseHandler(
                        requestHead: head, key: key, encoder: encoder, decoder: decoder, answerPings: answerPings,
                        frameHandler: frameHandler, promise: promise))
            }.get()
        } catch {
            promise.fail(error)
            channel.close(promise: nil)
        }
        // A connection closed before the handlers above were added (a load balancer that passed on the gateway's
        // refusal at once) tells them nothing: it would wait forever. Once answered, this does nothing.
        channel.closeFuture.whenComplete { _ in
            promise.fail(GatewayClient.ClientError(description: "the gateway closed the connection without answering"))
        }
        return try await promise.futureResult.get()
    }
}

/// Sends the upgrade request and turns the answer into an ``GatewayClient/Outcome``: on 101 it replaces the
/// HTTP codec with WebSocket framing (leftover bytes go straight to the frame decoder); otherwise it collects
/// the refusal's status and body.
final class UpgradeResponseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let requestHead: HTTPRequestHead
    private let key: String
    private let encoder: HTTPRequestEncoder
    private let decoder: ByteToMessageHandler<HTTPResponseDecoder>
    private let promise: EventLoopPromise<GatewayClient.Outcome>
    private let answerPings: Bool
    private let frameHandler: GatewayClient.FrameHandlerFactory?
    private var refusal: (status: Int, headers: [(String, String)], body: ByteBuffer)?
    /// The most of a refusal's body kept, in bytes.
    static let maximumRefusalBody = 4096
    private var done = false
    private var switchingHead: HTTPResponseHead?

    init(
        requestHead: HTTPRequestHead, key: String, encoder: HTTPRequestEncoder,
        decoder: ByteToMessageHandler<HTTPResponseDecoder>, answerPings: Bool,
        frameHandler: GatewayClient.FrameHandlerFactory?, promise: EventLoopPromise<GatewayClient.Outcome>
    ) {
        self.answerPings = answerPings
        self.frameHandler = frameHandler
        self.requestHead = requestHead
        self.key = key
        self.encoder = encoder
        self.decoder = decoder
        self.promise = promise
    }

    func channelActive(context: ChannelHandlerContext) {
        sendRequest(context: context)
        context.fireChannelActive()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { sendRequest(context: context) }
    }

    private var sent = false
    private func sendRequest(context: ChannelHandlerContext) {
        guard !sent else { return }
        sent = true
        context.write(Self.wrapOutboundOut(.head(requestHead)), promise: nil)
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        switch Self.unwrapInboundIn(data) {
        case .head(let head) where head.status == .switchingProtocols:
            // The decoder still emits the response's end; swap the codecs only after it.
            switchingHead = head
        case .head(let head):
            refusal = (Int(head.status.code), head.headers.map { ($0.name, $0.value) }, context.channel.allocator.buffer(capacity: 64))
        case .body(var part):
            // A refusal's reason is a line of text; a gateway (or something posing as one) that sends more is
            // not given the client's memory for it.
            if let stored = refusal?.body.readableBytes, stored < Self.maximumRefusalBody {
                var kept = part.readSlice(length: min(part.readableBytes, Self.maximumRefusalBody - stored)) ?? part
                refusal?.body.writeBuffer(&kept)
            }
        case .end:
            if let switchingHead {
                upgrade(context: context, head: switchingHead)
            } else if let refusal {
                done = true
                promise.succeed(.refused(status: refusal.status, headers: refusal.headers, body: String(buffer: refusal.body)))
                context.close(promise: nil)
            }
        }
    }

    private func upgrade(context: ChannelHandlerContext, head: HTTPResponseHead) {
        done = true
        let expected = WebSocketAccept.value(forKey: key)
        guard head.headers["Sec-WebSocket-Accept"].first == expected else {
            promise.fail(GatewayClient.ClientError(description: "the gateway's Sec-WebSocket-Accept does not match"))
            context.close(promise: nil)
            return
        }
        do {
            let pipeline = context.pipeline.syncOperations
            let (messages, continuation) = AsyncStream<WebSocketMessage>.makeStream()
            let connection = WebSocketConnection(
                channel: context.channel, messages: messages, subprotocol: head.headers["Sec-WebSocket-Protocol"].first)
            try pipeline.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 26)), position: .after(decoder))
            try pipeline.addHandler(WebSocketFrameEncoder())
            pipeline.removeHandler(encoder, promise: nil)
            // The decoder leaves on the next event loop task, handing its leftover bytes to the frame decoder;
            // a task the frame handler schedules now runs after that.
            pipeline.removeHandler(decoder, promise: nil)
            if let frameHandler {
                continuation.finish()
                try pipeline.addHandler(frameHandler())
            } else {
                try pipeline.addHandler(InboundMessageHandler(continuation: continuation, answerPings: answerPings))
            }
            pipeline.removeHandler(context: context, promise: nil)
            promise.succeed(.upgraded(connection))
        } catch {
            promise.fail(error)
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done {
            done = true
            promise.fail(error)
        }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            promise.fail(GatewayClient.ClientError(description: "the gateway closed the connection without answering"))
        }
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension UpgradeResponseHandler: Sendable {}

/// A request header the client refused to send: its name is not an RFC 9110 token, or its value holds a
/// control character other than tab.
public struct InvalidHeaderError: Error, CustomStringConvertible {
    public var name: String
    public var description: String { "invalid HTTP header \(String(reflecting: name)): control characters or an invalid name" }
}

/// RFC 9110 §5.1: a header name is a non-empty token.
func isHeaderName(_ name: String) -> Bool {
    !name.isEmpty && name.utf8.allSatisfy { byte in
        (0x21...0x7E).contains(byte) && !"\"(),/:;<=>?@[\\]{}".utf8.contains(byte)
    }
}

/// RFC 9110 §5.5: a header value has visible characters, spaces and tabs, never CR, LF, NUL or another control.
func isHeaderValue(_ value: String) -> Bool {
    value.utf8.allSatisfy { $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }
}

