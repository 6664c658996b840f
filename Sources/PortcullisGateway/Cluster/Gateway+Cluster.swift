import Foundation
import NIOSSL
import PortcullisConfig
import PortcullisNATS

extension NATSConnection.Settings {
    /// What `nats` in the configuration asks for, with its files read: the password, and the TLS certificate,
    /// key and CA. Throws ``GatewayStartupError`` with every problem found.
    init(_ nats: GatewayConfiguration.NATS) throws {
        var problems: [String] = []
        var password: String?
        if let file = nats.passwordFile {
            do {
                // One line; the newline an editor adds is not part of it.
                password = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .newlines)
            } catch {
                problems.append("nats.password_file \(file): cannot read it (\(error.localizedDescription))")
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
            user: nats.user, password: password)
    }
}
