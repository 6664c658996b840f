import Foundation
import NIOCore
@testable import PortcullisClient
import Testing

@Suite("Refusals: permanent or transient")
struct ConnectionFailureTests {
    @Test(
        "Refusals retrying cannot fix are permanent",
        arguments: [
            ConnectionFailure.upgradeRefused(status: 403, reason: "not permitted"),
            .upgradeRefused(status: 401, reason: ""),
            .upgradeRefused(status: 404, reason: "no such route"),
            .upgradeRefused(status: 400, reason: "HTTP/1.1 is required"),
            .upgradeRefused(status: 426, reason: ""),
            .tlsAlert("certificate_revoked"),
            .tlsAlert("unknown_ca"),
            .tlsAlert("bad_certificate"),
            .tlsAlert("certificate_expired"),
            .tlsAlert("certificate_required"),
            .tlsAlert("access_denied"),
            .sessionClosed(code: 1008, reason: "certificate_revoked"),
            .sessionClosed(code: 1008, reason: "certificate_untrusted"),
            .sessionClosed(code: 1008, reason: "no_matching_rule"),
            .sessionClosed(code: 1008, reason: "denied_by_rule"),
        ])
    func permanent(failure: ConnectionFailure) {
        #expect(failure.isPermanent, "\(failure)")
    }

    @Test(
        "Outages, overload and network trouble are transient",
        arguments: [
            ConnectionFailure.upgradeRefused(status: 503, reason: "audit log unavailable"),
            .upgradeRefused(status: 500, reason: ""),
            .upgradeRefused(status: 429, reason: "too many sessions"),
            .upgradeRefused(status: 408, reason: ""),
            .upgradeRefused(status: 200, reason: "") ,
            .network("connection refused (errno: 111)"),
            .network("connection reset by peer (errno: 104)"),
            .timedOut("no answer to the upgrade within 30.0 s"),
            .connectionLost,
            .credentials("no such file"),
            // The alert this gateway sends for every refused certificate: a stale CRL or a wrong clock on the
            // gateway's side must not stop a fleet for good.
            .tlsAlert("certificate_unknown"),
            .tlsAlert("handshake_failure"),
            .tlsAlert("internal_error"),
            .sessionClosed(code: 1001, reason: "going away"),
            .sessionClosed(code: 1000, reason: ""),
            .sessionClosed(code: nil, reason: ""),
            .sessionClosed(code: 1013, reason: "slow consumer"),
            .sessionClosed(code: 1008, reason: "certificate_expired"),
            .sessionClosed(code: 1008, reason: "too_many_violations"),
            .sessionClosed(code: 1008, reason: "rate_limited"),
            // Only a policy close (1008) carries an admission reason.
            .sessionClosed(code: 1000, reason: "certificate_revoked"),
        ])
    func transient(failure: ConnectionFailure) {
        #expect(!failure.isPermanent, "\(failure)")
    }

    @Test(
        "The alert a BoringSSL error reports as received is named as RFC 8446 names it",
        arguments: [
            ("handshakeFailed(sslError([Error: 268436500 error:10000414:SSL routines:OPENSSL_internal:SSLV3_ALERT_CERTIFICATE_REVOKED at ssl/tls_record.cc:592]))", "certificate_revoked"),
            ("sslError([error:10000418:SSL routines:OPENSSL_internal:TLSV1_ALERT_UNKNOWN_CA])", "unknown_ca"),
            ("error:10000412:SSL routines:OPENSSL_internal:SSLV3_ALERT_BAD_CERTIFICATE", "bad_certificate"),
            ("error:1000045c:SSL routines:OPENSSL_internal:TLSV1_ALERT_CERTIFICATE_REQUIRED", "certificate_required"),
            ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "certificate_required"),
        ])
    func alertNames(description: String, alert: String) {
        #expect(ConnectionFailure.tlsAlertName(inErrorDescription: description) == alert)
    }

    @Test(
        "Errors that are not a received alert name none",
        arguments: [
            "handshakeFailed(sslError([error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED]))",
            "connection reset by peer (errno: 104)", "SSLV3_ALERT_", "", "uncleanShutdown",
        ])
    func noAlert(description: String) {
        #expect(ConnectionFailure.tlsAlertName(inErrorDescription: description) == nil)
    }

    @Test("An error with an alert becomes a TLS alert failure; a timeout a timeout; anything else the network")
    func errorsBecomeFailures() {
        struct Described: Error, CustomStringConvertible {
            var description: String
        }
        #expect(
            ConnectionFailure(connectError: Described(description: "sslError([x:SSLV3_ALERT_CERTIFICATE_REVOKED])"))
                == .tlsAlert("certificate_revoked"))
        #expect(ConnectionFailure(connectError: GatewayClient.TimeoutError(timeout: .seconds(2))) == .timedOut("no answer to the upgrade within 2.0 s"))
        #expect(ConnectionFailure(connectError: Described(description: "refused")) == .network("refused"))
        let long = ConnectionFailure(connectError: Described(description: String(repeating: "x", count: 10_000)))
        #expect(long.description.count < 300)
    }

    @Test("A socket error reads as the system names it, with its errno")
    func socketErrors() {
        let refused = ConnectionFailure(connectError: IOError(errnoCode: ECONNREFUSED, reason: "connect"))
        #expect(refused == .network("Connection refused (errno \(ECONNREFUSED))"))
        #expect(!refused.isPermanent)
    }

    @Test("A refusal's reason is its first line, trimmed and bounded")
    func shortReasons() {
        #expect(ConnectionFailure.shortReason("not permitted\n") == "not permitted")
        #expect(ConnectionFailure.shortReason("  first\nsecond") == "first")
        #expect(ConnectionFailure.shortReason("") == "")
        #expect(ConnectionFailure.shortReason(String(repeating: "a", count: 5_000)).count <= ConnectionFailure.maximumDetailLength + 1)
    }

    @Test("A permanent refusal says which: the status or alert, and the gateway's reason")
    func descriptionsNameTheRefusal() {
        #expect(ConnectionFailure.upgradeRefused(status: 403, reason: "not permitted").description == "refused with HTTP 403: not permitted")
        #expect(ConnectionFailure.tlsAlert("certificate_revoked").description.contains("certificate_revoked"))
        #expect(
            StopReason.permanentRefusal(.sessionClosed(code: 1008, reason: "certificate_revoked")).description
                == "permanently refused: the gateway closed the session with 1008 certificate_revoked")
    }
}
