import PortcullisAdmission
import PortcullisTestSupport
import Testing

@Suite("PROXY protocol v2 header (pure)")
struct ProxyHeaderTests {
    /// A version 2 header: `command` 0 (LOCAL) or 1 (PROXY), `family` byte (0x11 TCP over IPv4, 0x21 over IPv6),
    /// `body` the addresses and TLVs; `length` overrides the announced length.
    static func header(command: UInt8 = 1, family: UInt8 = 0x11, body: [UInt8], length: Int? = nil) -> [UInt8] {
        let announced = length ?? body.count
        return ProxyHeader.signature + [0x20 | command, family, UInt8(announced >> 8), UInt8(announced & 0xFF)] + body
    }

    /// The addresses of a TCP over IPv4 header: source, destination, source port, destination port.
    static func ipv4(_ source: [UInt8], port: UInt16, destination: [UInt8] = [127, 0, 0, 1], destinationPort: UInt16 = 8443)
        -> [UInt8]
    {
        source + destination + [UInt8(port >> 8), UInt8(port & 0xFF), UInt8(destinationPort >> 8), UInt8(destinationPort & 0xFF)]
    }

    static let clientHello: [UInt8] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]

    @Test("A PROXY header over IPv4 gives the client's address and port, and how many bytes it took")
    func ipv4Header() {
        let bytes = Self.header(body: Self.ipv4([192, 0, 2, 7], port: 51_234)) + Self.clientHello
        #expect(
            ProxyHeader.read(bytes)
                == .header(ProxyHeader(command: .proxy, source: ("192.0.2.7", 51_234), length: 28)))
    }

    @Test("IPv6 sources are written as RFC 5952 text; IPv4-mapped ones as ::ffff:a.b.c.d")
    func ipv6Header() {
        func source(_ address: [UInt8]) -> String? {
            let body = address + [UInt8](repeating: 0, count: 16) + [0x01, 0xBB, 0x20, 0xFB]
            guard case .header(let header) = ProxyHeader.read(Self.header(family: 0x21, body: body)) else { return nil }
            #expect(header.source?.port == 443)
            return header.source?.address
        }
        #expect(source([0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [1]) == "2001:db8::1")
        #expect(source([UInt8](repeating: 0, count: 15) + [1]) == "::1")
        #expect(source([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 1, 2, 3]) == "::ffff:10.1.2.3")
        #expect(source([0x20, 0x01, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]) == "2001:0:1::1:0:1")
        #expect(source([0xFE, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) == "fe80:1::")
    }

    @Test("TLVs after the addresses are skipped; a LOCAL header (a health check) names no client")
    func tlvsAndLocal() {
        let tlv: [UInt8] = [0x01, 0x00, 0x02, 0x68, 0x32]  // ALPN "h2"
        let withTLV = Self.header(body: Self.ipv4([10, 0, 0, 1], port: 1) + tlv)
        #expect(ProxyHeader.read(withTLV) == .header(ProxyHeader(command: .proxy, source: ("10.0.0.1", 1), length: 33)))
        #expect(ProxyHeader.read(Self.header(command: 0, family: 0, body: [])) == .header(ProxyHeader(command: .local, source: nil, length: 16)))
        #expect(
            ProxyHeader.read(Self.header(command: 0, body: Self.ipv4([10, 0, 0, 1], port: 1)))
                == .header(ProxyHeader(command: .local, source: nil, length: 28)), "a LOCAL header's addresses are ignored")
    }

    @Test("Every strict prefix of a header asks for more; the whole header in any split reads the same")
    func prefixes() {
        let header = Self.header(body: Self.ipv4([203, 0, 113, 9], port: 443) + [0x04, 0x00, 0x01, 0x00])
        for count in 0..<header.count {
            #expect(ProxyHeader.read(header.prefix(count)) == .needMore, "after \(count) bytes")
        }
        #expect(ProxyHeader.read(header) == .header(ProxyHeader(command: .proxy, source: ("203.0.113.9", 443), length: header.count)))
        #expect(ProxyHeader.read(Array("PROX".utf8)) == .needMore, "could still be a version 1 header")
    }

    @Test("Each way a connection can begin wrongly is refused with its own reason")
    func refusals() {
        func reason(_ bytes: [UInt8]) -> String? {
            if case .refused(let problem) = ProxyHeader.read(bytes) { return problem.reason }
            return nil
        }
        #expect(reason(Self.clientHello) == "proxy_header_missing")
        #expect(reason(Array("GET / HTTP/1.1\r\n".utf8)) == "proxy_header_missing")
        #expect(reason(Array("POST / HTTP/1.1\r\n".utf8)) == "proxy_header_missing")
        #expect(reason(Array(ProxyHeader.signature.prefix(5)) + [0x42]) == "proxy_header_missing")
        #expect(reason(Array("PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n".utf8)) == "proxy_header_unsupported")
        #expect(reason(Self.header(family: 0x12, body: Self.ipv4([10, 0, 0, 1], port: 1))) == "proxy_header_unsupported")
        #expect(reason(Self.header(family: 0x31, body: [])) == "proxy_header_unsupported")
        #expect(reason(ProxyHeader.signature + [0x10, 0x11, 0, 12]) == "proxy_header_malformed", "version 1 byte")
        #expect(reason(ProxyHeader.signature + [0x22, 0x11, 0, 12]) == "proxy_header_malformed", "command 2")
        #expect(reason(Self.header(family: 0x41, body: [])) == "proxy_header_malformed")
        #expect(reason(Self.header(body: [1, 2, 3])) == "proxy_header_malformed", "too short for IPv4 addresses")
        #expect(reason(Self.header(family: 0x21, body: Self.ipv4([10, 0, 0, 1], port: 1))) == "proxy_header_malformed")
    }

    @Test("An oversized length is refused from the 16 fixed bytes, before any of the body is waited for")
    func oversized() {
        let fixed = ProxyHeader.signature + [0x21, 0x11, 0xFF, 0xFF]
        #expect(ProxyHeader.read(fixed) == .refused(.oversized(65_535)))
        let largest = ProxyHeader.maximumBodyLength
        #expect(ProxyHeader.read(Self.header(body: [], length: largest + 1)) == .refused(.oversized(largest + 1)))
        #expect(ProxyHeader.read(Self.header(body: Self.ipv4([10, 0, 0, 1], port: 1), length: largest)) == .needMore)
        let tlvs = [UInt8](repeating: 0, count: largest - 12)
        #expect(ProxyHeader.read(Self.header(body: Self.ipv4([10, 0, 0, 1], port: 1) + tlvs)) != .needMore)
    }

    @Test("Property: random headers read back exactly, whatever follows them; random bytes never trap")
    func randomHeaders() {
        var random = SplitMix64(state: 16)
        for _ in 0..<1_500 {
            let v6 = Bool.random(using: &random)
            let source = (0..<(v6 ? 16 : 4)).map { _ in UInt8.random(in: 0...255, using: &random) }
            let port = UInt16.random(in: 0...UInt16.max, using: &random)
            let extra = (0..<Int.random(in: 0...40, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            let body =
                v6
                ? source + [UInt8](repeating: 0, count: 16) + [UInt8(port >> 8), UInt8(port & 0xFF), 0, 1] + extra
                : Self.ipv4(source, port: port) + extra
            let header = Self.header(family: v6 ? 0x21 : 0x11, body: body)
            let trailing = (0..<Int.random(in: 0...20, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            guard case .header(let read) = ProxyHeader.read(header + trailing) else {
                Issue.record("\(header) did not read")
                continue
            }
            #expect(read.length == header.count && read.source?.port == Int(port))
            if !v6 { #expect(read.source?.address == source.map(String.init).joined(separator: ".")) }
            let noise = (0..<Int.random(in: 0...64, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            _ = ProxyHeader.read(noise)
            _ = ProxyHeader.read(ProxyHeader.signature + noise)
        }
    }
}
