import PortcullisProtocol

/// Reads the few fields the client needs from an `INFO` line's JSON object. The broker's validating scanner
/// (``JSONObjectScanner``: RFC 8259, nesting bounded, duplicate keys refused) checks the whole object and gives
/// each member's raw value; a number is only ever converted when it is a field that is read, within its range.
enum NATSInfoReader {
    static func read(_ json: ArraySlice<UInt8>) throws(NATSProtocolError) -> NATSServerInfo {
        let result = Array(json).withUnsafeBytes { bytes in
            Result { () throws(NATSProtocolError) -> NATSServerInfo in try read(bytes) }
        }
        return try result.get()
    }

    private static func read(_ bytes: UnsafeRawBufferPointer) throws(NATSProtocolError) -> NATSServerInfo {
        let members: [JSONObjectScanner.Member]
        do {
            members = try JSONObjectScanner.members(of: bytes)
        } catch {
            throw NATSProtocolError("INFO is not a JSON object: \(error)")
        }
        var info = NATSServerInfo()
        for member in members {
            let raw = bytes[member.value]
            func boolean() throws(NATSProtocolError) -> Bool {
                if raw.elementsEqual("true".utf8) { return true }
                if raw.elementsEqual("false".utf8) { return false }
                throw NATSProtocolError("INFO's '\(member.key)' must be true or false")
            }
            switch member.key {
            case "server_id":
                guard let text = JSONObjectScanner.string(in: bytes, at: member.value) else {
                    throw NATSProtocolError("INFO's 'server_id' must be a string")
                }
                info.serverID = text
            case "nonce":
                // nats-server's is 11 random bytes in base64url; anything printable and short is signed as it is.
                guard let text = JSONObjectScanner.string(in: bytes, at: member.value), (1...256).contains(text.utf8.count),
                    text.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
                else { throw NATSProtocolError("INFO's 'nonce' must be a string of 1 to 256 printable ASCII characters") }
                info.nonce = text
            case "max_payload": info.maximumPayload = try maximumPayload(raw)
            case "headers": info.supportsHeaders = try boolean()
            case "tls_required": info.tlsRequired = try boolean()
            case "auth_required": info.authRequired = try boolean()
            default: continue
            }
        }
        return info
    }

    /// A whole number from 0 to `Int32.max`, digit by digit: no conversion can overflow.
    private static func maximumPayload(_ raw: UnsafeRawBufferPointer.SubSequence) throws(NATSProtocolError) -> Int {
        var value = 0
        for byte in raw {
            guard let digit = NATSServerParser.decimalDigit(byte), value <= (Int(Int32.max) - digit) / 10 else {
                throw NATSProtocolError("INFO's 'max_payload' must be a whole number from 0 to \(Int32.max)")
            }
            value = value * 10 + digit
        }
        guard !raw.isEmpty else { throw NATSProtocolError("INFO's 'max_payload' must be a whole number") }
        return value
    }
}
