/// The broker protocol of `docs/protocol.md`: JSON objects in text frames, and a binary envelope that carries
/// payloads without base64. Shared by the gateway and the client; no NIO, no Foundation.
public enum MessagingProtocol {
    /// A message body: a JSON value (as raw bytes, forwarded exactly) or opaque binary.
    public enum Payload: Sendable, Equatable {
        case json([UInt8])
        case binary([UInt8])
    }

    /// What a client asks of the broker.
    public enum Request: Sendable, Equatable {
        case subscribe(topic: String, id: [UInt8]?)
        case unsubscribe(topic: String, id: [UInt8]?)
        case publish(topic: String, payload: Payload, id: [UInt8]?)

        public var id: [UInt8]? {
            switch self {
            case .subscribe(_, let id), .unsubscribe(_, let id), .publish(_, _, let id): id
            }
        }
    }

    /// What the gateway sends a client.
    public enum Event: Sendable, Equatable {
        case message(topic: String, from: String, payload: Payload)
        case ack(id: [UInt8])
        case error(id: [UInt8]?, code: String, message: String)
        /// Something the gateway tells the client unasked, such as `certificate_expiring`.
        case notice(code: String, message: String)
    }

    /// A request that cannot be understood; answered with an `error` frame carrying `code`.
    public struct DecodingError: Error, Equatable {
        /// `invalid_message` or `invalid_topic`.
        public var code: String
        public var message: String
        public var id: [UInt8]?
    }

    /// Binary envelope kinds (first byte of a binary frame).
    public static let binaryPublish: UInt8 = 0x01
    public static let binaryMessage: UInt8 = 0x02

    // MARK: Client → gateway

    /// Decodes a text frame's JSON object.
    public static func decodeRequest(text bytes: UnsafeRawBufferPointer) throws(DecodingError) -> Request {
        let members: [JSONObjectScanner.Member]
        do {
            members = try JSONObjectScanner.members(of: bytes)
        } catch {
            throw DecodingError(code: "invalid_message", message: "\(error)", id: nil)
        }
        func member(_ key: String) -> Range<Int>? { members.first { $0.key == key }?.value }
        var id: [UInt8]?
        if let range = member("id") {
            let first = bytes[range.lowerBound]
            guard first == UInt8(ascii: "\"") || first == UInt8(ascii: "-") || (48...57).contains(first) else {
                throw DecodingError(code: "invalid_message", message: "'id' must be a string or a number", id: nil)
            }
            id = Array(bytes[range])
        }
        guard let typeRange = member("type"), let type = JSONObjectScanner.string(in: bytes, at: typeRange) else {
            throw DecodingError(code: "invalid_message", message: "a message needs a string 'type'", id: id)
        }
        let known: Set<String> = ["type", "topic", "payload", "id"]
        if let unknown = members.first(where: { !known.contains($0.key) }) {
            throw DecodingError(code: "invalid_message", message: "unknown field '\(unknown.key)'", id: id)
        }
        guard let topicRange = member("topic"), let topic = JSONObjectScanner.string(in: bytes, at: topicRange) else {
            throw DecodingError(code: "invalid_message", message: "'\(type)' needs a string 'topic'", id: id)
        }
        switch type {
        case "subscribe", "unsubscribe":
            guard member("payload") == nil else {
                throw DecodingError(code: "invalid_message", message: "'\(type)' takes no payload", id: id)
            }
            return type == "subscribe" ? .subscribe(topic: topic, id: id) : .unsubscribe(topic: topic, id: id)
        case "publish":
            guard let payload = member("payload") else {
                throw DecodingError(code: "invalid_message", message: "'publish' needs a 'payload'", id: id)
            }
            return .publish(topic: topic, payload: .json(Array(bytes[payload])), id: id)
        default:
            throw DecodingError(
                code: "invalid_message", message: "unknown type '\(type)' (subscribe, unsubscribe or publish)", id: id)
        }
    }

    /// Decodes a binary frame: `0x01`, a 2-byte big-endian topic length, the topic, then the payload.
    ///
    /// - Parameter previousTopic: the topic of the sender's previous publish; when this one's is the same, that
    ///   string is returned instead of a newly validated copy (a sender mostly repeats its topic).
    public static func decodeRequest(
        binary bytes: UnsafeRawBufferPointer, previousTopic: String? = nil
    ) throws(DecodingError) -> Request {
        guard bytes.count >= 3, bytes[0] == binaryPublish else {
            throw DecodingError(code: "invalid_message", message: "a binary frame must start with 0x01 (publish)", id: nil)
        }
        let length = Int(bytes[1]) << 8 | Int(bytes[2])
        guard bytes.count >= 3 + length else {
            throw DecodingError(code: "invalid_message", message: "the binary frame's topic is truncated or not UTF-8", id: nil)
        }
        let topicBytes = UnsafeRawBufferPointer(rebasing: bytes[3..<(3 + length)])
        if var previousTopic, previousTopic.utf8.count == length,
            previousTopic.withUTF8({ previous in (0..<length).allSatisfy { previous[$0] == topicBytes[$0] } })
        {
            return .publish(topic: previousTopic, payload: .binary(Array(bytes[(3 + length)...])), id: nil)
        }
        guard let topic = String(validating: topicBytes, as: UTF8.self) else {
            throw DecodingError(code: "invalid_message", message: "the binary frame's topic is truncated or not UTF-8", id: nil)
        }
        return .publish(topic: topic, payload: .binary(Array(bytes[(3 + length)...])), id: nil)
    }

    public static func encode(_ request: Request) -> (binary: Bool, bytes: [UInt8]) {
        switch request {
        case .subscribe(let topic, let id): return (false, object("subscribe", topic: topic, id: id))
        case .unsubscribe(let topic, let id): return (false, object("unsubscribe", topic: topic, id: id))
        case .publish(let topic, .json(let payload), let id):
            return (false, object("publish", topic: topic, id: id, payload: payload))
        case .publish(let topic, .binary(let payload), _):
            var bytes: [UInt8] = [binaryPublish]
            appendLengthPrefixed(topic, to: &bytes)
            return (true, bytes + payload)
        }
    }

    // MARK: Gateway → client

    /// A delivery. Encoded once per publish and shared by every subscriber.
    public static func encodeMessage(topic: String, from: String, payload: Payload) -> (binary: Bool, bytes: [UInt8]) {
        switch payload {
        case .json(let raw):
            var bytes = Array(#"{"type":"message","topic":"#.utf8)
            bytes.reserveCapacity(bytes.count + topic.utf8.count + from.utf8.count + raw.count + 32)
            appendJSONString(topic, to: &bytes)
            bytes += Array(#","from":"#.utf8)
            appendJSONString(from, to: &bytes)
            bytes += Array(#","payload":"#.utf8)
            bytes += raw
            bytes.append(UInt8(ascii: "}"))
            return (false, bytes)
        case .binary(let raw):
            return (true, binaryMessagePrefix(topic: topic, from: from) + raw)
        }
    }

    /// A binary delivery up to its payload: `0x02`, then the topic and the sender, each with a 2-byte length.
    /// The same for every message a sender publishes to a topic, so a gateway can keep it.
    public static func binaryMessagePrefix(topic: String, from: String) -> [UInt8] {
        var bytes: [UInt8] = [binaryMessage]
        bytes.reserveCapacity(5 + topic.utf8.count + from.utf8.count)
        appendLengthPrefixed(topic, to: &bytes)
        appendLengthPrefixed(from, to: &bytes)
        return bytes
    }

    public static func encodeAck(id: [UInt8]) -> [UInt8] {
        Array(#"{"type":"ack","id":"#.utf8) + id + [UInt8(ascii: "}")]
    }

    public static func encodeError(id: [UInt8]?, code: String, message: String) -> [UInt8] {
        var bytes = Array(#"{"type":"error""#.utf8)
        if let id { bytes += Array(#","id":"#.utf8) + id }
        bytes += Array(#","code":"#.utf8)
        appendJSONString(code, to: &bytes)
        bytes += Array(#","message":"#.utf8)
        appendJSONString(message, to: &bytes)
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }

    /// `{"type":"notice","code":…,"message":…}`: the gateway telling the client something unasked.
    public static func encodeNotice(code: String, message: String) -> [UInt8] {
        var bytes = Array(#"{"type":"notice","code":"#.utf8)
        appendJSONString(code, to: &bytes)
        bytes += Array(#","message":"#.utf8)
        appendJSONString(message, to: &bytes)
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }

    /// Decodes what the gateway sent (the client side).
    public static func decodeEvent(binary: Bool, bytes: UnsafeRawBufferPointer) -> Event? {
        if binary {
            guard bytes.count >= 3, bytes[0] == binaryMessage else { return nil }
            var offset = 1
            func prefixed() -> String? {
                guard offset + 2 <= bytes.count else { return nil }
                let length = Int(bytes[offset]) << 8 | Int(bytes[offset + 1])
                guard offset + 2 + length <= bytes.count else { return nil }
                defer { offset += 2 + length }
                return String(validating: UnsafeRawBufferPointer(rebasing: bytes[(offset + 2)..<(offset + 2 + length)]), as: UTF8.self)
            }
            guard let topic = prefixed(), let from = prefixed() else { return nil }
            return .message(topic: topic, from: from, payload: .binary(Array(bytes[offset...])))
        }
        guard let members = try? JSONObjectScanner.members(of: bytes) else { return nil }
        func member(_ key: String) -> Range<Int>? { members.first { $0.key == key }?.value }
        func string(_ key: String) -> String? { member(key).flatMap { JSONObjectScanner.string(in: bytes, at: $0) } }
        switch string("type") {
        case "message":
            guard let topic = string("topic"), let from = string("from"), let payload = member("payload") else { return nil }
            return .message(topic: topic, from: from, payload: .json(Array(bytes[payload])))
        case "ack":
            return member("id").map { .ack(id: Array(bytes[$0])) }
        case "error":
            return .error(id: member("id").map { Array(bytes[$0]) }, code: string("code") ?? "", message: string("message") ?? "")
        case "notice":
            return .notice(code: string("code") ?? "", message: string("message") ?? "")
        default:
            return nil
        }
    }

    // MARK: Helpers

    private static func object(_ type: String, topic: String, id: [UInt8]?, payload: [UInt8]? = nil) -> [UInt8] {
        var bytes = Array(#"{"type":"#.utf8)
        appendJSONString(type, to: &bytes)
        bytes += Array(#","topic":"#.utf8)
        appendJSONString(topic, to: &bytes)
        if let id { bytes += Array(#","id":"#.utf8) + id }
        if let payload { bytes += Array(#","payload":"#.utf8) + payload }
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }

    private static func appendLengthPrefixed(_ text: String, to bytes: inout [UInt8]) {
        let utf8 = text.utf8.prefix(0xFFFF)
        bytes.append(UInt8(utf8.count >> 8))
        bytes.append(UInt8(utf8.count & 0xFF))
        bytes.append(contentsOf: utf8)
    }
}
