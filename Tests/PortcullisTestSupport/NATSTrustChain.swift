import Crypto
import Foundation
import PortcullisNATS

/// NATS's decentralized authentication, minted at test time: an operator, a system account and an account for the
/// gateways (NKeys of their own), the JWTs that bind them (github.com/nats-io/jwt v2's claims, as nats-server
/// 2.9 reads them) and users' `.creds` files. Nothing here is kept: every run makes new keys.
///
/// The claims are the ones nats-server checks: `typ`/`alg` in the header, `iss` and `sub` of the right kinds with
/// the issuer's Ed25519 signature over `header.claims`, `nats.type` and `version: 2`, and limits of -1 (none)
/// where 0 would mean "not one". `jti` is the claims' hash in base32 as nats-io/jwt writes it, with SHA-256
/// where it uses SHA-512/256 (which swift-crypto lacks): nats-server does not recompute it.
public struct NATSTrustChain: Sendable {
    public let operatorKey = NKeyPair.generate(.operator)
    public let systemAccount = NKeyPair.generate(.account)
    /// The account of the gateways' users.
    public let account = NKeyPair.generate(.account)

    public init() {}

    /// The operator's self-signed JWT, naming the system account.
    public func operatorJWT() throws -> String {
        try Self.jwt(
            issuer: operatorKey, subject: operatorKey.publicKey, name: "portcullis-test-operator",
            nats: ["type": "operator", "version": 2, "system_account": systemAccount.publicKey])
    }

    /// An account's JWT, signed by the operator: no limits, no JetStream.
    public func accountJWT(_ account: NKeyPair, name: String) throws -> String {
        let limits: [String: Any] = [
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
        ]
        return try Self.jwt(
            issuer: operatorKey, subject: account.publicKey, name: name,
            nats: ["type": "account", "version": 2, "limits": limits, "default_permissions": ["pub": [:], "sub": [:]]])
    }

    /// A user's JWT, signed by `issuer` (the gateways' account unless given), allowed to publish and subscribe to
    /// `subjects`.
    public func userJWT(_ user: NKeyPair, name: String, subjects: [String], issuer: NKeyPair? = nil) throws -> String {
        try Self.jwt(
            issuer: issuer ?? account, subject: user.publicKey, name: name,
            nats: [
                "type": "user", "version": 2, "pub": ["allow": subjects], "sub": ["allow": subjects],
                "subs": -1, "data": -1, "payload": -1,
            ])
    }

    /// A `.creds` file as `nsc generate creds` writes it.
    public static func credsFile(jwt: String, seed: String) -> String {
        """
        -----BEGIN NATS USER JWT-----
        \(jwt)
        ------END NATS USER JWT------

        ************************* IMPORTANT *************************
        NKEY Seed printed below can be used to sign and prove identity.
        NKEYs are sensitive and should be treated as secrets.

        -----BEGIN USER NKEY SEED-----
        \(seed)
        ------END USER NKEY SEED------

        *************************************************************

        """
    }

    /// What a nats-server configuration needs for operator mode with the accounts preloaded in memory; the
    /// operator's JWT is written to `directory`/operator.jwt.
    public func serverConfiguration(directory: String) throws -> String {
        let path = "\(directory)/operator.jwt"
        try operatorJWT().write(toFile: path, atomically: true, encoding: .utf8)
        return """
            operator: "\(path)"
            system_account: \(systemAccount.publicKey)
            resolver: MEMORY
            resolver_preload: {
              \(systemAccount.publicKey): "\(try accountJWT(systemAccount, name: "SYS"))"
              \(account.publicKey): "\(try accountJWT(account, name: "portcullis-gateways"))"
            }

            """
    }

    /// `header.claims.signature`, each part base64url without padding; the claims get `jti`, `iat`, `iss`, `sub`
    /// and `name` besides `nats`.
    static func jwt(issuer: NKeyPair, subject: String, name: String, nats: [String: Any]) throws -> String {
        let header = try JSONSerialization.data(withJSONObject: ["typ": "JWT", "alg": "ed25519-nkey"], options: [.sortedKeys])
        var claims: [String: Any] = [
            "iat": Int(Date().timeIntervalSince1970), "iss": issuer.publicKey, "name": name, "sub": subject,
        ]
        let hashed = try JSONSerialization.data(withJSONObject: claims, options: [.sortedKeys])
        claims["jti"] = String(decoding: NKey.base32Encode(Array(SHA256.hash(data: hashed))), as: UTF8.self)
        claims["nats"] = nats
        let body = try JSONSerialization.data(withJSONObject: claims, options: [.sortedKeys, .withoutEscapingSlashes])
        let signed = NKey.base64URLEncode(header) + "." + NKey.base64URLEncode(body)
        return signed + "." + NKey.base64URLEncode(try issuer.sign(Array(signed.utf8)))
    }
}
