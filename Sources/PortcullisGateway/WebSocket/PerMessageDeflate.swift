import CompressNIO
import NIOCore
import NIOPosix

/// permessage-deflate (RFC 7692) as agreed with one client at the upgrade.
///
/// The negotiation and the message framing are written here; zlib comes through compress-nio. swift-websocket's
/// `WSCompression` (on compress-nio too) does not fit the session: its extension is an actor awaited for every
/// frame, it holds a compressor and a decompressor (hundreds of KiB with a 15-bit window) for the session's
/// whole life, and it bounds each inflated frame rather than the message.
///
/// Without context takeover (the default, and what the gateway asks of both sides), nothing is kept between
/// messages: a whole message is inflated or deflated at once with the zlib streams of the event loop's thread,
/// which are reset after each message. An idle session therefore holds no compressor state at all. With
/// `compression_context_takeover` configured, a session that uses compression gets streams of its own on its
/// first compressed message and keeps them while it lasts.
struct PerMessageDeflate: Sendable, Equatable {
    /// The LZ77 window the gateway compresses with (`server_max_window_bits`, 8–15). zlib's raw deflate cannot
    /// use a 256-byte window, so for 8 the gateway sends Huffman codes only (no back references).
    var serverMaxWindowBits = 15
    /// Whether the gateway keeps its compression context from one message to the next.
    var serverContextTakeover = false
    /// Whether the client may keep its context (the gateway then keeps an inflater for the session).
    var clientContextTakeover = false
    /// The `Sec-WebSocket-Extensions` value of the 101 answer.
    var responseHeader: String

    /// Messages smaller than this are sent uncompressed (allowed per message, RFC 7692 §6): compressing a short
    /// acknowledgement costs more CPU than the bytes it saves.
    static let minimumCompressedBytes = 64

    /// The first acceptable `permessage-deflate` offer among the request's `Sec-WebSocket-Extensions` values,
    /// turned into the agreement; nil when the client offers none the gateway can accept (the session then
    /// goes on uncompressed, RFC 7692 §5). With `contextTakeover` false the gateway asks for no context
    /// takeover both ways, which RFC 7692 §7.1.1 lets a server do whatever the offer says.
    static func negotiate(offers headerValues: [String], contextTakeover: Bool) -> PerMessageDeflate? {
        for offer in headerValues.flatMap(Self.extensions) where offer.name == "permessage-deflate" {
            if let agreement = accept(offer.parameters, contextTakeover: contextTakeover) { return agreement }
        }
        return nil
    }

    private static func accept(_ parameters: [(name: String, value: String?)], contextTakeover: Bool) -> PerMessageDeflate? {
        var seen = Set<String>()
        var serverWindow: Int?
        var clientNoContextTakeover = false
        var serverNoContextTakeover = false
        for (name, value) in parameters {
            // §7: an offer with an unknown parameter, a parameter twice or an invalid value is declined.
            guard seen.insert(name).inserted else { return nil }
            switch name {
            case "server_no_context_takeover":
                guard value == nil else { return nil }
                serverNoContextTakeover = true
            case "client_no_context_takeover":
                guard value == nil else { return nil }
                clientNoContextTakeover = true
            case "server_max_window_bits":
                guard let bits = value.flatMap(windowBits) else { return nil }
                serverWindow = bits
            case "client_max_window_bits":
                // Valueless means the client can honour a limit; the gateway inflates with a full window, so it
                // needs none.
                if let value, windowBits(value) == nil { return nil }
            default:
                return nil
            }
        }
        var agreement = PerMessageDeflate(responseHeader: "permessage-deflate")
        agreement.serverContextTakeover = contextTakeover && !serverNoContextTakeover
        agreement.clientContextTakeover = contextTakeover && !clientNoContextTakeover
        if !agreement.serverContextTakeover { agreement.responseHeader += "; server_no_context_takeover" }
        if !agreement.clientContextTakeover { agreement.responseHeader += "; client_no_context_takeover" }
        if let serverWindow {
            agreement.serverMaxWindowBits = serverWindow
            agreement.responseHeader += "; server_max_window_bits=\(serverWindow)"
        }
        return agreement
    }

    /// `8`–`15`, as RFC 7692 §7.1.2 writes them (1*DIGIT, no leading zero); the value may be a quoted string.
    private static func windowBits(_ text: String) -> Int? {
        let digits = text.hasPrefix("\"") && text.hasSuffix("\"") && text.count >= 2 ? String(text.dropFirst().dropLast()) : text
        guard !digits.isEmpty, digits.count <= 2, digits.first != "0", digits.allSatisfy(\.isASCII), let bits = Int(digits),
            (8...15).contains(bits)
        else { return nil }
        return bits
    }

    /// `Sec-WebSocket-Extensions` (RFC 6455 §9.1): extensions separated by commas, each a name and
    /// `;`-separated parameters, a parameter's value a token or a quoted string. Names are case-insensitive.
    static func extensions(_ header: String) -> [(name: String, parameters: [(name: String, value: String?)])] {
        header.split(separator: ",").compactMap { item in
            let parts = item.split(separator: ";", omittingEmptySubsequences: false).map {
                $0.trimmingCharacters(in: [" ", "\t"])
            }
            guard let name = parts.first, !name.isEmpty else { return nil }
            let parameters = parts.dropFirst().map { part -> (name: String, value: String?) in
                guard let equals = part.firstIndex(of: "=") else { return (part.lowercased(), nil) }
                return (
                    part[..<equals].trimmingCharacters(in: [" ", "\t"]).lowercased(),
                    part[part.index(after: equals)...].trimmingCharacters(in: [" ", "\t"])
                )
            }
            return (name.lowercased(), parameters)
        }
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Set<Character>) -> String {
        String(drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: Set<Character>) -> String { String(self).trimmingCharacters(in: set) }
}

/// Compresses and inflates whole messages under one session's ``PerMessageDeflate`` agreement.
final class MessageDeflater {
    enum InflateError: Error, Equatable {
        /// The message inflates beyond the limit; inflating stopped there.
        case tooLarge
        /// Not a raw deflate stream.
        case corrupt
    }

    let agreement: PerMessageDeflate
    /// The session's own streams, only under context takeover (created on first use).
    private var ownCompressor: ZlibCompressor?
    private var ownDecompressor: ZlibDecompressor?

    init(agreement: PerMessageDeflate) {
        self.agreement = agreement
    }

    /// The payload of a compressed message (RSV1 set on its first frame), or nil when `payload` is better sent
    /// as it is.
    func compress(_ payload: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer? {
        guard payload.readableBytes >= PerMessageDeflate.minimumCompressedBytes else { return nil }
        let compressor: ZlibCompressor
        if agreement.serverContextTakeover {
            if ownCompressor == nil { ownCompressor = Self.makeCompressor(windowBits: agreement.serverMaxWindowBits) }
            guard let own = ownCompressor else { return nil }
            compressor = own
        } else {
            guard let shared = DeflateWorkspace.current.compressor(windowBits: agreement.serverMaxWindowBits) else { return nil }
            compressor = shared
        }
        var input = payload
        var output = allocator.buffer(capacity: compressor.maxSize(from: payload) + 16)
        do {
            try compressor.deflate(from: &input, to: &output, flush: .sync)
        } catch {
            try? compressor.reset()
            return nil
        }
        if !agreement.serverContextTakeover { try? compressor.reset() }
        // RFC 7692 §7.2.1: the sync flush's empty stored block (00 00 FF FF) is not sent.
        guard input.readableBytes == 0, output.readableBytes >= 4 else { return nil }
        output.moveWriterIndex(to: output.writerIndex - 4)
        return output
    }

    /// The message `compressed` carries, at most `maxBytes` long: inflating stops (and fails) at the first
    /// byte beyond, so a small message that would inflate to gigabytes costs at most `maxBytes`.
    func inflate(_ compressed: ByteBuffer, maxBytes: Int, allocator: ByteBufferAllocator) throws(InflateError) -> ByteBuffer {
        let decompressor: ZlibDecompressor
        if agreement.clientContextTakeover {
            if ownDecompressor == nil { ownDecompressor = try? ZlibDecompressor(algorithm: .deflate, windowSize: 15) }
            guard let own = ownDecompressor else { throw .corrupt }
            decompressor = own
        } else {
            guard let shared = DeflateWorkspace.current.decompressor else { throw .corrupt }
            decompressor = shared
        }
        defer { if !agreement.clientContextTakeover { try? decompressor.reset() } }
        var input = compressed
        // RFC 7692 §7.2.2: put back the sync flush's tail the sender left out.
        input.writeBytes([0x00, 0x00, 0xFF, 0xFF])
        var output = allocator.buffer(capacity: Swift.min(maxBytes + 1, Swift.max(256, compressed.readableBytes * 4)))
        while input.readableBytes > 0 {
            do {
                try decompressor.inflate(from: &input, to: &output)
                // A final block ended the stream before the input did: what follows starts a new one.
                if input.readableBytes > 0 { try? decompressor.reset() }
            } catch let error as CompressNIOError where error == .inputBufferOverflow {
                break  // all of the input inflated
            } catch let error as CompressNIOError where error == .bufferOverflow {
                guard output.readableBytes <= maxBytes else { throw .tooLarge }
                // Grow by doubling, but never past one byte over the limit.
                let room = Swift.min(maxBytes + 1 - output.readableBytes, Swift.max(output.readableBytes, 4096))
                output.reserveCapacity(minimumWritableBytes: room)
            } catch {
                throw .corrupt
            }
        }
        guard output.readableBytes <= maxBytes else { throw .tooLarge }
        return output
    }

    static func makeCompressor(windowBits: Int) -> ZlibCompressor? {
        try? ZlibCompressor(
            algorithm: .deflate,
            configuration: ZlibConfiguration(
                windowSize: Int32(Swift.max(9, windowBits)), compressionLevel: Int32(-1), memoryLevel: Int32(8),
                strategy: windowBits < 9 ? .huffmanOnly : .default))
    }
}

/// The zlib streams of one thread (one event loop), shared by its sessions without context takeover: one
/// message is deflated or inflated at a time on a thread, and the stream is reset after it.
final class DeflateWorkspace: @unchecked Sendable {  // only ever used by the thread that created it
    private var compressors: [Int: ZlibCompressor] = [:]
    /// A 15-bit window inflates whatever window the client used.
    let decompressor = try? ZlibDecompressor(algorithm: .deflate, windowSize: 15)

    func compressor(windowBits: Int) -> ZlibCompressor? {
        if let known = compressors[windowBits] { return known }
        let made = MessageDeflater.makeCompressor(windowBits: windowBits)
        compressors[windowBits] = made
        return made
    }

    private static let perThread = ThreadSpecificVariable<DeflateWorkspace>()

    static var current: DeflateWorkspace {
        if let workspace = perThread.currentValue { return workspace }
        let workspace = DeflateWorkspace()
        perThread.currentValue = workspace
        return workspace
    }
}
