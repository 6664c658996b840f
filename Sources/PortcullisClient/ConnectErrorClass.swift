import NIOCore
import NIOPosix
import NIOSSL

/// Where an attempt to connect (name resolution, TCP, TLS, the upgrade) stopped, read from the error
/// `GatewayClient.connect` failed with.
///
/// The one reading of connect errors: the reconnecting client decides from it whether to try again
/// (``ConnectionFailure/init(connectError:)``), and `portcullis connect` its exit status and message.
public enum ConnectErrorClass: Sendable, Equatable {
    /// The gateway ended the TLS handshake with this alert, as the TLS library's error names it.
    case tlsAlert(TLSAlert)
    /// The gateway took the connection but did not answer the upgrade in time (``GatewayClient/TimeoutError``).
    case upgradeTimedOut
    /// TCP's connect did not complete within NIO's connect timeout.
    case connectTimedOut
    /// The host name resolved to no address.
    case unresolved
    /// TCP failed (refused, reset, no route): `attempts` are the addresses tried and their errors
    /// (`address: error`, in order), empty when the error came from the socket or channel itself.
    case unreachable(attempts: [String])
    /// The gateway's certificate does not name the host (or the server name) asked for.
    case hostnameMismatch
    /// The gateway's certificate does not verify against the trusted CAs here.
    case gatewayUntrusted
    /// TLS failed otherwise.
    case tlsFailed
    /// Anything else. The gateway refuses a certificate in the handshake; with TLS 1.3 that can reach the client
    /// as a connection closed before any HTTP answer.
    case closedWithoutAnswer

    /// The class of `error`, thrown while connecting.
    public init(_ error: any Error) {
        // Our own deadline first: its description is ours, and names no alert.
        if error is GatewayClient.TimeoutError {
            self = .upgradeTimedOut
            return
        }
        let text = String(describing: error)
        if let alert = TLSAlert.named(in: text) {
            self = .tlsAlert(alert)
            return
        }
        switch error {
        case let connection as NIOConnectionError:
            self =
                connection.connectionErrors.isEmpty
                ? .unresolved : .unreachable(attempts: connection.connectionErrors.map { "\($0.target): \($0.error)" })
        case let channel as ChannelError:
            if case .connectTimeout = channel {
                self = .connectTimedOut
            } else {
                self = .unreachable(attempts: [])
            }
        case is IOError:
            self = .unreachable(attempts: [])
        case is NIOSSLExtraError where text.contains("hostname") || text.contains("Hostname"):
            self = .hostnameMismatch
        case is NIOSSLError, is BoringSSLError, is NIOSSLExtraError:
            self = text.contains("CERTIFICATE_VERIFY_FAILED") ? .gatewayUntrusted : .tlsFailed
        default:
            self = .closedWithoutAnswer
        }
    }
}
