import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import PortcullisConfig

extension Gateway {
    /// Starts the admin listener of `configuration.admin`: `/healthz`, `/readyz` and `/metrics` over HTTP/1.1,
    /// plain, or with TLS and a required client certificate when `client_ca` is set. Returns the bound address.
    ///
    /// - Throws: ``GatewayStartupError`` naming the address or the file.
    @discardableResult
    public func startAdmin(_ admin: GatewayConfiguration.Admin) async throws -> SocketAddress {
        let sslContext = try admin.clientCA.map { try Self.adminSSLContext(tls: runtime.configuration.tls, clientCA: $0) }
        let bootstrap = ServerBootstrap(group: adminGroup)
            .serverChannelOption(.backlog, value: 16)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    if let sslContext { try pipeline.addHandler(NIOSSLServerHandler(context: sslContext)) }
                    try pipeline.configureHTTPServerPipeline(withErrorHandling: true)
                    try pipeline.addHandler(AdminHandler(gateway: self))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: admin.host, port: admin.port).get()
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw GatewayStartupError(problems: [
                "cannot listen for the admin listener on \(admin.host):\(admin.port): the address is already in use "
                    + "(choose another with --admin-listen HOST:PORT or admin.listen, or turn it off with --admin-listen off)"
            ])
        } catch {
            throw GatewayStartupError(problems: ["cannot listen for the admin listener on \(admin.host):\(admin.port): \(error)"])
        }
        adminChannel.withLockedValue { $0 = channel }
        logger.info(
            "admin listener on \(admin.host):\(channel.localAddress?.port ?? admin.port)",
            metadata: ["admin.tls": "\(sslContext != nil)"])
        return channel.localAddress!
    }

    private static func adminSSLContext(tls: GatewayConfiguration.TLS, clientCA: String) throws -> NIOSSLContext {
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(tls.certificateChain)
            let key = try NIOSSLPrivateKey(file: tls.privateKey, format: .pem)
            var configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            configuration.minimumTLSVersion = .tlsv12
            // BoringSSL's own verification suffices here: a certificate chaining to the admin CA, required.
            configuration.certificateVerification = .noHostnameVerification
            configuration.trustRoots = .file(clientCA)
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw GatewayStartupError(problems: ["admin.client_ca \(clientCA): cannot build the admin TLS context (\(error))"])
        }
    }
}

/// Answers the admin listener's three endpoints; anything else is 404, any method but GET or HEAD 405.
final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let gateway: Gateway
    private var head: HTTPRequestHead?

    init(gateway: Gateway) {
        self.gateway = gateway
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = String(head.uri.prefix { $0 != "?" })
        let (status, contentType, body): (HTTPResponseStatus, String, [UInt8])
        if head.method != .GET && head.method != .HEAD {
            (status, contentType, body) = (.methodNotAllowed, "text/plain", Array("only GET\n".utf8))
        } else {
            switch path {
            case "/healthz":
                (status, contentType, body) = (.ok, "text/plain", Array("ok\n".utf8))
            case "/readyz":
                if let reason = gateway.notReadyReason {
                    (status, contentType, body) = (.serviceUnavailable, "text/plain", Array("not ready: \(reason)\n".utf8))
                } else {
                    (status, contentType, body) = (.ok, "text/plain", Array("ready\n".utf8))
                }
            case "/metrics":
                (status, contentType, body) = (.ok, "text/plain; version=0.0.4; charset=utf-8", gateway.metricsExposition())
            default:
                (status, contentType, body) = (.notFound, "text/plain", Array("no such endpoint: /healthz, /readyz, /metrics\n".utf8))
            }
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Cache-Control", value: "no-store")
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}

@available(*, unavailable)
extension AdminHandler: Sendable {}
