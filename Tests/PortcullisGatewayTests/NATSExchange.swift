import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A bare NATS client for what a gateway must not accept: it sends `commands` after `CONNECT` as `user`, then a
/// `PING`, and returns what the server answered up to its `PONG` (or what came within 60 s).
func natsExchange(port: Int, user: String, password: String, commands: String) async throws -> String {
    let received = NIOLockedValueBox("")
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(TextCollector(received: received))
            }
        }
        .connect(host: "127.0.0.1", port: port).get()
    let connect = #"CONNECT {"verbose":false,"pedantic":false,"user":"\#(user)","pass":"\#(password)","headers":true,"protocol":1}"#
    try await channel.writeAndFlush(channel.allocator.buffer(string: connect + "\r\n" + commands + "PING\r\n"))
    let deadline = Date().addingTimeInterval(60)
    while Date() < deadline, !received.withLockedValue({ $0.contains("PONG") }), channel.isActive {
        try await Task.sleep(for: .milliseconds(20))
    }
    try? await channel.close()
    return received.withLockedValue { $0 }
}

private final class TextCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let received: NIOLockedValueBox<String>

    init(received: NIOLockedValueBox<String>) {
        self.received = received
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let text = String(buffer: unwrapInboundIn(data))
        received.withLockedValue { $0 += text }
    }
}
