import Crypto
import Foundation
import SwiftASN1
import X509

#if canImport(Glibc)
import Glibc
#endif

/// The Ed25519 key that signs the log's checkpoints. It lives in the audit directory, apart from the TLS
/// keys: whoever can edit the log files but cannot read this key cannot forge a checkpoint.
public struct CheckpointSigner: Sendable {
    let key: Curve25519.Signing.PrivateKey
    /// SHA-256 (hex) of the raw public key, written into every checkpoint.
    public let keyID: String

    init(key: Curve25519.Signing.PrivateKey) {
        self.key = key
        self.keyID = String(decoding: AuditChain.hex(SHA256.hash(data: key.publicKey.rawRepresentation)), as: UTF8.self)
    }

    /// Loads the directory's checkpoint key, creating it (0600, and its public half 0644) when there is none.
    /// Two processes creating it at once agree on one: the key is linked into place, never overwritten.
    public static func loadOrCreate(in directory: AuditDirectory) throws -> CheckpointSigner {
        if let existing = try load(directory.checkpointKey) { return existing }
        let key = Curve25519.Signing.PrivateKey()
        let pem = try Certificate.PrivateKey(key).serializeAsPEM().pemString + "\n"
        let temporary = "\(directory.checkpointKey).\(getpid()).tmp"
        try writeFile(temporary, pem, mode: 0o600)
        defer { unlink(temporary) }
        if link(temporary, directory.checkpointKey) != 0 && errno != EEXIST {
            throw AuditFileError("cannot create \(directory.checkpointKey): \(String(cString: strerror(errno)))")
        }
        guard let signer = try load(directory.checkpointKey) else {
            throw AuditFileError("cannot read \(directory.checkpointKey)")
        }
        let publicPEM = try Certificate.PublicKey(signer.key.publicKey).serializeAsPEM().pemString + "\n"
        let publicTemporary = "\(directory.checkpointPublicKey).\(getpid()).tmp"
        try writeFile(publicTemporary, publicPEM, mode: 0o644)
        if rename(publicTemporary, directory.checkpointPublicKey) != 0 { unlink(publicTemporary) }
        return signer
    }

    private static func load(_ path: String) throws -> CheckpointSigner? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw AuditFileError("cannot read \(path): \(String(cString: strerror(errno)))")
        }
        // An Ed25519 PKCS #8 key is this fixed 16-byte prefix and the 32-byte seed (RFC 8410); X509 writes the
        // format but does not hand the Curve25519 key back out of it.
        let prefix: [UInt8] = [0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]
        guard let document = try? PEMDocument(pemString: text), document.discriminator == "PRIVATE KEY",
            document.derBytes.count == prefix.count + 32, Array(document.derBytes.prefix(prefix.count)) == prefix,
            let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: document.derBytes.suffix(32))
        else {
            throw AuditFileError("\(path) is not an Ed25519 private key")
        }
        return CheckpointSigner(key: key)
    }

    /// A signature of the second format: `v2:` and the base64 Ed25519 signature of
    /// ``AuditChain/checkpointMessage(kind:seq:hash:time:)``.
    func sign(kind: String, seq: UInt64, hash: [UInt8], time: String) throws -> String {
        let message = AuditChain.checkpointMessage(kind: kind, seq: seq, hash: hash, time: time)
        return Self.versionPrefix + (try key.signature(for: message).base64EncodedString())
    }

    static let versionPrefix = "v2:"
}

/// Checks checkpoint signatures with the public key (the one in the audit directory, or one kept elsewhere).
public struct CheckpointVerifier: Sendable {
    let key: Curve25519.Signing.PublicKey
    public let keyID: String

    public init(publicKeyPEM: String) throws {
        guard let key = Curve25519.Signing.PublicKey(try Certificate.PublicKey(pemEncoded: publicKeyPEM)) else {
            throw AuditFileError("not an Ed25519 public key")
        }
        self.key = key
        self.keyID = String(decoding: AuditChain.hex(SHA256.hash(data: key.rawRepresentation)), as: UTF8.self)
    }

    /// Checks a signature of either format: `v2:…` over kind, seq, hash and time, or (a log written before the
    /// second format) a bare base64 signature over seq and hash alone.
    public func isValid(signature text: String, kind: String, seq: UInt64, hash: [UInt8], time: String) -> Bool {
        if text.hasPrefix(CheckpointSigner.versionPrefix) {
            guard let signature = Data(base64Encoded: String(text.dropFirst(CheckpointSigner.versionPrefix.count)))
            else { return false }
            return key.isValidSignature(
                signature, for: AuditChain.checkpointMessage(kind: kind, seq: seq, hash: hash, time: time))
        }
        guard let signature = Data(base64Encoded: text) else { return false }
        return key.isValidSignature(signature, for: AuditChain.checkpointMessage(seq: seq, hash: hash))
    }

    /// Whether `signature` is of the first format, whose time is not signed.
    public static func isLegacy(_ signature: String) -> Bool { !signature.hasPrefix(CheckpointSigner.versionPrefix) }
}

/// The latest checkpoint, kept in `checkpoint.json` beside the segments so that a log cut short after it
/// (records removed from the end) is noticed.
public struct Checkpoint: Codable, Sendable, Equatable {
    /// The last record the checkpoint covers.
    public var seq: UInt64
    public var hash: String
    public var time: String
    public var key: String
    public var signature: String
    /// Whether the writer stopped after signing it (a clean shutdown): a stopped log is not expected to be
    /// re-signed, a running one is, every checkpoint interval. Signed with the rest (as the `closed` kind).
    public var closed: Bool?

    /// The statement its signature covers (``AuditChain/checkpointMessage(kind:seq:hash:time:)``).
    public var kind: String { closed == true ? "closed" : "latest" }

    /// Replaces `checkpoint.json` atomically and durably.
    func write(to directory: AuditDirectory) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let text = String(decoding: try encoder.encode(self), as: UTF8.self) + "\n"
        let temporary = "\(directory.latestCheckpoint).\(getpid()).tmp"
        try writeFile(temporary, text, mode: 0o644)
        guard rename(temporary, directory.latestCheckpoint) == 0 else {
            unlink(temporary)
            throw AuditFileError("cannot replace \(directory.latestCheckpoint): \(String(cString: strerror(errno)))")
        }
        syncDirectory(directory.path)
    }

    public static func read(from directory: AuditDirectory) throws -> Checkpoint? {
        guard let data = FileManager.default.contents(atPath: directory.latestCheckpoint) else { return nil }
        return try JSONDecoder().decode(Checkpoint.self, from: data)
    }
}

/// A file-level failure of the audit log, said in words.
public struct AuditFileError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Writes `text` to a new file with `mode`, fsync'd.
func writeFile(_ path: String, _ text: String, mode: mode_t) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else { throw AuditFileError("cannot create \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    fchmod(fd, mode)
    let bytes = Array(text.utf8)
    if let error = writeAll(fd, bytes) { throw AuditFileError("cannot write \(path): \(error)") }
    guard fsync(fd) == 0 else { throw AuditFileError("cannot write \(path): \(String(cString: strerror(errno)))") }
}

/// Writes every byte, retrying short writes; the error in words, or nil.
func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> String? {
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if written < 0 {
            if errno == EINTR { continue }
            return String(cString: strerror(errno))
        }
        offset += written
    }
    return nil
}

/// Makes a rename or a new file in `path` durable.
func syncDirectory(_ path: String) {
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return }
    fsync(fd)
    close(fd)
}
