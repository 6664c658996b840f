import FuzzDriver
import FuzzSupport
import Glibc
import PortcullisNATS

/// A NATS credentials file, an NKey seed file, an NKey seed and a public key of every kind, and base64url: the
/// input through each reader. Any input may be refused (with a reason that does not quote it); what is read must
/// be canonical (one key, one text), a user's where a user's is needed, and a key pair must sign what its public
/// key verifies.
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: data, count: count))
    checkFiles(bytes)
    checkTexts(bytes)
    return 0
}

func checkFiles(_ bytes: [UInt8]) {
    do {
        let (jwt, key) = try NATSCredentials.parseCredentialsFile(bytes)
        require(key.kind == .user, "a .creds file gave \(key)")
        let parts = jwt.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        require(parts.count == 3 && parts.allSatisfy { NKey.base64URLDecode($0) != nil }, "a JWT that is not three base64url parts")
        check(key)
    } catch {
        require(!error.description.isEmpty, "an error says why")
    }
    do {
        let key = try NATSCredentials.parseSeedFile(bytes)
        require(key.kind == .user, "a seed file gave \(key)")
        check(key)
    } catch {
        require(!error.description.isEmpty, "an error says why")
    }
}

func checkTexts(_ bytes: [UInt8]) {
    if let key = try? NKeyPair(seed: bytes) {
        require(Array(key.encodedSeed().utf8) == bytes, "a seed that is not its key's one text")
        check(key)
    }
    if let text = String(validating: bytes, as: UTF8.self) {
        for kind in NKey.Kind.allCases {
            guard let raw = try? NKey.decodePublicKey(text, kind: kind) else { continue }
            require(raw.count == 32, "a public key of \(raw.count) bytes")
            require((try? NKey.encodePublicKey(raw, kind: kind)) == text, "a public key that is not its key's one text")
        }
    }
    if let decoded = NKey.base64URLDecode(bytes) {
        require(Array(NKey.base64URLEncode(decoded).utf8) == bytes, "base64url that is not its bytes' one text")
    }
}

/// A key pair read from the input: its seed and public key read back as the same key, and it signs.
func check(_ key: NKeyPair) {
    require(!"\(key)".contains(key.encodedSeed()), "a key pair's description shows its seed")
    guard let again = try? NKeyPair(seed: Array(key.encodedSeed().utf8)) else {
        require(false, "\(key)'s own seed text is refused")
        return
    }
    require(again.publicKey == key.publicKey && again.kind == key.kind, "\(key)'s seed reads as \(again)")
    let message = Array("nonce".utf8)
    guard let signature = try? key.sign(message) else {
        require(false, "\(key) cannot sign")
        return
    }
    require(NKeyPair.isValidSignature(signature, of: message, by: key.publicKey, kind: key.kind), "\(key)'s signature does not verify")
}

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
