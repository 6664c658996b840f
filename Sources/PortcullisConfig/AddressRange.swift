#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An IP address or a CIDR block (`10.0.0.0/8`, `::1`, `fd00::/8`): who may send a PROXY protocol header.
///
/// IPv4 addresses are kept as IPv4-mapped IPv6 (`::ffff:a.b.c.d`, prefix + 96), so that a dual-stack listener's
/// `::ffff:127.0.0.1` peer and a configured `127.0.0.1` are the same address.
public struct AddressRange: Sendable, Equatable, CustomStringConvertible {
    /// The network's 16 bytes, host bits zero.
    public let network: [UInt8]
    /// Leading bits that must match, 0...128.
    public let prefixLength: Int
    /// As configured, for messages.
    public let description: String

    /// Reads `text`, or says why it is no address or block. Host bits set past the prefix are refused rather than
    /// masked: `10.1.2.3/8` is more likely a typo than a wish to trust all of `10.0.0.0/8`.
    public static func parse(_ text: String) -> Result<AddressRange, AddressRangeProblem> {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let bytes = addressBytes(String(parts[0])) else {
            return .failure(AddressRangeProblem("'\(text)' is not an IP address or CIDR block (such as 10.0.0.0/8 or ::1)"))
        }
        let isV4 = !parts[0].contains(":")
        let maximum = isV4 ? 32 : 128
        var length = maximum
        if parts.count == 2 {
            // Digits only, at most three: no sign, no overflow.
            guard (1...3).contains(parts[1].utf8.count), parts[1].utf8.allSatisfy({ (0x30...0x39).contains($0) }),
                let value = Int(parts[1]), value <= maximum
            else {
                return .failure(AddressRangeProblem("'\(text)': the prefix length must be 0 to \(maximum)"))
            }
            length = value
        }
        let prefix = isV4 ? length + 96 : length
        let range = AddressRange(network: bytes, prefixLength: prefix, description: text)
        guard range.masked(bytes) == bytes else {
            return .failure(AddressRangeProblem("'\(text)' has host bits set past /\(length): write its network address"))
        }
        return .success(range)
    }

    /// Whether `address` (an IP address as text, v4 or v6) is in this range.
    public func contains(_ address: String) -> Bool {
        guard let bytes = Self.addressBytes(address) else { return false }
        return masked(bytes) == network
    }

    private func masked(_ bytes: [UInt8]) -> [UInt8] {
        (0..<16).map { index in
            let bits = min(max(prefixLength - index * 8, 0), 8)
            return bytes[index] & UInt8(truncatingIfNeeded: 0xFF00 >> bits)
        }
    }

    /// The 16 bytes of an IPv6 address, or of an IPv4 address as IPv4-mapped IPv6; nil for anything else.
    static func addressBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF] + withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}

/// Why a configured address or block is refused.
public struct AddressRangeProblem: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
