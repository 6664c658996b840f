import PortcullisProtocol

/// The files that hold a NATS user's secrets, read into what signs in: a `.creds` file (a user JWT and the user's
/// NKey seed, as `nsc` writes it) or a file holding only a user NKey seed (for nats-server's `nkey:` users).
///
/// Bounded and total: any bytes give a value or an ``NKeyError`` that says what is wrong without quoting the file.
public enum NATSCredentials {
    /// The largest file read: nats-server takes JWTs of up to 1 MiB, and the seed and decorations are a few lines.
    public static let maximumFileSize = (1 << 20) + 4096

    /// A `.creds` file: the user JWT between `-----BEGIN NATS USER JWT-----` and `------END NATS USER JWT------`,
    /// then the user's seed between `-----BEGIN USER NKEY SEED-----` and `------END USER NKEY SEED------` (each on
    /// the one line between its markers; other lines, such as nsc's warning, are ignored). The JWT must be for
    /// the seed's public key.
    public static func parseCredentialsFile(_ bytes: [UInt8]) throws(NKeyError) -> (jwt: String, key: NKeyPair) {
        guard bytes.count <= maximumFileSize else {
            throw NKeyError("larger than \(maximumFileSize) bytes: not a .creds file")
        }
        let lines = Self.lines(bytes)
        guard let jwtBytes = block(named: "NATS USER JWT", in: lines) else {
            throw NKeyError(
                "no user JWT: a .creds file has a line '-----BEGIN NATS USER JWT-----', the JWT on the next line, "
                    + "then '------END NATS USER JWT------' (as nsc writes it)")
        }
        guard let seedBytes = block(named: "USER NKEY SEED", in: lines) else {
            throw NKeyError(
                "no NKey seed: a .creds file has a line '-----BEGIN USER NKEY SEED-----', the seed on the next line, "
                    + "then '------END USER NKEY SEED------' (as nsc writes it)")
        }
        let key = try userKey(seedBytes)
        let subject = try userSubject(of: jwtBytes)
        guard subject == key.publicKey else {
            throw NKeyError(
                "the user JWT is for \(subject), but the seed is the key of \(key.publicKey): "
                    + "they are not one user's")
        }
        return (String(decoding: jwtBytes, as: UTF8.self), key)
    }

    /// A file holding a user's NKey seed (`SU…`) on a line of its own, as `nk -gen user` writes it; blank lines
    /// around it are ignored, and so are the decorations of a `.creds` file's seed block.
    public static func parseSeedFile(_ bytes: [UInt8]) throws(NKeyError) -> NKeyPair {
        guard bytes.count <= maximumFileSize else {
            throw NKeyError("larger than \(maximumFileSize) bytes: not an NKey seed file")
        }
        let lines = Self.lines(bytes)
        if let seed = block(named: "USER NKEY SEED", in: lines) { return try userKey(seed) }
        let filled = lines.filter { !$0.isEmpty }
        guard filled.count == 1, let seed = filled.first else {
            throw NKeyError("expected one line holding a user NKey seed (SU…), found \(filled.count) lines")
        }
        return try userKey(seed)
    }

    // MARK: Parts

    /// The file's lines without their line ends and surrounding blanks.
    private static func lines(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map(trimmed)
    }

    private static func trimmed(_ line: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        let blank: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }
        guard let start = line.firstIndex(where: { !blank($0) }), let end = line.lastIndex(where: { !blank($0) })
        else { return line[line.endIndex...] }
        return line[start...end]
    }

    /// The line between `---BEGIN NAME---` and `---END NAME---` (3 dashes or more each side, as nkeys reads them).
    private static func block(named name: String, in lines: [ArraySlice<UInt8>]) -> ArraySlice<UInt8>? {
        guard let begin = lines.firstIndex(where: { marker($0) == "BEGIN " + name }),
            begin + 2 < lines.count, marker(lines[begin + 2]) == "END " + name, !lines[begin + 1].isEmpty
        else { return nil }
        return lines[begin + 1]
    }

    /// `BEGIN NATS USER JWT` for `-----BEGIN NATS USER JWT-----`; nil for a line that is no marker.
    private static func marker(_ line: ArraySlice<UInt8>) -> String? {
        let dash = UInt8(ascii: "-")
        guard line.count > 6, line.prefix(3).allSatisfy({ $0 == dash }), line.suffix(3).allSatisfy({ $0 == dash }),
            let start = line.firstIndex(where: { $0 != dash }), let end = line.lastIndex(where: { $0 != dash })
        else { return nil }
        return String(decoding: line[start...end], as: UTF8.self)
    }

    /// A user's key pair from its seed text.
    private static func userKey(_ seed: ArraySlice<UInt8>) throws(NKeyError) -> NKeyPair {
        let key: NKeyPair
        do {
            key = try NKeyPair(seed: seed)
        } catch {
            throw NKeyError("the NKey seed: \(error)")
        }
        guard key.kind == .user else {
            throw NKeyError("the NKey seed is \(key.kind == .account || key.kind == .operator ? "an" : "a") \(key.kind)'s; signing in takes a user's (SU…)")
        }
        return key
    }

    /// What the gateway checks in a user JWT before using it: three base64url parts, claims that are a JSON
    /// object with a `sub`. nats-server verifies the rest (the issuer's signature, expiry, the account).
    private static func userSubject(of jwt: ArraySlice<UInt8>) throws(NKeyError) -> String {
        let parts = jwt.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard parts.count == 3, let claims = NKey.base64URLDecode(parts[1]),
            NKey.base64URLDecode(parts[0]) != nil, NKey.base64URLDecode(parts[2]) != nil
        else { throw NKeyError("the user JWT is not three base64url parts separated by '.'") }
        let subject = claims.withUnsafeBytes { bytes -> String? in
            guard let members = try? JSONObjectScanner.members(of: bytes),
                let sub = members.first(where: { $0.key == "sub" })
            else { return nil }
            return JSONObjectScanner.string(in: bytes, at: sub.value)
        }
        guard let subject else { throw NKeyError("the user JWT's claims are not a JSON object with a 'sub'") }
        // The subject is a public key: only printed when it is one.
        guard (try? NKey.decodePublicKey(subject, kind: .user)) != nil else {
            throw NKeyError("the user JWT's 'sub' is not a user's public key (U…)")
        }
        return subject
    }
}

/// How the gateway signs in to NATS, its secrets read: what its `CONNECT` carries besides its options.
public enum NATSSignIn: Sendable, CustomStringConvertible {
    /// Nothing in `CONNECT`: no authentication, or TLS's client certificate alone.
    case anonymous
    /// `user` and `pass`.
    case password(user: String, password: String)
    /// `nkey` and `sig`: an NKey user of nats-server's configuration (`authorization { users = [{nkey: U…}] }`).
    case nkey(NKeyPair)
    /// `jwt` and `sig`: a user of an account in operator mode, from a `.creds` file.
    case userJWT(String, NKeyPair)

    /// How it signs in, for messages: names and public keys, never a secret.
    public var description: String {
        switch self {
        case .anonymous: "without credentials"
        case .password(let user, _): "as the user \(user) (password)"
        case .nkey(let key): "with the NKey \(key.publicKey)"
        case .userJWT(_, let key): "with the user JWT of \(key.publicKey) (credentials file)"
        }
    }

    /// The `CONNECT` for a server that sent `info`: an NKey or a JWT signs the server's `nonce`, and a server that
    /// sent none (it has no NKey or JWT users) is refused with the reason.
    public func connect(name: String, tlsRequired: Bool, info: NATSServerInfo) throws(NATSProtocolError) -> [UInt8] {
        switch self {
        case .anonymous:
            return NATSClientCommand.connect(name: name, tlsRequired: tlsRequired)
        case .password(let user, let password):
            return NATSClientCommand.connect(name: name, user: user, password: password, tlsRequired: tlsRequired)
        case .nkey(let key):
            return NATSClientCommand.connect(
                name: name, nkey: key.publicKey, signature: try signature(key, info), tlsRequired: tlsRequired)
        case .userJWT(let jwt, let key):
            return NATSClientCommand.connect(
                name: name, jwt: jwt, signature: try signature(key, info), tlsRequired: tlsRequired)
        }
    }

    private func signature(_ key: NKeyPair, _ info: NATSServerInfo) throws(NATSProtocolError) -> String {
        guard let nonce = info.nonce else {
            throw NATSProtocolError(
                "the NATS server sent no nonce, which signing in \(self) needs: it has no NKey or JWT users "
                    + "(check nats.credentials / nats.nkey_seed_file against the server's authorization)")
        }
        do {
            return try key.signNonce(nonce)
        } catch {
            throw NATSProtocolError("\(error)")
        }
    }
}
