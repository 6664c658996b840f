import NIOCore
import NIOWebSocket

/// A whole message received from the client: one data frame or the reassembly of a fragmented sequence, its
/// text already validated as UTF-8.
///
/// A single-frame message arrives still masked: unmasking it into a buffer of its own cost an allocation and
/// a copy per message, a tenth of the 1→1 message rate per CPU-second (measured against the build before
/// this layer). A route that builds its own buffer anyway (the broker's delivery) unmasks straight into it
/// with ``writeUnmasked(from:into:)``; the others take ``payload``.
struct InboundMessage: Equatable {
    var binary: Bool
    /// The payload as it arrived: masked with `maskKey` when that is set.
    var data: ByteBuffer
    var maskKey: WebSocketMaskingKey? { didSet { maskWord = maskKey.map(WebSocketProtocolStateMachine.maskWord) } }
    private var maskWord: UInt32?

    init(binary: Bool, data: ByteBuffer, maskKey: WebSocketMaskingKey? = nil) {
        self.binary = binary
        self.data = data
        self.maskKey = maskKey
        self.maskWord = maskKey.map(WebSocketProtocolStateMachine.maskWord)
    }

    /// The payload's length.
    var count: Int { data.readableBytes }

    /// The unmasked payload (a copy when the message arrived masked).
    var payload: ByteBuffer {
        maskKey.map { WebSocketProtocolStateMachine.unmasked(data, key: $0) } ?? data
    }

    /// Calls `body` with the unmasked bytes at `range` of the payload (which must lie within it).
    func withUnmaskedBytes<Result>(_ range: Range<Int>, _ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        data.withUnsafeReadableBytes { bytes in
            let slice = UnsafeRawBufferPointer(rebasing: bytes[range])
            guard let maskWord else { return body(slice) }
            return withUnsafeTemporaryAllocation(byteCount: range.count, alignment: 8) { copy in
                copy.copyMemory(from: slice)
                WebSocketProtocolStateMachine.unmask(copy, word: maskWord, offset: range.lowerBound)
                return body(UnsafeRawBufferPointer(copy))
            }
        }
    }

    /// Appends the unmasked payload from `offset` on to `buffer`.
    func writeUnmasked(from offset: Int, into buffer: inout ByteBuffer) {
        let start = buffer.writerIndex - buffer.readerIndex
        buffer.writeImmutableBuffer(data.getSlice(at: data.readerIndex + offset, length: count - offset)!)
        guard let maskWord else { return }
        buffer.withUnsafeMutableReadableBytes { bytes in
            WebSocketProtocolStateMachine.unmask(UnsafeMutableRawBufferPointer(rebasing: bytes[start...]), word: maskWord, offset: offset)
        }
    }

    /// Equal when kind and unmasked payload are: how tests compare what was delivered.
    static func == (lhs: InboundMessage, rhs: InboundMessage) -> Bool {
        lhs.binary == rhs.binary && lhs.payload == rhs.payload
    }
}

/// RFC 6455 for the server's side of an open connection: which frames are acceptable, how fragments become
/// messages, what a control frame asks for, and where the close handshake stands. Events in, actions out:
/// no sockets, no event loop, no clock of its own (time is passed in), so every transition is tested as a
/// pure function. ``WebSocketProtocolHandler`` translates between it and the channel.
struct WebSocketProtocolStateMachine {
    /// The limits that come from configuration.
    struct Limits: Sendable {
        /// Largest reassembled message (and frame).
        var maxMessageBytes: Int
    }

    /// Why the connection is being failed: the close code sent and the stable reason audited.
    struct Failure: Equatable, Sendable {
        var code: WebSocketErrorCode
        var reason: String

        static let protocolError = Failure(code: .protocolError, reason: "protocol_error")
        static let tooLarge = Failure(code: .messageTooLarge, reason: "message_too_large")
        static let invalidUTF8 = Failure(code: .dataInconsistentWithMessage, reason: "invalid_utf8")
        static let invalidCompressedData = Failure(code: .dataInconsistentWithMessage, reason: "invalid_compressed_data")
    }

    /// What the handler must do after a frame.
    enum Action: Equatable {
        case none
        /// Hand a whole message to the route.
        case deliver(InboundMessage)
        /// Answer a ping with a pong carrying its payload.
        case answerPing(ByteBuffer)
        /// Send a close frame with this code, then drop the connection once the peer answers or the close
        /// deadline passes.
        case fail(Failure)
        /// Nothing more can be read (the peer's close frame was invalid, or the decoder gave up): send a close
        /// frame with this code and drop the connection once it is written.
        case failAndDrop(Failure)
        /// The peer started the close handshake: answer with a close frame carrying `code` (none when the
        /// peer sent none), then drop the connection once it is written or the close deadline passes.
        case answerClose(code: WebSocketErrorCode?)
        /// The peer answered our close frame: drop the connection.
        case closeHandshakeCompleted

        /// A delivery of an unmasked payload.
        static func deliver(binary: Bool, payload: ByteBuffer) -> Action {
            .deliver(InboundMessage(binary: binary, data: payload))
        }
    }

    private enum CloseState: Equatable {
        case open
        /// We sent a close frame and wait for the peer's.
        case sent
        /// The peer's close frame arrived (whether or not we had sent ours): nothing more is read.
        case received
    }

    private let limits: Limits
    /// permessage-deflate, when the upgrade negotiated it.
    private let deflater: MessageDeflater?
    private var closeState = CloseState.open
    /// A fragmented message being reassembled; a compressed one is validated once inflated.
    private var partial: (binary: Bool, compressed: Bool, payload: ByteBuffer, text: UTF8Validator)?
    /// The payload of the heartbeat ping in flight: only a pong carrying it answers it.
    private var outstandingPing: (payload: UInt64, sentAt: NIODeadline)?
    private var pingsSent: UInt64 = 0

    /// The close code sent or received first, and the reason of a close we started (for the audit record).
    private(set) var closeCode: UInt16?
    private(set) var closeReason: String?

    init(limits: Limits, deflater: MessageDeflater? = nil) {
        self.limits = limits
        self.deflater = deflater
    }

    /// Whether a close frame has been sent or received: data frames are no longer sent.
    var isClosing: Bool { closeState != .open }

    // MARK: Inbound frames

    /// The client sent `frame`.
    mutating func received(_ frame: WebSocketFrame) -> Action {
        guard closeState != .received else { return .none }
        // RFC 6455 §5.1: a server fails the connection on an unmasked frame; §5.2: no RSV bit without an
        // extension that defines it (none is negotiated).
        guard let key = frame.maskKey else { return fail(Failure(code: .protocolError, reason: "unmasked_frame")) }
        // RSV1 marks the first frame of a compressed message, and only when permessage-deflate was negotiated
        // (RFC 7692 §6); RSV2 and RSV3 belong to no extension the gateway speaks.
        let compressed = frame.rsv1 && deflater != nil && (frame.opcode == .text || frame.opcode == .binary)
        guard !frame.rsv1 || compressed, !frame.rsv2, !frame.rsv3 else {
            return fail(Failure(code: .protocolError, reason: "reserved_bits_set"))
        }
        switch frame.opcode {
        case .text, .binary:
            guard partial == nil else { return fail(Failure(code: .protocolError, reason: "fragment_expected")) }
            let binary = frame.opcode == .binary
            if frame.fin, !compressed {
                // The common case: handed on still masked (see ``InboundMessage``).
                guard binary || Self.isValidUTF8(masked: frame.data, key: key) else { return fail(.invalidUTF8) }
                return closeState == .open ? .deliver(InboundMessage(binary: binary, data: frame.data, maskKey: key)) : .none
            }
            let payload = Self.unmasked(frame.data, key: key)
            if frame.fin { return complete(binary: binary, compressed: compressed, payload: payload, text: nil) }
            partial = (binary, compressed, payload, UTF8Validator())
            return binary || compressed ? .none : validateText(at: payload.readerIndex)
        case .continuation:
            guard partial != nil else { return fail(Failure(code: .protocolError, reason: "unexpected_continuation")) }
            let piece = Self.unmasked(frame.data, key: key)
            guard partial!.payload.readableBytes + piece.readableBytes <= limits.maxMessageBytes else {
                partial = nil
                return fail(.tooLarge)
            }
            let start = partial!.payload.writerIndex
            partial!.payload.writeImmutableBuffer(piece)
            if !partial!.binary, !partial!.compressed, case .fail(let failure) = validateText(at: start) {
                return .fail(failure)
            }
            guard frame.fin, let (binary, compressed, payload, text) = partial else { return .none }
            partial = nil
            return complete(binary: binary, compressed: compressed, payload: payload, text: text)
        case .ping:
            return closeState == .open ? .answerPing(Self.unmasked(frame.data, key: key)) : .none
        case .pong:
            var payload = Self.unmasked(frame.data, key: key)
            if let outstanding = outstandingPing, payload.readableBytes == 8,
                payload.readInteger(as: UInt64.self) == outstanding.payload
            {
                outstandingPing = nil
            }
            return .none
        case .connectionClose:
            return receivedClose(Self.unmasked(frame.data, key: key))
        default:
            return fail(Failure(code: .protocolError, reason: "unknown_opcode"))
        }
    }

    /// The last frame of a message arrived: inflate it if it was compressed, finish checking its text, and
    /// hand it on. `text` is the validation of an uncompressed fragmented text message so far.
    private mutating func complete(binary: Bool, compressed: Bool, payload: ByteBuffer, text: UTF8Validator?) -> Action {
        var payload = payload
        if compressed, let deflater {
            do {
                payload = try deflater.inflate(payload, maxBytes: limits.maxMessageBytes, allocator: ByteBufferAllocator())
            } catch .tooLarge {
                return fail(.tooLarge)
            } catch {
                return fail(.invalidCompressedData)
            }
        }
        if !binary {
            if let text, !compressed {
                guard text.isAtCharacterBoundary else { return fail(.invalidUTF8) }
            } else if !Self.isValidUTF8(payload) {
                return fail(.invalidUTF8)
            }
        }
        return closeState == .open ? .deliver(InboundMessage(binary: binary, data: payload)) : .none
    }

    /// The frame decoder refused the bytes (a frame over the size limit, a fragmented or oversized control frame).
    /// Nothing after them can be read, the peer's close frame included: the connection is dropped once the
    /// close frame is written.
    mutating func decodingFailed(_ error: any Error) -> Action {
        guard closeState == .open else { return .closeHandshakeCompleted }
        let failure: Failure
        if case NIOWebSocketError.invalidFrameLength = error { failure = .tooLarge } else { failure = .protocolError }
        partial = nil
        _ = startClose(code: failure.code, reason: failure.reason)
        closeState = .received
        return .failAndDrop(failure)
    }

    /// Validates the text bytes of the partial message from `start` on; fails at the first invalid byte.
    private mutating func validateText(at start: Int) -> Action {
        let valid = partial!.payload.withUnsafeReadableBytes { bytes in
            partial!.text.consume(UnsafeRawBufferPointer(rebasing: bytes[(start - partial!.payload.readerIndex)...]))
        }
        return valid ? .none : fail(.invalidUTF8)
    }

    private mutating func receivedClose(_ payload: ByteBuffer) -> Action {
        var payload = payload
        let wasOpen = closeState == .open
        // RFC 6455 §5.5.1 and §7.4: no payload, or a 2-byte code a peer may send, optionally followed by a
        // UTF-8 reason.
        let code: UInt16?
        switch payload.readableBytes {
        case 0:
            code = nil
        case 1:
            return failAfterClose(.protocolError)
        default:
            let number = payload.readInteger(as: UInt16.self)!
            guard Self.mayBeSentByPeer(number) else {
                return failAfterClose(Failure(code: .protocolError, reason: "invalid_close_code"))
            }
            guard Self.isValidUTF8(payload) else { return failAfterClose(.invalidUTF8) }
            code = number
        }
        closeState = .received
        if closeCode == nil { closeCode = code ?? 1005 }
        guard wasOpen else { return .closeHandshakeCompleted }
        return .answerClose(code: code.map { WebSocketErrorCode(codeNumber: Int($0)) })
    }

    /// An invalid close frame: fail with `failure` when we have not sent a close yet, else just drop.
    private mutating func failAfterClose(_ failure: Failure) -> Action {
        guard closeState == .open else {
            closeState = .received
            return .closeHandshakeCompleted
        }
        partial = nil
        _ = startClose(code: failure.code, reason: failure.reason)
        closeState = .received
        return .failAndDrop(failure)
    }

    /// Codes a peer may put in a close frame (RFC 6455 §7.4.1–7.4.2 and the IANA registry): 1004–1006 and
    /// 1015 are reserved for reporting and never sent; 1016–2999 are unassigned; 5000 and up do not exist.
    static func mayBeSentByPeer(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: true
        default: false
        }
    }

    // MARK: Closing

    /// Starts the close handshake from our side (a failure, a policy decision, shutdown): true when a close
    /// frame should be sent, false when one was sent or received already.
    mutating func startClose(code: WebSocketErrorCode, reason: String?) -> Bool {
        guard closeState == .open else { return false }
        closeState = .sent
        if closeCode == nil {
            closeCode = UInt16(webSocketErrorCode: code)
            closeReason = reason
        }
        return true
    }

    private mutating func fail(_ failure: Failure) -> Action {
        partial = nil
        return startClose(code: failure.code, reason: failure.reason) ? .fail(failure) : .none
    }

    // MARK: Heartbeat

    /// What the heartbeat does at `now`.
    enum Heartbeat: Equatable {
        case none
        /// Send a ping with this payload.
        case ping(UInt64)
        /// The previous ping went unanswered for `timeout`: the peer is gone.
        case timedOut
    }

    mutating func heartbeat(now: NIODeadline, timeout: TimeAmount) -> Heartbeat {
        guard closeState == .open else { return .none }
        if let outstanding = outstandingPing {
            return now - outstanding.sentAt >= timeout ? .timedOut : .none
        }
        pingsSent &+= 1
        outstandingPing = (pingsSent, now)
        return .ping(pingsSent)
    }

    // MARK: Payloads

    /// A payload with its mask removed, eight bytes at a time: NIO's `unmaskedData` goes byte by byte, which
    /// showed in profiles of the message path.
    static func unmasked(_ data: ByteBuffer, key: WebSocketMaskingKey) -> ByteBuffer {
        var data = data
        data.withUnsafeMutableReadableBytes { unmask($0, key: key, offset: 0) }
        return data
    }

    /// Unmasks `bytes` in place, which start `offset` bytes into the frame's payload.
    static func unmask(_ bytes: UnsafeMutableRawBufferPointer, key: WebSocketMaskingKey, offset: Int) {
        unmask(bytes, word: maskWord(key), offset: offset)
    }

    /// The masking key's four bytes as one little-endian word. NIO's key subscript is not inlined across
    /// modules: reading the key byte by byte cost a call per byte, 1.9 % of the 1→1 path in a profile.
    static func maskWord(_ key: WebSocketMaskingKey) -> UInt32 {
        UInt32(key[0]) | UInt32(key[1]) << 8 | UInt32(key[2]) << 16 | UInt32(key[3]) << 24
    }

    /// Unmasks `bytes` in place, eight at a time, with the key `word` (``maskWord(_:)``); `bytes` start `offset`
    /// bytes into the frame's payload.
    static func unmask(_ bytes: UnsafeMutableRawBufferPointer, word: UInt32, offset: Int) {
        // Rotated so that its lowest byte masks the first byte here.
        let shift = UInt32((offset & 3) * 8)
        let rotated = shift == 0 ? word : (word >> shift) | (word << (32 - shift))
        let wide = UInt64(rotated) | UInt64(rotated) << 32
        var index = 0
        while index + 8 <= bytes.count {
            let masked = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self))
            bytes.storeBytes(of: (masked ^ wide).littleEndian, toByteOffset: index, as: UInt64.self)
            index += 8
        }
        while index < bytes.count {
            bytes[index] ^= UInt8(truncatingIfNeeded: rotated >> (UInt32(index & 3) * 8))
            index += 1
        }
    }

    /// Whether a masked text payload is UTF-8, unmasked a chunk at a time on the stack: no copy of the message.
    static func isValidUTF8(masked data: ByteBuffer, key: WebSocketMaskingKey) -> Bool {
        var validator = UTF8Validator()
        let word = maskWord(key)
        let chunkSize = 512
        return data.withUnsafeReadableBytes { bytes in
            withUnsafeTemporaryAllocation(byteCount: chunkSize, alignment: 8) { chunk in
                var offset = 0
                while offset < bytes.count {
                    let length = min(chunkSize, bytes.count - offset)
                    let piece = UnsafeMutableRawBufferPointer(rebasing: chunk[0..<length])
                    piece.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + length)]))
                    unmask(piece, word: word, offset: offset)
                    guard validator.consume(UnsafeRawBufferPointer(piece)) else { return false }
                    offset += length
                }
                return validator.isAtCharacterBoundary
            }
        }
    }

    /// Whether a whole text payload is UTF-8, without building a `String` of it.
    static func isValidUTF8(_ payload: ByteBuffer) -> Bool {
        var validator = UTF8Validator()
        return payload.withUnsafeReadableBytes { validator.consume($0) } && validator.isAtCharacterBoundary
    }
}
