import Crypto
import X509
import _CryptoExtras

/// The key types the PKI generates. P-256 is the default: every TLS stack a device may use supports it,
/// and it keeps handshakes cheap.
public enum KeyAlgorithm: String, Sendable, CaseIterable {
    case p256
    case p384
    case rsa3072

    /// A new private key of this type.
    public func generate() throws -> Certificate.PrivateKey {
        switch self {
        case .p256: Certificate.PrivateKey(P256.Signing.PrivateKey())
        case .p384: Certificate.PrivateKey(P384.Signing.PrivateKey())
        case .rsa3072: Certificate.PrivateKey(try _RSA.Signing.PrivateKey(keySize: .bits3072))
        }
    }
}

extension Certificate.PrivateKey {
    /// The signature algorithm this key signs with (the same default swift-certificates uses, which it
    /// does not expose).
    var signatureAlgorithm: Certificate.SignatureAlgorithm {
        let key = publicKey
        if P384.Signing.PublicKey(key) != nil { return .ecdsaWithSHA384 }
        if P521.Signing.PublicKey(key) != nil { return .ecdsaWithSHA512 }
        if _RSA.Signing.PublicKey(key) != nil { return .sha256WithRSAEncryption }
        if Curve25519.Signing.PublicKey(key) != nil { return .ed25519 }
        return .ecdsaWithSHA256
    }
}
