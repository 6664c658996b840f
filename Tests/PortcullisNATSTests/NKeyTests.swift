import PortcullisTestSupport
import Testing

@testable import PortcullisNATS

/// Test vectors from github.com/nats-io/nkeys: its README's user seed and public key, nk's signature with that
/// seed, and the `.creds` file of `creds_utils_test.go` (a user JWT whose issuer signature and subject these tests
/// check too).
enum NKeyVectors {
    static let readmeSeed = "SUAKYRHVIOREXV7EUZTBHUHL7NUMHPMAS7QMDU3GTIUWEI5LDNOXD43IZY"
    static let readmePublicKey = "UD466L6EBCM3YY5HEGHJANNTN4LSKTSUXTH7RILHCKEQMQHTBNLHJJXT"
    /// `nk -sign some.txt -inkey user.seed` of "Hello World!\n" (nkeys' `nk/README.md`).
    static let readmeSignature = "0CK1XmkxNfUGfudxliWTWeoETgIo23m9qowS9yTfYFSrjR8HgAW63jQ3NxPU_jG38hZPW61IZSun37N690CkDg"
    static let credsSeed = "SUAOTBNEUHZDFJT3EUMELT7MQTP24JF3XVCXQNDSCU74G5IU6VAJBKH5LI"
    static let credsUser = "UDE6WTGLTTPCRJRJCKBJRGVNZTLIVR7LEEELR4CYWWWBKJS7XYIKXDUU"
    static let credsIssuer = "AADWLTHICV4SUAGF6EKNVEW5BBP7YRDIBGWGGHZ5JBDOQYA7GUFM6AQU"
    static let credsJWT = "eyJ0eXAiOiJqd3QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJHVDROVU5NRUY3Wk1XQ1JCWFZWVURLUVQ2WllQWjc3VzRKUlFYRDNMMjRIS1VKRUNRSDdRIiwiaWF0IjoxNTkwNzgxNTkzLCJpc3MiOiJBQURXTFRISUNWNFNVQUdGNkVLTlZFVzVCQlA3WVJESUJHV0dHSFo1SkJET1FZQTdHVUZNNkFRVSIsIm5hbWUiOiJPUEVSQVRPUiIsInN1YiI6IlVERTZXVEdMVFRQQ1JKUkpDS0JKUkdWTlpUTElWUjdMRUVFTFI0Q1lXV1dCS0pTN1hZSUtYRFVVIiwibmF0cyI6eyJwdWIiOnt9LCJzdWIiOnt9LCJ0eXBlIjoidXNlciIsInZlcnNpb24iOjJ9fQ.c_XQT04wEoVVNDRjPHeKwe17BOrSpQTcftwIbB7KoNEIz6peZCJDc4-J3emVepHofUOWy7IAo9TlLwYhuGHWAQ"
    static let creds = """
        -----BEGIN NATS USER JWT-----
        \(credsJWT)
        ------END NATS USER JWT------

        ************************* IMPORTANT *************************
        NKEY Seed printed below can be used to sign and prove identity.
        NKEYs are sensitive and should be treated as secrets.

        -----BEGIN USER NKEY SEED-----
        \(credsSeed)
        ------END USER NKEY SEED------

        *************************************************************

        """
}

@Suite("NKeys: seeds, public keys, signatures")
struct NKeyTests {
    @Test("nkeys' README seed gives its public key, and signs what the public key verifies")
    func readmeVector() throws {
        let key = try NKeyPair(seed: Array(NKeyVectors.readmeSeed.utf8))
        #expect(key.kind == .user)
        #expect(key.publicKey == NKeyVectors.readmePublicKey)
        #expect(key.encodedSeed() == NKeyVectors.readmeSeed)
        #expect("\(key)" == "NKey \(NKeyVectors.readmePublicKey)")
        #expect(!"\(key)".contains(NKeyVectors.readmeSeed))
        let signature = try key.sign(Array("Hello World".utf8))
        #expect(signature.count == 64)
        #expect(NKeyPair.isValidSignature(signature, of: Array("Hello World".utf8), by: key.publicKey, kind: .user))
        #expect(!NKeyPair.isValidSignature(signature, of: Array("Hello world".utf8), by: key.publicKey, kind: .user))
        #expect(!NKeyPair.isValidSignature(signature, of: Array("Hello World".utf8), by: NKeyVectors.credsUser, kind: .user))
        // nk's README signs "Hello World!" and a newline with this seed; Ed25519 signatures are deterministic.
        #expect(NKey.base64URLEncode(try key.sign(Array("Hello World!\n".utf8))) == NKeyVectors.readmeSignature)
    }

    @Test("The creds vector: its seed is the JWT's subject, and the JWT's signature verifies against its account issuer")
    func credsVector() throws {
        let key = try NKeyPair(seed: Array(NKeyVectors.credsSeed.utf8))
        #expect(key.publicKey == NKeyVectors.credsUser)
        let parts = NKeyVectors.credsJWT.split(separator: ".")
        let signature = try #require(NKey.base64URLDecode(parts[2].utf8))
        // This JWT's issuer signed its claims part alone, as nats-io/jwt's first version did, where v2 signs
        // `header.claims` (the test JWTs of NATSTrustChain do): still a real Ed25519 vector for an account key.
        let signed = Array(parts[1].utf8)
        #expect(!NKeyPair.isValidSignature(signature, of: Array("\(parts[0]).\(parts[1])".utf8), by: NKeyVectors.credsIssuer, kind: .account))
        #expect(NKeyPair.isValidSignature(signature, of: signed, by: NKeyVectors.credsIssuer, kind: .account))
        // An account key is not a user key, though its bytes verify.
        #expect(!NKeyPair.isValidSignature(signature, of: signed, by: NKeyVectors.credsIssuer, kind: .user))
        #expect(throws: NKeyError.self) { try NKey.decodePublicKey(NKeyVectors.credsIssuer, kind: .user) }
        #expect(try NKey.decodePublicKey(NKeyVectors.credsIssuer, kind: .account).count == 32)
    }

    @Test("The nonce's signature is base64url without padding, and verifies", arguments: ["OA4P2VpZ6hLmGjE", "x", "nonce/with+odd=chars"])
    func nonceSignature(nonce: String) throws {
        let key = try NKeyPair(seed: Array(NKeyVectors.readmeSeed.utf8))
        let text = try key.signNonce(nonce)
        #expect(text.count == 86, "64 bytes are 86 base64url characters without padding")
        #expect(text.utf8.allSatisfy { ($0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0)) })
        let signature = try #require(NKey.base64URLDecode(text.utf8))
        #expect(NKeyPair.isValidSignature(signature, of: Array(nonce.utf8), by: key.publicKey, kind: .user))
    }

    @Test("Every kind round-trips: seed text, key pair, public key")
    func roundTrips() throws {
        var random = SplitMix64(state: 42)
        for kind in NKey.Kind.allCases {
            for _ in 0..<20 {
                let raw = (0..<32).map { _ in UInt8.random(in: 0...255, using: &random) }
                let key = try NKeyPair(kind: kind, rawSeed: raw)
                let seed = key.encodedSeed()
                #expect(seed.utf8.count == NKey.seedTextLength && seed.hasPrefix("S"))
                #expect(key.publicKey.utf8.count == NKey.publicKeyTextLength)
                let again = try NKeyPair(seed: Array(seed.utf8))
                #expect(again.kind == kind && again.publicKey == key.publicKey)
                #expect(try NKey.encodePublicKey(try NKey.decodePublicKey(key.publicKey, kind: kind), kind: kind) == key.publicKey)
            }
        }
        #expect(NKeyPair.generate(.operator).publicKey.hasPrefix("O"))
        #expect(NKeyPair.generate(.account).publicKey.hasPrefix("A"))
        #expect(NKeyPair.generate(.user).encodedSeed().hasPrefix("SU"))
    }

    @Test("Base64url round-trips every length, and refuses padding, other alphabets and stray bits")
    func base64URL() {
        var random = SplitMix64(state: 7)
        for length in 0..<70 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
            let text = NKey.base64URLEncode(bytes)
            #expect(!text.contains("=") && !text.contains("+") && !text.contains("/"))
            #expect(NKey.base64URLDecode(text.utf8) == bytes)
        }
        #expect(NKey.base64URLEncode(Array("hello".utf8)) == "aGVsbG8")
        #expect(NKey.base64URLEncode([0xFB, 0xFF]) == "-_8")
        for bad in ["aGVsbG8=", "a+b/", "a", "aGVsbG9", "aGVsbG8 "] {
            #expect(NKey.base64URLDecode(bad.utf8) == nil, "\(bad)")
        }
    }

    /// Variations of a good seed that must each be refused, with a reason that does not quote the seed.
    @Test("Damaged, mistyped and foreign seeds are refused without quoting them")
    func badSeeds() throws {
        let good = NKeyVectors.readmeSeed
        var variants: [(String, String)] = [
            ("", "58 characters"),
            (String(good.dropLast()), "58 characters"),
            (good + "A", "longer"),
            (good.lowercased(), "not base32"),
            (String(good.prefix(10)) + "1" + String(good.dropFirst(11)), "not base32"),
            (String(good.prefix(57)) + "Z", "base32 ends in bits"),
            (String(good.prefix(20)) + (good[good.index(good.startIndex, offsetBy: 20)] == "A" ? "B" : "A") + String(good.dropFirst(21)), "checksum"),
            (NKeyVectors.readmePublicKey + "AA", "checksum"),
        ]
        // Texts whose checksum matches but that are no seed: zeros (their CRC is 0), a user public key's prefix,
        // a seed of a kind that does not exist.
        let body = [UInt8](repeating: 7, count: 32)
        variants.append((String(repeating: "A", count: 58), "a seed starts with 'S'"))
        variants.append((NKey.encode([NKey.Kind.user.rawValue, 0] + body), "a seed starts with 'S'"))
        variants.append((NKey.encode([NKey.seedPrefix | 0x07, 0xF8] + body), "names no kind"))
        variants.append((NKey.encode([NKey.seedPrefix | 0x05, 0x01] + body), "names no kind"))
        for (text, reason) in variants {
            do {
                _ = try NKeyPair(seed: Array(text.utf8))
                Issue.record("accepted \(text)")
            } catch {
                #expect(error.description.contains(reason), "\(text): \(error)")
                #expect(text.isEmpty || !error.description.contains(text), "\(error)")
                #expect(!error.description.contains(good), "\(error)")
            }
        }
        #expect(throws: NKeyError.self) { try NKeyPair(kind: .user, rawSeed: [1, 2, 3]) }
        #expect(throws: NKeyError.self) { try NKey.encodePublicKey([1], kind: .user) }
        #expect(throws: NKeyError.self) { try NKey.decodePublicKey(String(NKeyVectors.readmePublicKey.dropLast()), kind: .user) }
        #expect(throws: NKeyError.self) { try NKey.decodePublicKey(NKeyVectors.readmeSeed, kind: .user) }
    }
}

@Suite("NATS credentials files and signing in")
struct NATSCredentialsTests {
    @Test("nkeys' .creds file gives its JWT and seed, with LF or CRLF line ends")
    func credsFile() throws {
        for text in [NKeyVectors.creds, NKeyVectors.creds.replacingOccurrences(of: "\n", with: "\r\n")] {
            let (jwt, key) = try NATSCredentials.parseCredentialsFile(Array(text.utf8))
            #expect(jwt == NKeyVectors.credsJWT)
            #expect(key.publicKey == NKeyVectors.credsUser)
        }
    }

    @Test(
        "A .creds file that is not whole, or whose seed is not its JWT's user's, is refused with what is wrong",
        arguments: [
            ("", "no user JWT"),
            ("just text\n", "no user JWT"),
            ("-----BEGIN NATS USER JWT-----\n\(NKeyVectors.credsJWT)\n------END NATS USER JWT------\n", "no NKey seed"),
            ("-----BEGIN NATS USER JWT-----\nnot.a-jwt\n------END NATS USER JWT------\n-----BEGIN USER NKEY SEED-----\n\(NKeyVectors.credsSeed)\n------END USER NKEY SEED------\n", "not three base64url parts"),
            ("-----BEGIN NATS USER JWT-----\neyJ9.e30.AA\n------END NATS USER JWT------\n-----BEGIN USER NKEY SEED-----\n\(NKeyVectors.credsSeed)\n------END USER NKEY SEED------\n", "not a JSON object with a 'sub'"),
            ("-----BEGIN NATS USER JWT-----\n\(NKeyVectors.credsJWT)\n------END NATS USER JWT------\n-----BEGIN USER NKEY SEED-----\n\(NKeyVectors.readmeSeed)\n------END USER NKEY SEED------\n", "they are not one user's"),
            ("-----BEGIN NATS USER JWT-----\n\(NKeyVectors.credsJWT)\n------END NATS USER JWT------\n-----BEGIN USER NKEY SEED-----\n\(String(NKeyVectors.credsSeed.dropLast()))\n------END USER NKEY SEED------\n", "the NKey seed: "),
            ("-----BEGIN NATS USER JWT-----\n\(NKeyVectors.credsJWT)\n------END NATS USER JWT------\n-----BEGIN USER NKEY SEED-----\n\n------END USER NKEY SEED------\n", "no NKey seed"),
        ])
    func badCredsFiles(text: String, reason: String) {
        do {
            _ = try NATSCredentials.parseCredentialsFile(Array(text.utf8))
            Issue.record("accepted")
        } catch {
            #expect(error.description.contains(reason), "\(error)")
            #expect(!error.description.contains(NKeyVectors.credsSeed) && !error.description.contains(NKeyVectors.readmeSeed))
        }
    }

    @Test("A seed file holds one user seed on a line; anything else is refused")
    func seedFile() throws {
        #expect(try NATSCredentials.parseSeedFile(Array("\(NKeyVectors.readmeSeed)\n".utf8)).publicKey == NKeyVectors.readmePublicKey)
        #expect(try NATSCredentials.parseSeedFile(Array("\n  \(NKeyVectors.readmeSeed)\r\n\n".utf8)).publicKey == NKeyVectors.readmePublicKey)
        // A .creds file's seed block is a seed file too.
        #expect(try NATSCredentials.parseSeedFile(Array(NKeyVectors.creds.utf8)).publicKey == NKeyVectors.credsUser)
        let account = NKeyPair.generate(.account).encodedSeed()
        for (text, reason) in [
            ("", "found 0 lines"), ("\(NKeyVectors.readmeSeed)\n\(NKeyVectors.credsSeed)\n", "found 2 lines"),
            (account, "an account's; signing in takes a user's"), ("SUAKYRHVIOREXV7\n", "58 characters"),
        ] {
            do {
                _ = try NATSCredentials.parseSeedFile(Array(text.utf8))
                Issue.record("accepted \(text)")
            } catch {
                #expect(error.description.contains(reason), "\(error)")
                #expect(!error.description.contains(account))
            }
        }
        #expect(throws: NKeyError.self) {
            try NATSCredentials.parseSeedFile([UInt8](repeating: 0x41, count: NATSCredentials.maximumFileSize + 1))
        }
    }

    @Test("CONNECT with an NKey or a JWT carries the signed nonce; without a nonce it is refused, saying why")
    func connect() throws {
        let key = try NKeyPair(seed: Array(NKeyVectors.credsSeed.utf8))
        let info = NATSServerInfo(supportsHeaders: true, nonce: "OA4P2VpZ6hLmGjE")
        func members(_ command: [UInt8]) throws -> [String: String] {
            let text = String(decoding: command, as: UTF8.self)
            #expect(text.hasPrefix("CONNECT {") && text.hasSuffix("}\r\n"))
            var result: [String: String] = [:]
            for key in ["nkey", "jwt", "sig", "user", "pass"] {
                guard let range = text.range(of: "\"\(key)\":\"") else { continue }
                let rest = text[range.upperBound...]
                result[key] = String(rest[..<rest.firstIndex(of: "\"")!])
            }
            return result
        }
        let nkey = try members(try NATSSignIn.nkey(key).connect(name: "gw", tlsRequired: false, info: info))
        #expect(nkey["nkey"] == NKeyVectors.credsUser && nkey["jwt"] == nil && nkey["pass"] == nil)
        let nkeySignatureText = try #require(nkey["sig"])
        let nkeySignature = try #require(NKey.base64URLDecode(nkeySignatureText.utf8))
        #expect(NKeyPair.isValidSignature(nkeySignature, of: Array("OA4P2VpZ6hLmGjE".utf8), by: NKeyVectors.credsUser, kind: .user))

        let jwt = try members(try NATSSignIn.userJWT(NKeyVectors.credsJWT, key).connect(name: "gw", tlsRequired: true, info: info))
        #expect(jwt["jwt"] == NKeyVectors.credsJWT && jwt["nkey"] == nil)
        let jwtSignatureText = try #require(jwt["sig"])
        let jwtSignature = try #require(NKey.base64URLDecode(jwtSignatureText.utf8))
        #expect(NKeyPair.isValidSignature(jwtSignature, of: Array("OA4P2VpZ6hLmGjE".utf8), by: NKeyVectors.credsUser, kind: .user))

        let password = try members(try NATSSignIn.password(user: "gateway", password: "s").connect(name: "gw", tlsRequired: false, info: NATSServerInfo()))
        #expect(password == ["user": "gateway", "pass": "s"])

        for signIn in [NATSSignIn.nkey(key), .userJWT(NKeyVectors.credsJWT, key)] {
            do {
                _ = try signIn.connect(name: "gw", tlsRequired: false, info: NATSServerInfo(supportsHeaders: true))
                Issue.record("signed in without a nonce")
            } catch {
                #expect(error.description.contains("sent no nonce"), "\(error)")
                #expect(error.description.contains(NKeyVectors.credsUser), "names the key: \(error)")
            }
            #expect(!"\(signIn)".contains(NKeyVectors.credsSeed))
        }
    }

    @Test("INFO's nonce is read, and one that is not short printable text is refused")
    func infoNonce() throws {
        var parser = NATSServerParser()
        parser.feed(Array(#"INFO {"server_id":"N","headers":true,"nonce":"OA4P2VpZ6hLmGjE","auth_required":true}"#.utf8) + [13, 10])
        #expect(try parser.next() == .info(NATSServerInfo(serverID: "N", supportsHeaders: true, authRequired: true, nonce: "OA4P2VpZ6hLmGjE")))
        for bad in [#""""#, "1", #""a b""#, "\"" + String(repeating: "n", count: 257) + "\""] {
            var refusing = NATSServerParser()
            refusing.feed(Array("INFO {\"nonce\":\(bad)}\r\n".utf8))
            #expect(throws: NATSProtocolError.self, "\(bad)") { try refusing.next() }
        }
    }
}
