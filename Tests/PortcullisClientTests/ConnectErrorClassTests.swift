import Foundation
import NIOCore
import NIOSSL
@testable import PortcullisClient
import Testing

/// The one reading of connect errors, behind both the reconnecting client's retry decision and `portcullis
/// connect`'s exit status (`ConnectCommandTests` runs the latter against a gateway).
@Suite("Connect errors by class")
struct ConnectErrorClassTests {
    struct Described: Error, CustomStringConvertible {
        var description: String
    }

    @Test("Each error a connect attempt fails with reads as where it stopped")
    func classes() {
        #expect(ConnectErrorClass(GatewayClient.TimeoutError(timeout: .seconds(2))) == .upgradeTimedOut)
        #expect(ConnectErrorClass(ChannelError.connectTimeout(.seconds(2))) == .connectTimedOut)
        #expect(ConnectErrorClass(ChannelError.ioOnClosedChannel) == .unreachable(attempts: []))
        #expect(ConnectErrorClass(IOError(errnoCode: ECONNREFUSED, reason: "connect")) == .unreachable(attempts: []))
        #expect(ConnectErrorClass(NIOSSLExtraError.failedToValidateHostname) == .hostnameMismatch)
        #expect(ConnectErrorClass(NIOSSLError.uncleanShutdown) == .tlsFailed)
        #expect(ConnectErrorClass(BoringSSLError.syscallError) == .tlsFailed)
        // Whatever carries no type of a stage: with TLS 1.3 a refused certificate can look so.
        #expect(ConnectErrorClass(Described(description: "CERTIFICATE_VERIFY_FAILED")) == .closedWithoutAnswer)
        #expect(ConnectErrorClass(Described(description: "refused")) == .closedWithoutAnswer)
    }

    @Test("An alert the TLS library reports as received wins over the error's type")
    func alerts() {
        let described = Described(description: "sslError([x:SSLV3_ALERT_CERTIFICATE_REVOKED])")
        #expect(ConnectErrorClass(described) == .tlsAlert(TLSAlert.code(44)))
        let reset = IOError(errnoCode: ECONNRESET, reason: "read TLSV1_ALERT_UNKNOWN_CA")
        #expect(ConnectErrorClass(reset) == .tlsAlert(TLSAlert.code(48)))
    }

    @Test(
        "The retry decision follows the class: the gateway's alert and timeouts keep their names, the rest is the network",
        arguments: [
            (GatewayClient.TimeoutError(timeout: .seconds(2)) as any Error, ConnectionFailure.timedOut("no answer to the upgrade within 2.0 s")),
            (ChannelError.connectTimeout(.seconds(2)), .timedOut("connecting")),
            (Described(description: "TLSV1_ALERT_UNKNOWN_CA"), .tlsAlert("unknown_ca")),
            (NIOSSLExtraError.failedToValidateHostname, .network("NIOSSLExtraError.failedToValidateHostname")),
            (NIOSSLError.uncleanShutdown, .network("uncleanShutdown")),
            (IOError(errnoCode: ECONNREFUSED, reason: "connect"), .network("Connection refused (errno \(ECONNREFUSED))")),
        ])
    func retryDecision(error: any Error, failure: ConnectionFailure) {
        #expect(ConnectionFailure(connectError: error) == failure)
    }
}
