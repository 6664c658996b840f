import PortcullisClient
import Testing

@Suite("TLS alerts and gateway URLs, as a device's tools read them")
struct TLSAlertTests {
    @Test("Alerts are found in BoringSSL's and OpenSSL's error texts, the longest name first")
    func namedInErrorText() {
        #expect(TLSAlert.named(in: "error:1000044e:SSL routines:OPENSSL_internal:TLSV1_ALERT_UNKNOWN_CA")?.code == 48)
        #expect(TLSAlert.named(in: "SSLV3_ALERT_CERTIFICATE_UNKNOWN at ssl/tls_record.cc")?.code == 46)
        #expect(TLSAlert.named(in: "ssl3_read_bytes:tlsv13 alert certificate required")?.code == 116)
        #expect(TLSAlert.named(in: "sslv3 alert certificate revoked")?.name == "certificate_revoked")
        #expect(TLSAlert.named(in: "CERTIFICATE_VERIFY_FAILED") == nil)
        #expect(TLSAlert.code(46).explanation.contains("clientAuth"))
        #expect(TLSAlert.code(200).name == "alert_200")
    }

    @Test("Gateway URLs: wss only, port 443 by default, IPv6 in brackets, the query kept")
    func gatewayURLs() throws {
        let plain = try GatewayURL(parsing: "wss://gw.example.com/v1/messages")
        #expect(plain.host == "gw.example.com" && plain.port == 443 && plain.path == "/v1/messages")
        let v6 = try GatewayURL(parsing: "wss://[::1]:8443/v1/echo?x=1")
        #expect(v6.host == "::1" && v6.port == 8443 && v6.path == "/v1/echo?x=1")
        #expect(v6.description == "wss://[::1]:8443/v1/echo?x=1")
        #expect(try GatewayURL(parsing: "wss://h").path == "/")
        for bad in ["ws://h/", "https://h/", "wss:///x", "wss://h:0/", "wss://h:70000/", "not a url"] {
            #expect(throws: GatewayURL.Invalid.self, "\(bad)") { try GatewayURL(parsing: bad) }
        }
    }
}
