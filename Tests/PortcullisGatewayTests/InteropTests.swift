import Foundation
import PortcullisPKI
import Testing
import X509

/// The same admission scenarios through clients we did not write: OpenSSL's `s_client`, GnuTLS's `gnutls-cli`
/// and Python's `websockets` (OpenSSL underneath). Both TLS stacks must be admitted and refused alike.
@Suite("Interoperability with OpenSSL, GnuTLS and Python websockets")
struct InteropTests {
    enum Stack: String, CaseIterable, CustomTestStringConvertible {
        case openssl, gnutls
        var testDescription: String { rawValue }
    }

    static func credential(_ name: String, in gw: TestGateway) -> TestPKI.Credential? {
        switch name {
        case "device": gw.device
        case "foreign": gw.foreign
        case "expired": gw.expired
        case "noClientAuth": gw.noClientAuth
        case "revoked": gw.revoked
        default: nil
        }
    }

    /// Sends `request` over TLS with the given stack and client certificate; returns everything it printed.
    static func exchange(
        _ stack: Stack, _ gw: TestGateway, credential: TestPKI.Credential?, request: String,
        extra: [String] = []
    ) async throws -> ExternalTool.Result {
        switch stack {
        case .openssl:
            var arguments = ["s_client", "-connect", "127.0.0.1:\(gw.port)", "-servername", "localhost", "-CAfile",
                             gw.pki.caPath, "-verify_return_error", "-quiet", "-no_ign_eof"]
            if let credential { arguments += ["-cert", credential.certificate, "-key", credential.key] }
            return try await ExternalTool("openssl").run(arguments + extra, input: request)
        case .gnutls:
            var arguments = ["--x509cafile", gw.pki.caPath, "-p", "\(gw.port)"]
            if let credential { arguments += ["--x509certfile", credential.certificate, "--x509keyfile", credential.key] }
            return try await ExternalTool("gnutls-cli").run(arguments + extra + ["127.0.0.1"], input: request)
        }
    }

    @Test("A valid device certificate is admitted", arguments: Stack.allCases)
    func validCertificateIsAdmitted(stack: Stack) async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout) { gw in
            let result = try await Self.exchange(stack, gw, credential: gw.device, request: upgradeRequest())
            #expect(result.output.contains("HTTP/1.1 101 Switching Protocols"), "\(result.all)")
            #expect(result.output.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
            let opened = try #require(await gw.auditRecord { $0.event == "session_opened" })
            #expect(opened.identity == "demo-device")
        }
    }

    @Test(
        "Bad client certificates are refused in the handshake by both TLS stacks, with the same reason",
        arguments: Stack.allCases, [
            ("none", "no_client_certificate"), ("foreign", "certificate_untrusted"),
            ("expired", "certificate_expired"), ("noClientAuth", "certificate_missing_client_auth"),
            ("revoked", "certificate_revoked"),
        ])
    func badCertificatesAreRefused(stack: Stack, scenario: (String, String)) async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout) { gw in
            let result = try await Self.exchange(
                stack, gw, credential: Self.credential(scenario.0, in: gw), request: upgradeRequest())
            #expect(!result.output.contains("101 Switching Protocols"), "\(result.all)")
            let record = try #require(await gw.auditRecord { $0.event == "tls_refused" })
            #expect(record.reason == scenario.1)
            #expect(try gw.auditRecords().contains { $0.event == "session_opened" } == false)
        }
    }

    @Test("HTTP refusals reach third-party clients with their status", arguments: Stack.allCases)
    func httpRefusals(stack: Stack) async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout) { gw in
            let origin = try await Self.exchange(
                stack, gw, credential: gw.device, request: upgradeRequest(origin: "https://evil.example"))
            #expect(origin.output.contains("HTTP/1.1 403 Forbidden"), "\(origin.all)")
            #expect(origin.output.contains("origin not allowed"))
            let plain = try await Self.exchange(stack, gw, credential: gw.device, request: upgradeRequest(upgrade: false))
            #expect(plain.output.contains("HTTP/1.1 426 Upgrade Required"), "\(plain.all)")
            let twoOrigins = upgradeRequest(origin: "https://console.example.test")
                .replacingOccurrences(of: "\r\n\r\n", with: "\r\nOrigin: https://evil.example\r\n\r\n")
            let duplicate = try await Self.exchange(stack, gw, credential: gw.device, request: twoOrigins)
            #expect(duplicate.output.contains("HTTP/1.1 400 Bad Request"), "\(duplicate.all)")
            let reasons = try gw.auditRecords().compactMap(\.reason)
            #expect(reasons.contains("origin_not_allowed"))
            #expect(reasons.contains("upgrade_required"))
            #expect(reasons.contains("multiple_origin_headers"))
        }
    }

    @Test("TLS 1.2 is accepted with ECDHE and AEAD only; weaker suites and versions are refused")
    func tlsParameters() async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout) { gw in
            let tls12 = try await Self.exchange(
                .openssl, gw, credential: gw.device, request: upgradeRequest(), extra: ["-tls1_2"])
            #expect(tls12.output.contains("101 Switching Protocols"), "\(tls12.all)")
            let cbc = try await Self.exchange(
                .openssl, gw, credential: gw.device, request: upgradeRequest(),
                extra: ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"])
            #expect(!cbc.output.contains("101"))
            let gnutlsCBC = try await Self.exchange(
                .gnutls, gw, credential: gw.device, request: upgradeRequest(),
                extra: ["--priority", "NORMAL:-VERS-TLS1.3:-AES-128-GCM:-AES-256-GCM:-CHACHA20-POLY1305:-AES-128-CCM:-AES-256-CCM"])
            #expect(!gnutlsCBC.output.contains("101"))
            let refused = try await gw.auditRecords(atLeast: 2) { $0.event == "tls_refused" }
            #expect(refused.count == 2)
            #expect(refused.allSatisfy { $0.reason == "no_shared_cipher" })
        }
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout, minimumTLS: .v1_3) { gw in
            let tls12 = try await Self.exchange(
                .openssl, gw, credential: gw.device, request: upgradeRequest(), extra: ["-tls1_2"])
            #expect(!tls12.output.contains("101"))
            let record = try #require(await gw.auditRecord { $0.event == "tls_refused" })
            #expect(record.reason == "tls_version_not_allowed")
        }
    }

    @Test("tls.key_exchange limits the key-exchange groups a client may use")
    func keyExchangeGroups() async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout, adjust: { $0.tls.keyExchange = [.p256] }) { gw in
            let p256 = try await Self.exchange(
                .openssl, gw, credential: gw.device, request: upgradeRequest(), extra: ["-groups", "P-256"])
            #expect(p256.output.contains("101 Switching Protocols"), "\(p256.all)")
            let x25519 = try await Self.exchange(
                .openssl, gw, credential: gw.device, request: upgradeRequest(), extra: ["-groups", "X25519"])
            #expect(!x25519.output.contains("101"))
            #expect(try await gw.auditRecord { $0.event == "tls_refused" } != nil)
        }
    }

    @Test("A resumed TLS session still goes through admission: policy and revocation are checked again")
    func resumedSessionsAreRechecked() async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout) { gw in
            let session = "\(gw.pki.directory)/session.pem"
            let first = try await Self.exchange(
                .openssl, gw, credential: gw.device, request: upgradeRequest(), extra: ["-sess_out", session])
            #expect(first.output.contains("101 Switching Protocols"), "\(first.all)")
            #expect(FileManager.default.fileExists(atPath: session))

            // Same session, a request the policy refuses: the resumption skips certificate verification,
            // never admission.
            let resumed = try await Self.exchange(
                .openssl, gw, credential: gw.device, request: upgradeRequest(origin: "https://evil.example"),
                extra: ["-sess_in", session])
            #expect(resumed.output.contains("403 Forbidden"), "\(resumed.all)")
            let refusal = try #require(await gw.auditRecord { $0.event == "http_refused" })
            #expect(refusal.resumed == true)
            #expect(refusal.reason == "origin_not_allowed")
            #expect(refusal.identity == "demo-device")

            // Revoke the device and reload: only the CRL changed, so the TLS context (and with it the session
            // ticket openssl holds) stays, and the resumed session reaches admission's re-check.
            try gw.pki.revoke([gw.deviceCertificate, try readPEMCertificates(path: gw.revoked.certificate)[0]], number: 2)
            let reload = await gw.gateway.reload(trigger: "test")
            #expect(reload.result == .applied, "\(reload.lines)")
            let afterRevocation = try await Self.exchange(
                .openssl, gw, credential: gw.device, request: upgradeRequest(), extra: ["-sess_in", session])
            #expect(afterRevocation.output.contains("403 Forbidden"), "\(afterRevocation.all)")
            #expect(!afterRevocation.output.contains("101"))
            let revoked = try #require(await gw.auditRecord { $0.reason == "certificate_revoked" })
            #expect(revoked.resumed == true)
            #expect(revoked.event == "http_refused")
        }
    }

    @Test("A resumed session is re-checked over its whole chain: an intermediate revoked by a CRL-only reload is seen")
    func resumedSessionsCheckTheWholeChain() async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout) { gw in
            let intermediate = try gw.pki.authority.makeIntermediate(name: "Issuing CA", key: try KeyAlgorithm.p256.generate())
            let (credential, leaf) = try gw.pki.client("demo-device", by: intermediate)
            let chain = try leaf.serializeAsPEM().pemString + "\n" + intermediate.certificate.serializeAsPEM().pemString + "\n"
            try chain.write(toFile: credential.certificate, atomically: true, encoding: .utf8)
            let session = "\(gw.pki.directory)/session.pem"
            let first = try await Self.exchange(
                .openssl, gw, credential: credential, request: upgradeRequest(),
                extra: ["-cert_chain", credential.certificate, "-sess_out", session])
            #expect(first.output.contains("101 Switching Protocols"), "\(first.all)")

            // The root's CRL revokes the intermediate. The reload keeps the TLS context (so the ticket is still
            // good) and starts a new cache of verified chains: the resumed leaf's chain must be rebuilt.
            try gw.pki.revoke([intermediate.certificate], number: 2)
            let reload = await gw.gateway.reload(trigger: "test")
            #expect(reload.result == .applied, "\(reload.lines)")
            let resumed = try await Self.exchange(
                .openssl, gw, credential: credential, request: upgradeRequest(),
                extra: ["-cert_chain", credential.certificate, "-sess_in", session])
            #expect(resumed.output.contains("403 Forbidden"), "\(resumed.all)")
            let refusal = try #require(await gw.auditRecord { $0.reason == "certificate_revoked" })
            #expect(refusal.resumed == true)
            #expect(refusal.detail?.contains("Issuing CA") == true, "\(refusal.detail ?? "")")
        }
    }

    static let pythonClient = #"""
        import asyncio, json, ssl, sys
        import websockets

        async def main(port, ca, cert, key, origin):
            tls = ssl.create_default_context(cafile=ca)
            if cert:
                tls.load_cert_chain(cert, key)
            try:
                async with websockets.connect(f"wss://localhost:{port}/v1/echo", ssl=tls,
                                              origin=origin or None, open_timeout=300) as ws:
                    await ws.send("hello from python")
                    text = await ws.recv()
                    await ws.send(b"\x00\x01\xff")
                    data = await ws.recv()
                    # An iterable is sent as one message in several frames, as streaming clients do; the
                    # second splits a character (é) across two fragments.
                    await ws.send(["frag", "mented ", "text"])
                    fragmented = await ws.recv()
                    await ws.send([b"caf\xc3", b"\xa9"])
                    split = await ws.recv()
                    print(json.dumps({"result": "echo", "text": text, "binary": list(data),
                                      "fragmented": fragmented, "split": list(split)}))
            except websockets.exceptions.InvalidStatus as error:
                print(json.dumps({"result": "refused", "status": error.response.status_code,
                                  "body": error.response.body.decode()}))
            except Exception as error:
                print(json.dumps({"result": "failed", "error": type(error).__name__}))

        asyncio.run(main(int(sys.argv[1]), *sys.argv[2:]))
        """#

    static func python(_ gw: TestGateway, _ credential: TestPKI.Credential?, origin: String = "") async throws
        -> [String: Any]
    {
        let script = "\(gw.pki.directory)/client.py"
        try pythonClient.write(toFile: script, atomically: true, encoding: .utf8)
        let result = try await ExternalTool("python3").run(
            [script, "\(gw.port)", gw.pki.caPath, credential?.certificate ?? "", credential?.key ?? "", origin],
            holdInput: 0)
        let line = try #require(result.output.split(separator: "\n").last, "python printed nothing: \(result.all)")
        return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    @Test("Python websockets with an SSL context: echo when admitted, the status when refused")
    func pythonWebsockets() async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout) { gw in
            let echo = try await Self.python(gw, gw.device, origin: "https://console.example.test")
            #expect(echo["result"] as? String == "echo")
            #expect(echo["text"] as? String == "hello from python")
            #expect(echo["binary"] as? [Int] == [0, 1, 255])
            #expect(echo["fragmented"] as? String == "fragmented text")
            #expect(echo["split"] as? [Int] == [0x63, 0x61, 0x66, 0xC3, 0xA9])

            let refused = try await Self.python(gw, gw.device, origin: "https://evil.example")
            #expect(refused["result"] as? String == "refused")
            #expect(refused["status"] as? Int == 403)

            let noCertificate = try await Self.python(gw, nil)
            #expect(noCertificate["result"] as? String == "failed")

            let reasons = try gw.auditRecords().compactMap(\.reason)
            #expect(reasons.contains("admitted"))
            #expect(reasons.contains("origin_not_allowed"))
            #expect(reasons.contains("no_client_certificate"))
            let closed = try #require(await gw.auditRecord { $0.event == "session_closed" })
            #expect(closed.closeCode == 1000)
            #expect(closed.messagesIn == 4)
        }
    }

    static let pythonCompression = #"""
        import asyncio, json, ssl, sys
        import websockets

        async def main(port, ca, cert, key):
            tls = ssl.create_default_context(cafile=ca)
            tls.load_cert_chain(cert, key)
            # websockets offers "permessage-deflate; client_max_window_bits" by default, as browsers do.
            async with websockets.connect(f"wss://localhost:{port}/v1/echo", ssl=tls, open_timeout=300,
                                          max_size=2**22) as ws:
                text = "telemetry " * 5000  # 50,000 bytes: under the test gateway's 64 KiB limit once inflated
                await ws.send(text)
                echoed = await ws.recv()
                await ws.send(["frag", "mented " * 100])
                fragmented = await ws.recv()
                print(json.dumps({"extensions": ws.response.headers.get("Sec-WebSocket-Extensions"),
                                  "echo": echoed == text, "fragmented": fragmented == "frag" + "mented " * 100}))

        asyncio.run(main(int(sys.argv[1]), *sys.argv[2:]))
        """#

    @Test("Python websockets negotiates permessage-deflate where a route enables it, and messages round-trip compressed")
    func pythonCompression() async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout, adjust: { $0.compression = .perMessageDeflate }) { gw in
            let script = "\(gw.pki.directory)/compression.py"
            try Self.pythonCompression.write(toFile: script, atomically: true, encoding: .utf8)
            let result = try await ExternalTool("python3").run(
                [script, "\(gw.port)", gw.pki.caPath, gw.device.certificate, gw.device.key], holdInput: 0)
            let line = try #require(result.output.split(separator: "\n").last, "python printed nothing: \(result.all)")
            let answer = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(answer["extensions"] as? String == "permessage-deflate; server_no_context_takeover; client_no_context_takeover")
            #expect(answer["echo"] as? Bool == true)
            #expect(answer["fragmented"] as? Bool == true)
            let closed = try #require(await gw.auditRecord { $0.event == "session_closed" })
            #expect(closed.closeCode == 1000)
            #expect(closed.bytesIn == 50_000 + 704)
        }
    }

    static let pythonBroker = #"""
        import asyncio, json, ssl, sys
        import websockets

        async def main(role, port, ca, cert, key, count, ready):
            tls = ssl.create_default_context(cafile=ca)
            tls.load_cert_chain(cert, key)
            async with websockets.connect(f"wss://localhost:{port}/v1/messages", ssl=tls, open_timeout=300) as ws:
                if role == "subscribe":
                    await ws.send(json.dumps({"type": "subscribe", "topic": "devices/+/telemetry", "id": "s"}))
                    print(await ws.recv(), flush=True)
                    open(ready, "w").close()  # subscribed: the test may start publishing
                    for _ in range(count):
                        print(await ws.recv(), flush=True)
                else:
                    for n in range(count):
                        await ws.send(json.dumps({"type": "publish", "topic": "devices/demo-device/telemetry",
                                                  "payload": {"n": n, "note": "caf\u00e9"}, "id": n}))
                        print(await ws.recv(), flush=True)
                    await ws.send(b"\x01\x00\x1ddevices/demo-device/telemetry\x00\xff")

        asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[7]))
        """#

    @Test("A Python websockets client publishes and another Python client receives, stamped with the sender")
    func pythonPublishSubscribe() async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout) { gw in
            let script = "\(gw.pki.directory)/broker.py"
            try Self.pythonBroker.write(toFile: script, atomically: true, encoding: .utf8)
            let python = try ExternalTool("python3")
            let ready = "\(gw.pki.directory)/subscribed"
            async let subscriber = python.run(
                [script, "subscribe", "\(gw.port)", gw.pki.caPath, gw.operatorCredential.certificate,
                 gw.operatorCredential.key, "5", ready], holdInput: 0)
            // Publish only once the subscription is acknowledged, however slowly Python starts.
            let deadline = Date().addingTimeInterval(60)
            while !FileManager.default.fileExists(atPath: ready) && Date() < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            let publisher = try await python.run(
                [script, "publish", "\(gw.port)", gw.pki.caPath, gw.device.certificate, gw.device.key, "4", ready],
                holdInput: 0)
            #expect(publisher.output.split(separator: "\n").count == 4, "\(publisher.all)")
            #expect(publisher.output.contains(#"{"type":"ack","id":3}"#))
            let lines = try await subscriber.output.split(separator: "\n").map(String.init)
            #expect(lines.first == #"{"type":"ack","id":"s"}"#, "\(lines)")
            #expect(lines.count == 6)
            #expect(lines.dropFirst().prefix(4).enumerated().allSatisfy { index, line in
                line == #"{"type":"message","topic":"devices/demo-device/telemetry","from":"demo-device","payload":{"n": "#
                    + "\(index)" + #", "note": "caf\u00e9"}}"#
            }, "\(lines)")
            #expect(lines.last?.contains("b'\\x02") == true || lines.last?.hasPrefix("b'") == true, "\(lines)")
        }
    }
}
