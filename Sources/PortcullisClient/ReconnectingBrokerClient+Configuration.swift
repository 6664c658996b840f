import Foundation

extension ReconnectingBrokerClient {
    /// Where the client connects, with which files, and the bounds it keeps.
    public struct Configuration: Sendable {
        /// The gateway's address and the broker route's path (`/v1/messages` in the dev configuration).
        public var host: String
        public var port: Int
        public var path: String
        /// The name the gateway's certificate must carry (and the SNI sent); defaults to the URL's host. An IP
        /// address is checked against the certificate's IP addresses and not sent as SNI.
        public var serverName: String?
        /// PEM files of the device's certificate (chain), its private key, and the CA that signs the gateway's
        /// certificate. The certificate and key are read again before every attempt, so a renewal written to
        /// them (atomically, as `portcullis pki` does) is used by the next session without a restart.
        public var certificatePath: String
        public var keyPath: String
        public var caPath: String
        /// The waits between attempts.
        public var backoff = ReconnectBackoff()
        /// How many publishes, and how many bytes of them, wait while no session is open.
        public var offlineQueueCapacity = 1000
        public var offlineQueueByteCapacity = 1 << 20
        /// How many deliveries wait for a slow reader of ``ReconnectingBrokerClient/deliveries`` before the oldest
        /// is dropped (and counted).
        public var deliveryBufferCapacity = 1024
        /// How many topic filters the client holds (and renews after every reconnect).
        public var maximumSubscriptions = 256
        /// How long TCP, TLS and the upgrade may take together.
        public var handshakeTimeout: Duration = .seconds(30)
        /// How long the gateway may take to acknowledge a subscription.
        public var requestTimeout: Duration = .seconds(30)
        /// The client pings this often; a gateway that sends nothing at all (not even a pong) for two intervals
        /// is taken as gone, which TCP alone would notice only after many minutes.
        public var heartbeatInterval: Duration = .seconds(20)

        /// - Parameter url: `wss://host[:port]/path`; the port defaults to 443.
        /// - Throws: ``ConfigurationError`` when the URL is not a `wss` URL with a host.
        public init(url: String, certificatePath: String, keyPath: String, caPath: String) throws {
            let endpoint = try Self.endpoint(fromURL: url)
            host = endpoint.host
            port = endpoint.port
            path = endpoint.path
            self.certificatePath = certificatePath
            self.keyPath = keyPath
            self.caPath = caPath
        }

        /// The host, port and path of a `wss://` URL (``GatewayURL``). Only `wss`: the gateway speaks nothing but
        /// TLS, and a client certificate must never be offered over plain TCP.
        static func endpoint(fromURL url: String) throws -> (host: String, port: Int, path: String) {
            do {
                let parsed = try GatewayURL(parsing: url)
                return (parsed.host, parsed.port, parsed.path)
            } catch {
                throw ConfigurationError(description: "\(error)")
            }
        }
    }

    /// A configuration the client cannot work with.
    public struct ConfigurationError: Error, CustomStringConvertible {
        public var description: String
    }
}
