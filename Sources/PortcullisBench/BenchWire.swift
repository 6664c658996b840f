import NIOCore

/// The few frames a load generator needs, in either protocol: the session handshake, a subscription, and a
/// publish whose payload starts with its send time (for publish-to-delivery latency), plus a reader for what
/// the server sends back.
///
/// The NATS side is written by hand: no NATS client is in the package mirror, and the load generator needs
/// only CONNECT, SUB, PUB, PING/PONG and MSG of its text protocol (https://docs.nats.io/reference/reference-protocols/nats-protocol).
struct BenchWire {
    let wire: WireProtocol
    let topic: String

    /// What a client sends right after the upgrade, or nil when it is ready at once. NATS's CONNECT is where
    /// the server completes authentication, so the session counts as admitted only at the PONG that follows.
    var handshake: [UInt8]? {
        switch wire {
        case .portcullis: nil
        case .nats: Array(#"CONNECT {"verbose":false,"pedantic":false,"headers":false,"protocol":1,"name":"portcullis-bench"}\#r\#nPING\#r\#n"#.utf8)
        }
    }

    /// A subscription to the topic, answered by an ack (Portcullis) or the PONG after it (NATS).
    var subscribe: (binary: Bool, bytes: [UInt8]) {
        switch wire {
        case .portcullis: (false, Array(#"{"type":"subscribe","topic":"\#(topic)","id":"s"}"#.utf8))
        case .nats: (true, Array("SUB \(topic) 1\r\nPING\r\n".utf8))
        }
    }

    /// Bytes of a publish frame around its payload: the payload is written between them.
    func publishFraming(payloadSize: Int) -> (prefix: [UInt8], suffix: [UInt8]) {
        switch wire {
        case .portcullis:
            let topicBytes = Array(topic.utf8)
            return ([0x01, UInt8(topicBytes.count >> 8), UInt8(topicBytes.count & 0xFF)] + topicBytes, [])
        case .nats:
            return (Array("PUB \(topic) \(payloadSize)\r\n".utf8), Array("\r\n".utf8))
        }
    }
}

/// What the server said, as far as a load generator cares.
enum BenchEvent: Equatable {
    /// A delivered message, with the send time its payload carries (0 when too short to carry one).
    case delivery(sentAt: UInt64)
    /// An acknowledgement (Portcullis `ack`) or a NATS PONG: the request before it was processed.
    case acknowledged
    /// NATS PING: the server wants a PONG.
    case ping
    case error(String)
}

/// Turns frame payloads into ``BenchEvent``s. A NATS message may span frames (and a frame hold many), so NATS
/// bytes are buffered; a Portcullis frame is always exactly one message.
struct BenchReader {
    let wire: WireProtocol
    private var pending: ByteBuffer?

    init(wire: WireProtocol) {
        self.wire = wire
    }

    mutating func read(binary: Bool, payload: inout ByteBuffer, _ emit: (BenchEvent) -> Void) {
        switch wire {
        case .portcullis: Self.readPortcullis(binary: binary, payload: &payload, emit)
        case .nats: readNATS(&payload, emit)
        }
    }

    private static func readPortcullis(binary: Bool, payload: inout ByteBuffer, _ emit: (BenchEvent) -> Void) {
        if binary {
            // 0x02, topic and sender each prefixed with a 2-byte length, then the payload.
            guard payload.readInteger(as: UInt8.self) == 0x02,
                let topicLength = payload.readInteger(as: UInt16.self), payload.readSlice(length: Int(topicLength)) != nil,
                let fromLength = payload.readInteger(as: UInt16.self), payload.readSlice(length: Int(fromLength)) != nil
            else { return emit(.error("a binary frame that is not a message")) }
            return emit(.delivery(sentAt: payload.readInteger(as: UInt64.self) ?? 0))
        }
        let text = String(buffer: payload)
        if text.hasPrefix(#"{"type":"ack""#) {
            emit(.acknowledged)
        } else if text.hasPrefix(#"{"type":"error""#) {
            emit(.error(text))
        } else if text.hasPrefix(#"{"type":"message""#) {
            emit(.delivery(sentAt: 0))
        }
    }

    private mutating func readNATS(_ payload: inout ByteBuffer, _ emit: (BenchEvent) -> Void) {
        if pending == nil || pending!.readableBytes == 0 {
            pending = payload
        } else {
            pending!.writeBuffer(&payload)
        }
        while var buffer = pending, let lineEnd = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let lineLength = lineEnd - buffer.readerIndex + 1
            guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { break }
            switch first {
            case UInt8(ascii: "M"):
                // MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n
                let line = buffer.getSlice(at: buffer.readerIndex, length: lineLength - 2)!.readableBytesView
                guard let lastSpace = line.lastIndex(of: UInt8(ascii: " ")) else { return emit(.error("bad MSG line")) }
                var size = 0
                for digit in line[(lastSpace + 1)...] { size = size * 10 + Int(digit &- 48) }
                guard buffer.readableBytes >= lineLength + size + 2 else { return }
                buffer.moveReaderIndex(forwardBy: lineLength)
                let sentAt = size >= 8 ? buffer.getInteger(at: buffer.readerIndex, as: UInt64.self) ?? 0 : 0
                buffer.moveReaderIndex(forwardBy: size + 2)
                pending = buffer
                emit(.delivery(sentAt: sentAt))
                continue
            case UInt8(ascii: "P"):
                let isPing = buffer.getInteger(at: buffer.readerIndex + 1, as: UInt8.self) == UInt8(ascii: "I")
                emit(isPing ? .ping : .acknowledged)
            case UInt8(ascii: "-"):
                emit(.error(buffer.getString(at: buffer.readerIndex, length: lineLength - 2) ?? "-ERR"))
            default:
                break  // INFO and +OK
            }
            buffer.moveReaderIndex(forwardBy: lineLength)
            pending = buffer
        }
        if pending?.readableBytes == 0 { pending = nil }
    }
}
