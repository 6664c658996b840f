import Foundation
import NIOSSL
import PortcullisConfig
import PortcullisNATS

extension NATSConnection.Settings {
    /// What `nats` in the configuration asks for, with its files read: the password, the credentials or NKey seed,
    /// and the TLS certificate, key and CA. Throws ``GatewayStartupError`` with every problem found; a problem
    /// names the file and what is wrong with it, never the secret. `warnings` gets what should be fixed but does
    /// not stop the start (a secret file others may read).
    init(_ nats: GatewayConfiguration.NATS, warnings: inout [String]) throws {
        var problems: [String] = []
        var signIn = NATSSignIn.anonymous
        if let user = nats.user, let file = nats.passwordFile {
            do {
                // One line; the newline an editor adds is not part of it.
                let bytes = try Self.readSecret(file, holding: "a password", warnings: &warnings)
                guard let password = String(validating: bytes, as: UTF8.self) else { throw NKeyError("not UTF-8 text") }
                signIn = .password(user: user, password: password.trimmingCharacters(in: .newlines))
            } catch {
                problems.append("nats.password_file \(file): \(error)")
            }
        }
        if let file = nats.credentialsFile {
            do {
                let (jwt, key) = try NATSCredentials.parseCredentialsFile(
                    try Self.readSecret(file, holding: "a secret key", warnings: &warnings))
                signIn = .userJWT(jwt, key)
            } catch {
                problems.append("nats.credentials \(file): \(error)")
            }
        }
        if let file = nats.nkeySeedFile {
            do {
                signIn = .nkey(
                    try NATSCredentials.parseSeedFile(try Self.readSecret(file, holding: "a secret key", warnings: &warnings)))
            } catch {
                problems.append("nats.nkey_seed_file \(file): \(error)")
            }
        }
        var tls: NIOSSLContext?
        if nats.secure {
            do {
                var configuration = TLSConfiguration.makeClientConfiguration()
                if let ca = nats.ca { configuration.trustRoots = .file(ca) }
                if let certificate = nats.certificate, let key = nats.key {
                    configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                    configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
                }
                tls = try NIOSSLContext(configuration: configuration)
            } catch {
                problems.append("nats.tls: cannot load the certificate, key or CA (\(error))")
            }
        }
        guard problems.isEmpty else { throw GatewayStartupError(problems: problems) }
        self.init(
            host: nats.host, port: nats.port, tls: tls, name: nats.name ?? ProcessInfo.processInfo.hostName,
            signIn: signIn)
    }

    /// The bytes of a file holding a secret (`what` says which, for the messages), read up to what a credentials
    /// file can be; a warning when its mode lets the group or others read it (the project writes private keys
    /// 0600, and reads them whatever their mode, as it reads TLS keys: an operator may have reasons, such as a
    /// group the gateway runs in).
    static func readSecret(_ path: String, holding what: String, warnings: inout [String]) throws(NKeyError) -> [UInt8] {
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
        if let mode = ((try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? NSNumber)?.intValue,
            mode & 0o044 != 0
        {
            warnings.append(
                "\(path) holds \(what) and is readable by its group or others (mode \(String(mode & 0o777, radix: 8))): "
                    + "chmod 600 it, owned by the user the gateway runs as")
        }
        return Array(data)
    }
}
