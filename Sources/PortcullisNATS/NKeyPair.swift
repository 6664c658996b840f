import Crypto

/// An NKey with its private half: what signs the server's nonce when the gateway signs in to NATS as an NKey user
/// or with a user JWT, and (in the tests) what signs JWTs.
///
/// Its description is its public key: a key pair that ends up in a log line shows which key it is, never the seed.
public struct NKeyPair: Sendable, CustomStringConvertible {
    public let kind: NKey.Kind
    /// The public key's text: `U…` for a user.
    public let publicKey: String
    private let privateKey: Curve25519.Signing.PrivateKey

    /// The key pair of the seed text `seed`: exactly its 58 characters (`SU…` for a user).
    public init(seed: some Collection<UInt8>) throws(NKeyError) {
        let decoded = try NKey.decodeSeed(seed)
        try self.init(kind: decoded.kind, rawSeed: decoded.seed)
    }

    /// The key pair of the 32-byte Ed25519 seed `rawSeed`, as a `kind` key.
    public init(kind: NKey.Kind, rawSeed: [UInt8]) throws(NKeyError) {
        guard rawSeed.count == 32 else { throw NKeyError("an Ed25519 seed is 32 bytes, not \(rawSeed.count)") }
        do {
            privateKey = try Curve25519.Signing.PrivateKey(rawRepresentation: rawSeed)
        } catch {
            throw NKeyError("not an Ed25519 seed")
        }
        self.kind = kind
        publicKey = try NKey.encodePublicKey(Array(privateKey.publicKey.rawRepresentation), kind: kind)
    }

    /// A new random key pair of `kind`.
    public static func generate(_ kind: NKey.Kind) -> NKeyPair {
        var generator = SystemRandomNumberGenerator()
        let seed = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        // 32 bytes are always an Ed25519 seed.
        guard let pair = try? NKeyPair(kind: kind, rawSeed: seed) else { preconditionFailure("32 bytes are a seed") }
        return pair
    }

    /// The seed's text (`SU…`): the secret, for writing a seed or credentials file.
    public func encodedSeed() -> String {
        // The private key's raw representation is its 32-byte seed, which `encodeSeed` always takes.
        (try? NKey.encodeSeed(Array(privateKey.rawRepresentation), kind: kind)) ?? ""
    }

    /// The Ed25519 signature of `message` (64 bytes).
    public func sign(_ message: some Collection<UInt8>) throws(NKeyError) -> [UInt8] {
        do {
            return Array(try privateKey.signature(for: Array(message)))
        } catch {
            throw NKeyError("cannot sign with the NKey \(publicKey)")
        }
    }

    /// The `sig` of a `CONNECT`: the server's `nonce` (its text, as sent) signed, in base64url without padding.
    public func signNonce(_ nonce: String) throws(NKeyError) -> String {
        NKey.base64URLEncode(try sign(Array(nonce.utf8)))
    }

    public var description: String { "NKey \(publicKey)" }

    /// Whether `signature` is `publicKey`'s (a `kind` key's) Ed25519 signature of `message`.
    public static func isValidSignature(
        _ signature: some Collection<UInt8>, of message: some Collection<UInt8>, by publicKey: String, kind: NKey.Kind
    ) -> Bool {
        guard let raw = try? NKey.decodePublicKey(publicKey, kind: kind),
            let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw)
        else { return false }
        return key.isValidSignature(Array(signature), for: Array(message))
    }
}
