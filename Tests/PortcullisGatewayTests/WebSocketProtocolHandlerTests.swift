import Foundation
import NIOCore
import NIOEmbedded
import NIOWebSocket
import PortcullisAudit
import PortcullisConfig
import Testing

@testable import PortcullisGateway

/// The session's protocol layer on an `EmbeddedChannel`: what it writes, what it holds, and when it gives up
/// on a client, without sockets. A ``StalledSocket`` plays a client that stopped reading: nothing written
/// towards it is ever taken.
@Suite("WebSocket protocol handler")
struct WebSocketProtocolHandlerTests {
    /// An outbound handler standing in for the socket: writes stay pending until ``release()``.
    final class StalledSocket: ChannelOutboundHandler, @unchecked Sendable {
        typealias OutboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        var held: [(buffer: ByteBuffer, promise: EventLoopPromise<Void>?)] = []
        var context: ChannelHandlerContext?

        func handlerAdded(context: ChannelHandlerContext) { self.context = context }

        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            held.append((Self.unwrapOutboundIn(data), promise))
        }

        func flush(context: ChannelHandlerContext) {}

        var heldBytes: Int { held.reduce(0) { $0 + $1.buffer.readableBytes } }

        /// The frames written so far, in order: opcode and payload (a server's frames are unmasked).
        var frames: [(opcode: UInt8, payload: [UInt8])] {
            var frames: [(UInt8, [UInt8])] = []
            for (buffer, _) in held {
                var bytes = buffer
                while let first = bytes.readInteger(as: UInt8.self), let second = bytes.readInteger(as: UInt8.self) {
                    var length = Int(second & 0x7F)
                    if length == 126 { length = Int(bytes.readInteger(as: UInt16.self)!) }
                    if length == 127 { length = Int(bytes.readInteger(as: UInt64.self)!) }
                    frames.append((first & 0x0F, bytes.readBytes(length: length)!))
                }
            }
            return frames
        }

        /// The socket takes everything: pending writes complete.
        func release() {
            let pending = held
            held = []
            for (buffer, promise) in pending { context?.write(NIOAny(buffer), promise: promise) }
            context?.flush()
        }
    }

    /// An echo session on an embedded channel, behind a stalled socket.
    struct Harness {
        let channel: EmbeddedChannel
        let socket: StalledSocket
        let handler: WebSocketProtocolHandler
        let auditLog: AuditLog
        let auditDirectory: URL

        init(maxOutboundBytes: Int = 4096, closeTimeout: Double = 5) throws {
            auditDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("protocol-\(UUID().uuidString)")
            auditLog = try AuditLog(directory: auditDirectory.path)
            var configuration = GatewayConfiguration(
                tls: .init(certificateChain: "", privateKey: "", clientCA: ""), maxMessageBytes: 1024)
            configuration.maxOutboundBytes = maxOutboundBytes
            configuration.closeTimeout = closeTimeout
            let route = GatewayConfiguration.Route(path: "/v1/echo", kind: .echo)
            channel = EmbeddedChannel()
            let session = SessionContext(
                identity: "demo-device", route: route, configuration: configuration, metrics: GatewayMetrics(),
                broker: Broker(), usage: IdentityUsage(), timers: LoopTimers(eventLoop: channel.eventLoop),
                auditLog: auditLog, recordTemplate: AuditRecord(event: ""))
            socket = StalledSocket()
            handler = WebSocketProtocolHandler(session: session, route: EchoRoute())
            try channel.pipeline.syncOperations.addHandlers([socket, WebSocketFrameEncoder(), handler])
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        }

        /// The client sends `frames` in one read; the event loop then runs what the read scheduled.
        func read(_ frames: [WebSocketFrame]) {
            for frame in frames { channel.pipeline.syncOperations.fireChannelRead(NIOAny(frame)) }
            channel.pipeline.syncOperations.fireChannelReadComplete()
            channel.embeddedEventLoop.run()
        }

        func records() throws -> [AuditRecord] {
            let path = auditLog.path
            _ = auditLog.close()
            defer { try? FileManager.default.removeItem(at: auditDirectory) }
            return try AuditLog.read(path: path)
        }
    }

    static func frame(_ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true) -> WebSocketFrame {
        var data = ByteBuffer(bytes: bytes)
        let key = WebSocketMaskingKey.random()
        data.webSocketMask(key)
        return WebSocketFrame(fin: fin, opcode: opcode, maskKey: key, data: data)
    }

    static let closeOpcode: UInt8 = 0x8
    static let pongOpcode: UInt8 = 0xA

    @Test("A ping flood from a client that does not read: one pong per read once writes wait, then 1013 at max_outbound_bytes")
    func pingFloodIsBounded() throws {
        let harness = try Harness(maxOutboundBytes: 16384)
        var reads = 0
        while harness.channel.isActive, reads < 1000, !harness.handler.isClosing {
            let pings = (0..<50).map { index in Self.frame(.ping, [UInt8(reads & 0xFF), UInt8(index)] + [UInt8](repeating: 0x50, count: 123)) }
            harness.read(pings)
            reads += 1
        }
        // The first read's pings were all answered; after that the socket took nothing, so each read got one
        // pong, for its latest ping, until the bound closed the session.
        let pongs = harness.socket.frames.filter { $0.opcode == Self.pongOpcode }
        #expect(pongs.prefix(50).map { Array($0.payload.prefix(2)) } == (0..<50).map { [0, UInt8($0)] })
        #expect(pongs.count == 50 + reads - 2)
        #expect(pongs.dropFirst(50).allSatisfy { $0.payload[1] == 49 })
        // The bound held: what waits towards the client is at most the limit and one close frame.
        #expect(harness.handler.isClosing)
        #expect(harness.socket.heldBytes <= 16384 + 4)
        #expect(harness.handler.queuedBytes == harness.socket.heldBytes)
        let close = try #require(harness.socket.frames.last)
        #expect(close.opcode == Self.closeOpcode && close.payload.prefix(2) == [0x03, 0xF5])  // 1013
        let records = try harness.records()
        #expect(records.contains { $0.event == "session_slow_consumer" && $0.reason == "slow_consumer" })
    }

    @Test("A socket error is left to SwiftNIO, which closes the channel (no close frame, no TLS goodbye to a dead peer); any other error closes")
    func socketErrorsAreLeftToTheChannel() throws {
        let harness = try Harness()
        harness.channel.pipeline.fireErrorCaught(IOError(errnoCode: ECONNRESET, reason: "read(descriptor:pointer:size:)"))
        harness.channel.embeddedEventLoop.run()
        #expect(harness.channel.isActive, "the handler did not close it: SwiftNIO does, after every read or write error")
        #expect(harness.socket.frames.isEmpty)
        try harness.channel.close().wait()
        let closed = try #require(try harness.records().first { $0.event == "session_closed" })
        #expect(closed.closeCode == 1006)

        struct Unexpected: Error {}
        let other = try Harness()
        other.channel.pipeline.fireErrorCaught(Unexpected())
        other.channel.embeddedEventLoop.run()
        #expect(!other.channel.isActive)
        #expect(try other.records().contains { $0.event == "session_closed" })
    }

    @Test("A close frame with an invalid code is answered with 1002 and the connection dropped once that is written")
    func invalidCloseIsDropped() throws {
        let harness = try Harness()
        harness.read([Self.frame(.connectionClose, [0x03, 0xEC])])  // 1004: reserved
        #expect(harness.socket.frames.last.map { $0.opcode == Self.closeOpcode && $0.payload == [0x03, 0xEA] } == true)
        #expect(harness.channel.isActive)
        harness.socket.release()
        harness.channel.embeddedEventLoop.run()
        #expect(!harness.channel.isActive)
    }

    @Test("A client that stops reading is closed with 1013 once echoes exceed max_outbound_bytes")
    func stalledReaderIsBounded() throws {
        let harness = try Harness(maxOutboundBytes: 4096)
        for _ in 0..<20 { harness.read([Self.frame(.binary, [UInt8](repeating: 7, count: 1000))]) }
        #expect(harness.handler.isClosing)
        #expect(harness.socket.heldBytes <= 4096 + 4)
        #expect(harness.socket.frames.filter { $0.opcode == 0x2 }.count == 4)
        #expect(harness.socket.frames.last?.payload.prefix(2) == [0x03, 0xF5])
    }

    @Test("A client that closes and never reads the answer is dropped after close_timeout, and the record says so")
    func closeDeadline() throws {
        let harness = try Harness(closeTimeout: 5)
        harness.read([Self.frame(.connectionClose, [0x03, 0xE8])])
        // The answer echoes the code; it waits on the stalled socket, so the connection stays open for now.
        #expect(harness.socket.frames.last.map { $0.opcode == Self.closeOpcode && $0.payload == [0x03, 0xE8] } == true)
        #expect(harness.channel.isActive)
        harness.channel.embeddedEventLoop.advanceTime(by: .milliseconds(4900))
        #expect(harness.channel.isActive)
        harness.channel.embeddedEventLoop.advanceTime(by: .milliseconds(200))
        #expect(!harness.channel.isActive)
        let closed = try #require(try harness.records().first { $0.event == "session_closed" })
        #expect(closed.closeCode == 1000)
        #expect(closed.detail?.contains("did not complete the close handshake within 5.0 s") == true)
    }

    @Test("A client's close is answered and the connection closed as soon as the answer is written")
    func clientClose() throws {
        let harness = try Harness()
        harness.read([Self.frame(.connectionClose, [0x0F, 0xA0] + Array("bye".utf8))])
        #expect(harness.channel.isActive)
        harness.socket.release()
        harness.channel.embeddedEventLoop.run()
        #expect(!harness.channel.isActive)
        let closed = try #require(try harness.records().first { $0.event == "session_closed" })
        #expect(closed.closeCode == 4000)
        #expect(closed.detail == nil)
    }

    @Test("A fragmented message with a ping between its fragments: the pong goes out at once, the echo whole")
    func fragmentsAndPing() throws {
        let harness = try Harness()
        harness.read([Self.frame(.text, Array("frag".utf8), fin: false), Self.frame(.ping, [1, 2])])
        #expect(harness.socket.frames.map(\.opcode) == [Self.pongOpcode])
        harness.read([Self.frame(.continuation, Array("mented".utf8))])
        let frames = harness.socket.frames
        #expect(frames.count == 2 && frames[1].opcode == 0x1 && frames[1].payload == Array("fragmented".utf8))
    }
}
