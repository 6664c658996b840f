@testable import PortcullisDoctor
import Testing

/// doctor's reading of the gateway's frames while it waits for its pong, without a network.
@Suite("doctor's reading of the gateway's frames")
struct ServerFrameReaderTests {
    @Test("A frame is read once it is whole, however its bytes arrive")
    func pieces() throws {
        let pong: [UInt8] = [0x8A, 0x04, 1, 2, 3, 4]
        var reader = ServerFrameReader()
        for byte in pong.dropLast() {
            reader.append([byte])
            #expect(try reader.nextFrame() == nil)
        }
        reader.append([pong.last!])
        #expect(try reader.nextFrame() == ServerFrameReader.Frame(opcode: 0xA, payload: [1, 2, 3, 4]))
        #expect(reader.pendingCount == 0)
    }

    @Test("Frames that arrive together are read in order; a 16-bit length is read")
    func sequence() throws {
        let payload = [UInt8](repeating: 7, count: 300)
        var reader = ServerFrameReader()
        reader.append([0x81, 0x02, 0x68, 0x69] + [0x82, 126, 0x01, 0x2C] + payload + [0x89, 0x00])
        #expect(try reader.nextFrame() == ServerFrameReader.Frame(opcode: 0x1, payload: Array("hi".utf8)))
        #expect(try reader.nextFrame() == ServerFrameReader.Frame(opcode: 0x2, payload: payload))
        #expect(try reader.nextFrame() == ServerFrameReader.Frame(opcode: 0x9, payload: []))
        #expect(try reader.nextFrame() == nil)
    }

    @Test("A 64-bit length is refused before its payload is waited for")
    func tooLarge() {
        var reader = ServerFrameReader()
        reader.append([0x82, 127])
        #expect(throws: ServerFrameReader.Failure.frameTooLarge) { try reader.nextFrame() }
        #expect(ServerFrameReader.Failure.frameTooLarge.description == "the gateway sent a frame over 64 KiB before the pong")
    }

    @Test("A close frame gives its code and reason; 1005 when it has no code; other frames are no close")
    func close() throws {
        let bye = ServerFrameReader.Frame(opcode: 0x8, payload: [0x03, 0xF0] + Array("certificate_revoked".utf8))
        #expect(bye.close?.code == 1008 && bye.close?.reason == "certificate_revoked")
        #expect(ServerFrameReader.Frame(opcode: 0x8, payload: []).close?.code == 1005)
        #expect(ServerFrameReader.Frame(opcode: 0x8, payload: [0x03]).close?.code == 1005)
        #expect(ServerFrameReader.Frame(opcode: 0xA, payload: [0x03, 0xE8]).close == nil)
    }
}
