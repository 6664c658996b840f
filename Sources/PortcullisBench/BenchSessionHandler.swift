import Histogram
import NIOCore
import NIOWebSocket
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Shared between a benchmark's sessions and its driver: deliveries per subscriber and the start of the
/// measured window. Atomics, because sessions run on several event loops and the driver reads them all.
final class DeliveryCounter: Sendable {
    let delivered = Atomic<Int>(0)
}

/// When the measured window began (monotonic nanoseconds); deliveries sent before it are warm-up.
final class MeasuredWindow: Sendable {
    let start = Atomic<UInt64>(.max)
}

/// One benchmark session after the upgrade: completes the protocol handshake, answers pings, counts
/// deliveries and records their latency, and writes publishes for a ``PublishDriver``. Everything here runs on
/// the channel's event loop, and nothing on the per-message path goes through an async stream.
final class BenchSessionHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let bench: BenchWire
    private var reader: BenchReader
    /// Promises answered in order by acknowledgements: the handshake's, then each subscription's.
    private var awaitingAcknowledgement: CircularBuffer<EventLoopPromise<Void>> = []
    private let ready: EventLoopPromise<Void>
    private let counter: DeliveryCounter?
    private let measuredFrom: MeasuredWindow?
    private var context: ChannelHandlerContext?
    private var maskGenerator = SystemRandomNumberGenerator()
    private var maskState = UInt64.random(in: 1...UInt64.max)
    /// Scratch space for one publish payload, reused.
    private var payload: [UInt8] = []
    /// The frame encoder's context: bytes written there go straight to TLS (see ``publish``).
    private var encodedFrameWriter: ChannelHandlerContext?
    /// Latency in nanoseconds of deliveries sent after the measured window began.
    private(set) var latency = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    private(set) var firstError: String?
    /// Called when the channel becomes writable again (a publisher waits for it).
    var onWritable: (() -> Void)?

    init(bench: BenchWire, ready: EventLoopPromise<Void>, counter: DeliveryCounter? = nil, measuredFrom: MeasuredWindow? = nil) {
        self.bench = bench
        self.reader = BenchReader(wire: bench.wire)
        self.ready = ready
        self.counter = counter
        self.measuredFrom = measuredFrom
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        encodedFrameWriter = try? context.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self)
        if let handshake = bench.handshake {
            let acknowledged = context.eventLoop.makePromise(of: Void.self)
            awaitingAcknowledgement.append(acknowledged)
            acknowledged.futureResult.assumeIsolated().whenComplete { [self] in settleReady($0) }
            // Not yet: the HTTP decoder is still in the pipeline during this read (see FrameHandlerFactory).
            context.eventLoop.assumeIsolated().execute { [self] in
                if let context = self.context { send(binary: true, bytes: handshake, context: context) }
            }
        } else {
            settleReady(.success(()))
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// Subscribes to the benchmark topic; the future completes when the server confirmed it.
    func subscribe() -> EventLoopFuture<Void> {
        guard let context else { return ready.futureResult.eventLoop.makeFailedFuture(BenchError("the session is closed")) }
        let promise = context.eventLoop.makePromise(of: Void.self)
        awaitingAcknowledgement.append(promise)
        let (binary, bytes) = bench.subscribe
        send(binary: binary, bytes: bytes, context: context)
        return promise.futureResult
    }

    /// Writes `count` publishes with `payloadSize`-byte payloads stamped with the current time: each flushed on
    /// its own (one TLS record and one write each, `perRecord`), or all in one buffer flushed once.
    ///
    /// The frames are encoded here and handed to TLS below the frame encoder: NIO's encoder writes each frame's
    /// header and payload as separate buffers, which TLS seals as separate records, and a load generator that
    /// pays two records per message measures itself rather than the server. Client frames are
    /// masked (RFC 6455 §5.3); the keys come from a fast generator, since unpredictability only matters to
    /// browsers sharing caching proxies.
    func publish(count: Int, framing: (prefix: [UInt8], suffix: [UInt8]), filler: [UInt8], mode: PublishMode) {
        guard let context, let writer = encodedFrameWriter else { return }
        let length = framing.prefix.count + 8 + filler.count + framing.suffix.count
        var buffer = context.channel.allocator.buffer(capacity: (mode == .perRecord ? 1 : count) * (length + 14))
        for _ in 0..<count {
            payload.removeAll(keepingCapacity: true)
            payload.append(contentsOf: framing.prefix)
            withUnsafeBytes(of: BenchClock.now().bigEndian) { payload.append(contentsOf: $0) }
            payload.append(contentsOf: filler)
            payload.append(contentsOf: framing.suffix)
            buffer.writeInteger(UInt8(0x82))  // FIN, binary
            if length < 126 {
                buffer.writeInteger(UInt8(0x80 | length))
            } else if length <= Int(UInt16.max) {
                buffer.writeInteger(UInt8(0x80 | 126))
                buffer.writeInteger(UInt16(length))
            } else {
                buffer.writeInteger(UInt8(0x80 | 127))
                buffer.writeInteger(UInt64(length))
            }
            maskState ^= maskState << 13
            maskState ^= maskState >> 7
            maskState ^= maskState << 17
            let key = UInt32(truncatingIfNeeded: maskState)
            buffer.writeInteger(key)
            for index in payload.indices { payload[index] ^= UInt8(truncatingIfNeeded: key >> (24 - 8 * (index & 3))) }
            buffer.writeBytes(payload)
            if mode == .perRecord {
                writer.writeAndFlush(NIOAny(buffer), promise: nil)
                buffer = context.channel.allocator.buffer(capacity: length + 14)
            }
        }
        if mode == .coalesced { writer.writeAndFlush(NIOAny(buffer), promise: nil) }
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    /// Sends a close frame and closes once it is written.
    func close() {
        guard let context else { return }
        var data = context.channel.allocator.buffer(capacity: 2)
        data.writeInteger(UInt16(1000))
        let channel = context.channel
        context.writeAndFlush(Self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(using: &maskGenerator), data: data)))
            .whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = Self.unwrapInboundIn(data)
        switch frame.opcode {
        case .binary, .text:
            var payload = frame.unmaskedData
            reader.read(binary: frame.opcode == .binary, payload: &payload) { event in handle(event, context: context) }
        case .ping:
            context.writeAndFlush(
                Self.wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(using: &maskGenerator), data: frame.unmaskedData)),
                promise: nil)
        case .connectionClose:
            var payload = frame.unmaskedData
            let code = payload.readInteger(as: UInt16.self).map(String.init) ?? "no code"
            record(error: "the server closed the session (\(code)) \(payload.readString(length: payload.readableBytes) ?? "")")
            context.close(promise: nil)
        default:
            break
        }
    }

    private func handle(_ event: BenchEvent, context: ChannelHandlerContext) {
        switch event {
        case .delivery(let sentAt):
            counter?.delivered.add(1, ordering: .relaxed)
            if let measuredFrom, sentAt != 0, sentAt >= measuredFrom.start.load(ordering: .relaxed) {
                let now = BenchClock.now()
                latency.record(now > sentAt ? now - sentAt : 0)
            }
        case .acknowledged:
            awaitingAcknowledgement.popFirst()?.succeed()
        case .ping:
            send(binary: true, bytes: Array("PONG\r\n".utf8), context: context)
        case .error(let message):
            record(error: message)
            awaitingAcknowledgement.popFirst()?.fail(BenchError(message))
        }
    }

    private var readySettled = false
    private func settleReady(_ result: Result<Void, any Error>) {
        guard !readySettled else { return }
        readySettled = true
        ready.completeWith(result)
    }

    private func record(error: String) {
        if firstError == nil { firstError = error }
    }

    private func send(binary: Bool, bytes: [UInt8], context: ChannelHandlerContext) {
        let frame = WebSocketFrame(
            fin: true, opcode: binary ? .binary : .text, maskKey: .random(using: &maskGenerator),
            data: context.channel.allocator.buffer(bytes: bytes))
        context.writeAndFlush(Self.wrapOutboundOut(frame), promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { onWritable?() }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let error = BenchError(firstError ?? "the connection closed")
        while let promise = awaitingAcknowledgement.popFirst() { promise.fail(error) }
        settleReady(.failure(error))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        record(error: "\(error)")
        context.close(promise: nil)
    }
}

@available(*, unavailable)
extension BenchSessionHandler: Sendable {}

/// A failure a benchmark reports to its user.
public struct BenchError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Monotonic nanoseconds, shared by the publisher that stamps a payload and the subscriber that reads it (both
/// in this process).
enum BenchClock {
    static func now() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
    }
}
