/// Reads the gateway's WebSocket frames (RFC 6455 §5.2) from its bytes as they arrive, while ``ConnectionProbe``
/// waits for the pong to its ping. Pure: the probe receives, this reads; the bytes can come in pieces of any size.
///
/// Bounded: a payload's length is 7 or 16 bits (under 64 KiB); a 64-bit length is refused before its payload is
/// waited for. A server's frames are not masked (§5.1), and the mask bit is not looked at; nor are FIN and the
/// reserved bits: a ping's answer is one unfragmented frame. (`package`: for the fuzz target, `Fuzz/DoctorProbe`.)
package struct ServerFrameReader {
    /// One frame: its opcode (`0xA` pong, `0x8` close, ...) and payload.
    package struct Frame: Equatable {
        package var opcode: UInt8
        package var payload: [UInt8]

        /// A close frame's status code (1005, "no status", when it has none) and reason (§5.5.1); nil for any
        /// other frame.
        package var close: (code: Int, reason: String)? {
            guard opcode == 0x8 else { return nil }
            let code = payload.count >= 2 ? Int(payload[0]) << 8 | Int(payload[1]) : 1005
            return (code, String(decoding: payload.dropFirst(2), as: UTF8.self))
        }
    }

    package enum Failure: Error, Equatable, CustomStringConvertible {
        /// A frame with a 64-bit length: 64 KiB or more.
        case frameTooLarge

        package var description: String { "the gateway sent a frame over 64 KiB before the pong" }
    }

    private var buffer: [UInt8] = []

    package init() {}

    /// Bytes held that are not yet a whole frame.
    package var pendingCount: Int { buffer.count }

    /// Takes the next bytes received.
    package mutating func append(_ bytes: some Collection<UInt8>) {
        buffer += bytes
    }

    /// The next whole frame, taken from the bytes held; nil until one has arrived whole.
    /// - Throws: ``Failure/frameTooLarge`` as soon as a frame's length says 64 KiB or more.
    package mutating func nextFrame() throws(Failure) -> Frame? {
        guard buffer.count >= 2 else { return nil }
        var length = Int(buffer[1] & 0x7F)
        var headerLength = 2
        if length == 126 {
            guard buffer.count >= 4 else { return nil }
            length = Int(buffer[2]) << 8 | Int(buffer[3])
            headerLength = 4
        } else if length == 127 {
            throw .frameTooLarge
        }
        guard buffer.count >= headerLength + length else { return nil }
        let frame = Frame(opcode: buffer[0] & 0x0F, payload: Array(buffer[headerLength..<headerLength + length]))
        buffer.removeFirst(headerLength + length)
        return frame
    }
}
