import Foundation
import PortcullisTestSupport
import PortcullisClient
import PortcullisConfig
import Testing

/// A Python `websockets` backend in the background: it reports its port, the identity headers it received
/// and how each connection closed, one JSON line each (or runs `script`, which prints its port likewise).
final class PythonBackend: @unchecked Sendable {
    static let script = #"""
        import asyncio, json, websockets

        async def handler(ws):
            seen = {k.lower(): v for k, v in ws.request.headers.raw_items() if k.lower().startswith("x-portcullis")}
            await ws.send(json.dumps({"headers": seen, "path": ws.request.path}))
            if ws.request.path.startswith("/stall"):
                # A backend that stops reading: what the client sends piles up in front of it.
                await asyncio.Future()
            if ws.request.path.startswith("/flood"):
                # A backend that sends as fast as it is let: 64 KiB messages, up to 256 MiB.
                chunk, sent = b"x" * 65536, 0
                while sent < 256 << 20:
                    await ws.send(chunk)
                    sent += len(chunk)
                    if sent % (1 << 20) == 0:
                        print(json.dumps({"flooded": sent}), flush=True)
                return
            try:
                async for message in ws:
                    if message == "close-please":
                        await ws.close(4001, "bye")
                        return
                    await ws.send(message)
            finally:
                print(json.dumps({"closed": ws.close_code}), flush=True)

        async def main():
            # No opening-handshake deadline (websockets' default is 10 s, which a loaded test machine can pass
            # before the gateway's request is read) and no keepalive: the tests set the pace.
            async with websockets.serve(handler, "127.0.0.1", 0, open_timeout=None, ping_interval=None) as server:
                print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
                await asyncio.Future()

        asyncio.run(main())
        """#

    let process = ChildProcess()
    private let lock = NSLock()
    private var lines: [String] = []
    private var partial = ""
    private var reader: PipeReader?

    init(directory: String, script: String = PythonBackend.script) throws {
        let path = "\(directory)/backend.py"
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: try ExternalTool("python3").path)
        process.arguments = [path]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        reader = PipeReader(pipe.fileHandleForReading) { [weak self] data in
            let text = String(decoding: data, as: UTF8.self)
            self?.lock.withLock {
                guard let self else { return }
                self.partial += text
                while let newline = self.partial.firstIndex(of: "\n") {
                    self.lines.append(String(self.partial[..<newline]))
                    self.partial = String(self.partial[self.partial.index(after: newline)...])
                }
            }
        }
    }

    /// The last JSON line with `key`, if any yet.
    func lastLine(with key: String) -> [String: Any]? {
        lock.withLock { lines }.reversed().lazy.compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }.first { $0[key] != nil }
    }

    /// The first JSON line with `key`, waiting up to 60 s (Python starts slowly on a loaded machine).
    func line(with key: String) async throws -> [String: Any]? {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let found = lock.withLock { lines }.compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }.first { $0[key] != nil }
            if let found { return found }
            try await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }

    /// Stops the backend (SIGKILL: asyncio may sit out a SIGTERM). Polls rather than `waitUntilExit()`,
    /// which can wait forever on a concurrency thread.
    func stop() {
        // Never kill(0, …): that is this test process's own group.
        guard process.processIdentifier > 0 else { return }
        kill(process.processIdentifier, SIGKILL)
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning && Date() < deadline { usleep(10_000) }
    }
}

/// Samples `progress` until it stops growing for `still` seconds or reaches `limit`, and returns its value then.
/// A stall is what a bounded relay shows; on a loaded machine progress only slows, which cannot make a
/// bounded relay look unbounded.
/// The stall clock starts at the first progress (waited for up to 120 s): before the flow starts, a saturated
/// machine can sit longer than `still` without any, which is no stall (CI saw 0 bytes "accepted" that way).
func valueWhenStalled(limit: Int, still: Double = 3, _ progress: () -> Int) async throws -> Int {
    let started = Date().addingTimeInterval(120)
    while progress() == 0, Date() < started { try await Task.sleep(for: .milliseconds(50)) }
    var last = progress()
    var lastChange = Date()
    while last < limit, Date().timeIntervalSince(lastChange) < still {
        try await Task.sleep(for: .milliseconds(100))
        let now = progress()
        if now != last { (last, lastChange) = (now, Date()) }
    }
    return last
}

final class LockedCount: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.withLock { count } }
    func add(_ amount: Int) { lock.withLock { count += amount } }
}

/// The next message, or nil after `seconds`: a test fails instead of hanging.
func next(_ connection: WebSocketConnection, within seconds: Double = 120) async -> WebSocketMessage? {
    await withTaskGroup(of: WebSocketMessage?.self) { group in
        group.addTask { await connection.receive() }
        group.addTask {
            try? await Task.sleep(for: .seconds(seconds))
            return nil
        }
        let first = await group.next() ?? nil
        group.cancelAll()
        return first
    }
}

@Suite("Upstream route")
struct UpstreamTests {
    @Test("Frames are proxied both ways; the backend gets the verified identity, never the client's headers; both sides close together")
    func proxiesWithIdentity() async throws {
        try await Self.withBackend(target: "/backend") { gw, backend in
            let client = try await Self.upstreamSession(
                gw, path: "/v1/upstream?room=7", headers: [("X-Portcullis-Identity", "operator")])
            guard case .text(let hello)? = await next(client),
                let seen = try JSONSerialization.jsonObject(with: Data(hello.utf8)) as? [String: Any],
                let headers = seen["headers"] as? [String: String]
            else {
                Issue.record("no greeting from the backend")
                return
            }
            #expect(headers["x-portcullis-identity"] == "demo-device")
            #expect(headers["x-portcullis-fingerprint"]?.count == 64)
            #expect(headers["x-portcullis-serial"] == hex(gw.deviceCertificate.serialNumber.bytes))
            #expect(seen["path"] as? String == "/backend?room=7")

            try await client.send(text: "ping through")
            #expect(await next(client) == .text("ping through"))
            try await client.send(binary: [1, 2, 3])
            #expect(await next(client) == .binary([1, 2, 3]))
            await client.close(code: 4000)
            #expect(try await backend.line(with: "closed")?["closed"] as? Int == 4000)
            let opened = try #require(await gw.auditRecord { $0.event == "session_opened" })
            #expect(opened.path == "/v1/upstream")

            // The backend closing ends the client's session with its code.
            let second = try await Self.upstreamSession(gw)
            _ = await next(second)
            try await second.send(text: "close-please")
            #expect(await next(second) == .close(code: 4001, reason: ""))
        }
    }

    /// A session on `/v1/upstream` as the device; a refusal fails the test with what the gateway audited (why
    /// the backend could not be reached, say).
    static func upstreamSession(_ gw: TestGateway, path: String = "/v1/upstream", headers: [(String, String)] = [])
        async throws -> WebSocketConnection
    {
        let outcome = try await GatewayClient.connect(port: gw.port, path: path, headers: headers, tls: gw.tls(gw.device))
        let refusals = try gw.auditRecords().filter { $0.event == "http_refused" }.map { "\($0.reason ?? ""): \($0.detail ?? "")" }
        return try #require(outcome.connection, "refused \(outcome.status): \(refusals)")
    }

    /// A gateway whose `/v1/upstream` leads to the Python backend's `target`.
    static func withBackend(target: String, _ body: (TestGateway, PythonBackend) async throws -> Void) async throws {
        let scratch = NSTemporaryDirectory() + "portcullis-upstream-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let backend = try PythonBackend(directory: scratch)
        defer { backend.stop() }
        let port = try #require(try await backend.line(with: "port")?["port"] as? Int)
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout, adjust: {
            $0.routes.append(.init(path: "/v1/upstream", kind: .upstream, upstream: .init(url: "ws://127.0.0.1:\(port)\(target)")))
            // A client that stops reading answers no ping: on a busy machine the default heartbeat (20 s, then 20 s
            // to answer) could close it while a test waits for the flow to stall.
            $0.pingInterval = 3600
        }) { gw in try await body(gw, backend) }
    }

    /// Without backpressure the gateway would read all 256 MiB the client sends and hold it for the backend.
    @Test("A backend that stops reading stops the gateway reading the client: the client's sends stall")
    func backendStopsReading() async throws {
        try await Self.withBackend(target: "/stall") { gw, _ in
            let client = try await Self.upstreamSession(gw)
            _ = await next(client)
            let sent = LockedCount()
            let chunk = [UInt8](repeating: 0x42, count: 65536)
            let sender = Task {
                while sent.value < 256 << 20, !Task.isCancelled {
                    try await client.send(binary: chunk)
                    sent.add(chunk.count)
                }
            }
            let accepted = try await valueWhenStalled(limit: 256 << 20) { sent.value }
            sender.cancel()
            // Socket buffers on both legs hold some megabytes; the gateway itself holds about one message.
            #expect(accepted < 64 << 20, "the client could send \(accepted) bytes to a backend that reads nothing")
            #expect(accepted > 0)
        }
    }

    @Test("A client that stops reading stops the gateway reading the backend, without closing the client as slow")
    func clientStopsReading() async throws {
        try await Self.withBackend(target: "/flood") { gw, backend in
            let client = try await Self.upstreamSession(gw)
            try await client.setReading(false)
            let flooded = try await valueWhenStalled(limit: 256 << 20) {
                backend.lastLine(with: "flooded")?["flooded"] as? Int ?? 0
            }
            #expect(flooded < 64 << 20, "the backend could send \(flooded) bytes towards a client that reads nothing")
            #expect(client.isActive)
            let slow = try gw.auditRecords().filter { $0.event == "session_slow_consumer" }
            #expect(slow.isEmpty)
            await client.close()
        }
    }

    @Test("An unreachable backend is a 502 at the upgrade, audited")
    func unreachableBackend() async throws {
        try await withGateway(handshakeTimeout: upstreamHandshakeTimeout, adjust: {
            // A port nothing listens on: bind one, note it, close it.
            $0.routes.append(.init(path: "/v1/upstream", kind: .upstream, upstream: .init(url: "ws://127.0.0.1:9/nowhere")))
        }) { gw in
            let outcome = try await GatewayClient.connect(port: gw.port, path: "/v1/upstream", tls: gw.tls(gw.device))
            #expect(outcome.status == 502)
            let record = try #require(await gw.auditRecord { $0.event == "http_refused" })
            #expect(record.reason == "upstream_unavailable")
            #expect(record.status == 502)
            #expect(record.identity == "demo-device")
        }
    }

    @Test("A wss:// backend gets the gateway's own client certificate (here: another Portcullis gateway)")
    func secureBackend() async throws {
        try await withGateway { backend in
            try await withGateway(handshakeTimeout: upstreamHandshakeTimeout, adjust: {
                var upstream = GatewayConfiguration.Upstream(url: "wss://localhost:\(backend.port)/v1/echo")!
                upstream.certificate = backend.device.certificate
                upstream.key = backend.device.key
                upstream.trustRoots = backend.pki.caPath
                $0.routes.append(.init(path: "/v1/upstream", kind: .upstream, upstream: upstream))
            }) { front in
                let client = try #require(try await GatewayClient.connect(
                    port: front.port, path: "/v1/upstream", tls: front.tls(front.device)).connection)
                try await client.send(text: "through two gateways")
                #expect(await next(client) == .text("through two gateways"))
                await client.close()
                let opened = try #require(await backend.auditRecord { $0.event == "session_opened" })
                #expect(opened.identity == "demo-device")
                #expect(opened.serial == hex(backend.deviceCertificate.serialNumber.bytes))
            }
        }
    }
}

@Suite("Request headers towards a backend")
struct RequestHeaderValidationTests {
    @Test("A header value with CR, LF or another control character is refused before anything is sent")
    func controlCharactersRefused() async throws {
        // Port 1 on loopback: nothing listens, so reaching the network would fail differently.
        for (name, value) in [
            ("X-Portcullis-Identity", "device-42\r\nX-Portcullis-Identity: admin"),
            ("X-Portcullis-Identity", "a\nb"),
            ("X-Portcullis-Origin", "https://x.test\u{0}"),
            ("Bad Name", "value"),
        ] {
            await #expect(throws: InvalidHeaderError.self) {
                _ = try await GatewayClient.connect(port: 1, path: "/", headers: [(name, value)], tls: nil)
            }
        }
    }
}
