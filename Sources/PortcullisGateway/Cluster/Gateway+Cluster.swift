import Crypto
import Foundation
import NIOSSL
import PortcullisConfig
import PortcullisNATS

extension NATSConnection.Settings {
    /// What `nats` in the configuration asks for, with its files read: the password, the credentials or NKey seed,
    /// and the TLS certificate, key and CA. Throws ``GatewayStartupError`` with every problem found; a problem
    /// names the file and what is wrong with it, never the secret. `warnings` gets what should be fixed but does
    /// not stop the start (a secret file others may read).
    ///
    /// The files are read once each, and ``Settings/credentials`` keeps a digest of what was read: a reload reads
    /// them again and renews the credentials only when the digest differs.
    init(_ nats: GatewayConfiguration.NATS, warnings: inout [String]) throws {
        var problems: [String] = []
        var signIn = NATSSignIn.anonymous
        var digest = SHA256()
        /// Each file's path and bytes go into the digest (the path too: the same bytes moved are a change).
        func read(_ path: String, holding what: String, isSecret: Bool = true, warnings: inout [String]) throws(NKeyError)
            -> [UInt8]
        {
            let bytes = try Self.readFile(path, holding: what, isSecret: isSecret, warnings: &warnings)
            digest.update(data: Array("\(path)\u{0}\(bytes.count)\u{0}".utf8) + bytes)
            return bytes
        }
        if let user = nats.user, let file = nats.passwordFile {
            do {
                // One line; the newline an editor adds is not part of it.
                let bytes = try read(file, holding: "a password", warnings: &warnings)
                guard let password = String(validating: bytes, as: UTF8.self) else { throw NKeyError("not UTF-8 text") }
                signIn = .password(user: user, password: password.trimmingCharacters(in: .newlines))
            } catch {
                problems.append("nats.password_file \(file): \(error)")
            }
        }
        if let file = nats.credentialsFile {
            do {
                let (jwt, key) = try NATSCredentials.parseCredentialsFile(
                    try read(file, holding: "a secret key", warnings: &warnings))
                signIn = .userJWT(jwt, key)
            } catch {
                problems.append("nats.credentials \(file): \(error)")
            }
        }
        if let file = nats.nkeySeedFile {
            do {
                signIn = .nkey(try NATSCredentials.parseSeedFile(try read(file, holding: "a secret key", warnings: &warnings)))
            } catch {
                problems.append("nats.nkey_seed_file \(file): \(error)")
            }
        }
        var tls: NIOSSLContext?
        if nats.secure {
            var configuration = TLSConfiguration.makeClientConfiguration()
            do {
                if let ca = nats.ca {
                    configuration.trustRoots = .certificates(
                        try NIOSSLCertificate.fromPEMBytes(try read(ca, holding: "certificates", isSecret: false, warnings: &warnings)))
                }
            } catch {
                problems.append("nats.tls.ca \(nats.ca ?? ""): \(Self.loadProblem(error))")
            }
            if let certificate = nats.certificate, let key = nats.key {
                do {
                    configuration.certificateChain = try NIOSSLCertificate.fromPEMBytes(
                        try read(certificate, holding: "certificates", isSecret: false, warnings: &warnings)
                    ).map { .certificate($0) }
                } catch {
                    problems.append("nats.tls.certificate \(certificate): \(Self.loadProblem(error))")
                }
                do {
                    configuration.privateKey = .privateKey(
                        try NIOSSLPrivateKey(bytes: try read(key, holding: "a private key", warnings: &warnings), format: .pem))
                } catch {
                    problems.append("nats.tls.key \(key): \(Self.loadProblem(error))")
                }
            }
            if problems.isEmpty {
                do {
                    tls = try NIOSSLContext(configuration: configuration)
                } catch {
                    problems.append("nats.tls: the certificate, key and CA do not make a TLS context (\(error))")
                }
            }
        }
        guard problems.isEmpty else { throw GatewayStartupError(problems: problems) }
        self.init(
            host: nats.host, port: nats.port, name: nats.name ?? ProcessInfo.processInfo.hostName,
            credentials: .init(tls: tls, signIn: signIn, digest: Array(digest.finalize())))
    }

    /// What is wrong with a TLS file: unreadable (said as the reading says it), or not what it should hold.
    private static func loadProblem(_ error: any Error) -> String {
        error is NKeyError ? "\(error)" : "not PEM that NIOSSL can load (\(error))"
    }

    /// The bytes of a file (`what` it holds names it in the messages), read up to what a credentials file can be;
    /// for a secret, a warning when its mode lets the group or others read it (the project writes private keys
    /// 0600, and reads them whatever their mode, as it reads TLS keys: an operator may have reasons, such as a
    /// group the gateway runs in).
    static func readFile(_ path: String, holding what: String, isSecret: Bool, warnings: inout [String]) throws(NKeyError)
        -> [UInt8]
    {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "it is not readable by the gateway" : "there is no such file"
            throw NKeyError("cannot read it (\(reason))")
        }
        defer { try? handle.close() }
        let data: Data
        do {
            data = try handle.read(upToCount: NATSCredentials.maximumFileSize + 1) ?? Data()
        } catch {
            throw NKeyError("cannot read it (\(error.localizedDescription))")
        }
        guard data.count <= NATSCredentials.maximumFileSize else {
            throw NKeyError("larger than \(NATSCredentials.maximumFileSize) bytes, too large to hold \(what)")
        }
        if isSecret,
            let mode = ((try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? NSNumber)?.intValue,
            mode & 0o044 != 0
        {
            warnings.append(
                "\(path) holds \(what) and is readable by its group or others (mode \(String(mode & 0o777, radix: 8))): "
                    + "chmod 600 it, owned by the user the gateway runs as")
        }
        return Array(data)
    }
}
