import NIOCore
import NIOWebSocket
import Testing

@testable import PortcullisGateway

@Suite("Unmasking frames")
struct UnmaskTests {
    @Test("Word-wise unmasking agrees with NIO's byte-wise unmasking at every length and offset")
    func agreesWithNIO() {
        var generator = SystemRandomNumberGenerator()
        for length in 0..<40 {
            let payload = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let key = WebSocketMaskingKey.random(using: &generator)
            var masked = ByteBuffer(bytes: payload)
            masked.webSocketMask(key)
            let frame = WebSocketFrame(fin: true, opcode: .binary, maskKey: key, data: masked)
            #expect(Array(WebSocketProtocolStateMachine.unmasked(frame.data, key: key).readableBytesView) == payload)
            // A region starting `offset` bytes into the payload, as the binary publish path unmasks it.
            for offset in 0..<min(length, 9) {
                var region = Array(masked.readableBytesView.dropFirst(offset))
                region.withUnsafeMutableBytes { WebSocketProtocolStateMachine.unmask($0, key: key, offset: offset) }
                #expect(region == Array(payload.dropFirst(offset)), "length \(length), offset \(offset)")
            }
        }
    }
}
