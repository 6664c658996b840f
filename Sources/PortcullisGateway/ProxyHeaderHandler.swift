import NIOCore
import PortcullisAdmission

/// First in a connection's pipeline when `proxy_protocol` is configured, until the connection's first bytes
/// have been read. From a trusted load balancer it reads the PROXY protocol v2 header (``ProxyHeader``) and hands
/// the client it names to admission and the limits; from anyone else it makes sure no such header comes, since
/// only a trusted balancer may say who the client is. Either way it then passes the rest on to TLS and leaves.
final class ProxyHeaderHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    enum Source {
        /// From a trusted balancer: a header is required. The limiter counts the connection in all until the
        /// header names the client.
        case loadBalancer(CountedAddress)
        /// From anyone else: a header is refused.
        case direct(trusted: String)
    }

    private let connection: Connection
    private let source: Source
    /// What has arrived while the header is incomplete: at most its 2,064 bytes plus one read.
    private var received: ByteBuffer?
    private var refused = false

    init(connection: Connection, source: Source) {
        self.connection = connection
        self.source = source
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // What arrives between a refusal and the close it asked for is dropped.
        guard !refused else { return }
        var bytes = unwrapInboundIn(data)
        if var earlier = received {
            earlier.writeBuffer(&bytes)
            bytes = earlier
        }
        received = nil
        let outcome = ProxyHeader.read(bytes.readableBytesView)
        switch (source, outcome) {
        case (_, .needMore):
            received = bytes
        case (.direct, .refused(.missing)):
            passOn(bytes, context: context)
        case (.direct(let trusted), _):
            refuse(
                reason: "proxy_header_untrusted",
                detail: "a PROXY protocol header from \(connection.peer), which proxy_protocol.trusted (\(trusted)) does not list",
                context: context)
        case (.loadBalancer, .refused(let problem)):
            refuse(reason: problem.reason, detail: problem.detail, context: context)
        case (.loadBalancer(let counted), .header(let header)):
            connection.gateway.metrics.proxyHeaderRead(header.command.rawValue)
            bytes.moveReaderIndex(forwardBy: header.length)
            if let client = header.source {
                connection.carry(client.address, port: client.port, channel: context.channel)
                if let refusal = connection.gateway.attribute(
                    counted, to: client.address, under: connection.runtime.configuration)
                {
                    refuse(reason: refusal.reason, detail: refusal.detail, context: context)
                    return
                }
            }
            passOn(bytes, context: context)
        }
    }

    /// Hands the bytes after the header to TLS and leaves the pipeline.
    private func passOn(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        if bytes.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(bytes)) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    private func refuse(reason: String, detail: String, context: ChannelHandlerContext) {
        refused = true
        connection.handle(.refusedBeforeTLS(reason: reason, detail: detail), channel: context.channel)
    }
}

@available(*, unavailable)
extension ProxyHeaderHandler: Sendable {}
