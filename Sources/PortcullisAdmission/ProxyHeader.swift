/// The PROXY protocol version 2 header a TCP load balancer (HAProxy `send-proxy-v2`) sends before the client's
/// bytes, carrying the client's address. Read by hand (no mirrored library reads it) and pure: the gateway's
/// handler feeds it what has arrived and acts on the outcome. Held to unit and property tests and to
/// `FuzzProxyHeader`.
///
/// Layout (haproxy's doc/proxy-protocol.txt, section 2.2): a 12-byte signature, a version/command byte, a
/// family/transport byte, a 2-byte big-endian length, then that many bytes of addresses and optional TLVs.
public struct ProxyHeader: Sendable, Equatable {
    /// `PROXY`: relayed for a client, whose address follows; `LOCAL`: the balancer's own connection (a health
    /// check), whose addresses are to be ignored.
    public enum Command: String, Sendable, Equatable {
        case proxy = "PROXY"
        case local = "LOCAL"
    }

    public let command: Command
    /// The client's address and port, for a `PROXY` header over TCP.
    public let source: (address: String, port: Int)?
    /// Bytes the header took, signature included; what follows is the client's.
    public let length: Int

    public init(command: Command, source: (address: String, port: Int)?, length: Int) {
        self.command = command
        self.source = source
        self.length = length
    }

    public static func == (lhs: ProxyHeader, rhs: ProxyHeader) -> Bool {
        lhs.command == rhs.command && lhs.length == rhs.length && lhs.source?.address == rhs.source?.address
            && lhs.source?.port == rhs.source?.port
    }

    /// The 12 bytes every version 2 header starts with.
    public static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// The fixed part: signature, version/command, family/transport and length.
    public static let fixedLength = 16
    /// Longest address-and-TLV part accepted. HAProxy sends 12 (IPv4) or 36 (IPv6) bytes plus TLVs it is
    /// configured to add (an ALPN, an authority, a unique ID: tens of bytes); the field allows 65,535, which a
    /// connection that may not be a balancer's must not make the gateway hold.
    public static let maximumBodyLength = 2048

    /// Why a connection's first bytes are no acceptable header; each is a refusal reason of its own.
    public enum Problem: Sendable, Equatable {
        /// No PROXY header at all: the bytes are something else (a TLS ClientHello sent directly).
        case missing
        /// A version 1 (text) header, or a version 2 one over UDP or a UNIX socket: valid, but not accepted.
        case unsupported(String)
        /// Version 2 signature, then bytes that break the format.
        case malformed(String)
        /// A length past ``ProxyHeader/maximumBodyLength``, refused from the fixed part alone.
        case oversized(Int)

        /// The audit and metrics reason.
        public var reason: String {
            switch self {
            case .missing: "proxy_header_missing"
            case .unsupported: "proxy_header_unsupported"
            case .malformed: "proxy_header_malformed"
            case .oversized: "proxy_header_oversized"
            }
        }

        public var detail: String {
            switch self {
            case .missing: "the connection did not begin with a PROXY protocol v2 header"
            case .unsupported(let what): "\(what) is not accepted: only PROXY protocol v2 over TCP"
            case .malformed(let what): "malformed PROXY protocol v2 header: \(what)"
            case .oversized(let length):
                "the PROXY protocol v2 header announces \(length) bytes of addresses and TLVs, more than the "
                    + "\(maximumBodyLength) accepted"
            }
        }
    }

    /// What the bytes so far say.
    public enum Outcome: Sendable, Equatable {
        /// The bytes so far begin a header: read more.
        case needMore
        case header(ProxyHeader)
        case refused(Problem)
    }

    /// Reads the header at the start of `bytes` (everything received so far). Decides as early as the bytes
    /// allow: a first byte that cannot begin a signature is refused at once, and so is an oversized length.
    public static func read(_ bytes: some Collection<UInt8>) -> Outcome {
        var iterator = bytes.makeIterator()
        var fixed: [UInt8] = []
        fixed.reserveCapacity(fixedLength)
        while fixed.count < fixedLength, let byte = iterator.next() { fixed.append(byte) }
        let start = fixed.prefix(signature.count)
        if !start.elementsEqual(signature.prefix(start.count)) {
            // `PROXY ` begins a version 1 header; anything else (`POST`, a ClientHello) is no header at all.
            let versionOne = Array("PROXY ".utf8)
            let head = fixed.prefix(versionOne.count)
            guard head.elementsEqual(versionOne.prefix(head.count)) else { return .refused(.missing) }
            return head.count < versionOne.count ? .needMore : .refused(.unsupported("a PROXY protocol v1 (text) header"))
        }
        if fixed.count < 14 { return .needMore }
        let version = fixed[12] >> 4
        let commandBits = fixed[12] & 0x0F
        guard version == 2 else { return .refused(.malformed("version \(version), not 2")) }
        let command: Command
        switch commandBits {
        case 0: command = .local
        case 1: command = .proxy
        default: return .refused(.malformed("command \(commandBits), neither LOCAL (0) nor PROXY (1)"))
        }
        let family = fixed[13] >> 4
        let transport = fixed[13] & 0x0F
        // What the addresses need, by family; UNSPEC carries none.
        let addressLength: Int
        switch (family, transport) {
        case (0, 0): addressLength = 0
        case (1, 1): addressLength = 12
        case (2, 1): addressLength = 36
        case (1, 2), (2, 2): return .refused(.unsupported("a PROXY header for UDP"))
        case (3, 1), (3, 2): return .refused(.unsupported("a PROXY header for a UNIX socket"))
        default: return .refused(.malformed("family/transport byte 0x\(String(fixed[13], radix: 16))"))
        }
        if fixed.count < fixedLength { return .needMore }
        let bodyLength = Int(fixed[14]) << 8 | Int(fixed[15])
        if bodyLength > maximumBodyLength { return .refused(.oversized(bodyLength)) }
        if command == .proxy, bodyLength < addressLength {
            return .refused(.malformed("\(bodyLength) bytes cannot hold the addresses (\(addressLength))"))
        }
        var body: [UInt8] = []
        body.reserveCapacity(addressLength)
        var bodyCount = 0
        while bodyCount < bodyLength, let byte = iterator.next() {
            if body.count < addressLength { body.append(byte) }
            bodyCount += 1
        }
        if bodyCount < bodyLength { return .needMore }
        let length = fixedLength + bodyLength
        // A LOCAL header's addresses, if any, are the balancer's own: ignored, as the format asks.
        guard command == .proxy, addressLength > 0 else {
            return .header(ProxyHeader(command: command, source: nil, length: length))
        }
        let source: (String, Int)
        if family == 1 {
            source = (body[0..<4].map { String($0) }.joined(separator: "."), Int(body[8]) << 8 | Int(body[9]))
        } else {
            source = (ipv6Text(body[0..<16]), Int(body[32]) << 8 | Int(body[33]))
        }
        return .header(ProxyHeader(command: command, source: source, length: length))
    }

    /// RFC 5952 text of a 16-byte IPv6 address (lowercase, the longest run of two or more zero groups as
    /// `::`), and an IPv4-mapped address as `::ffff:a.b.c.d`.
    static func ipv6Text(_ bytes: ArraySlice<UInt8>) -> String {
        let bytes = Array(bytes)
        let groups = (0..<8).map { Int(bytes[$0 * 2]) << 8 | Int(bytes[$0 * 2 + 1]) }
        if groups[0..<5].allSatisfy({ $0 == 0 }) && groups[5] == 0xFFFF {
            return "::ffff:" + bytes[12..<16].map { String($0) }.joined(separator: ".")
        }
        var best: (start: Int, count: Int) = (-1, 0)
        var index = 0
        while index < 8 {
            guard groups[index] == 0 else {
                index += 1
                continue
            }
            var end = index
            while end < 8, groups[end] == 0 { end += 1 }
            if end - index > best.count { best = (index, end - index) }
            index = end
        }
        func text(_ range: Range<Int>) -> String { groups[range].map { String($0, radix: 16) }.joined(separator: ":") }
        guard best.count >= 2 else { return text(0..<8) }
        return text(0..<best.start) + "::" + text((best.start + best.count)..<8)
    }
}
