import Foundation
import Histogram
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `bench connect --resume`: sessions established per second when each client resumes its previous TLS
/// session. Blocking sockets on one thread per concurrent client, TLS by the system's OpenSSL (see
/// ``SystemOpenSSL``); the upgrade request and, for NATS, the CONNECT/PING exchange are the same as the
/// NIO-based scenarios send.
enum ResumingConnector {
    /// Starts `concurrency` client threads that run until `state.stop` is set.
    static func start(_ target: BenchTarget, concurrency: Int, state: ConnectBenchmark.State) throws {
        let openssl = try SystemOpenSSL()
        let context = try openssl.makeClientContext(
            certificate: target.tls.certificateChain ?? "", key: target.tls.privateKey ?? "", ca: target.tls.trustRoots)
        let opener = Opener(openssl: openssl, context: context, target: target)
        for _ in 0..<concurrency {
            state.running.add(1, ordering: .relaxed)
            Thread.detachNewThread {
                defer { state.running.subtract(1, ordering: .relaxed) }
                var session: OpaquePointer?
                var local = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
                while !state.stop.load(ordering: .relaxed) {
                    let began = BenchClock.now()
                    do {
                        let resumed = try opener.open(resuming: &session)
                        if state.counted.load(ordering: .relaxed) {
                            state.sessions.add(1, ordering: .relaxed)
                            if resumed { state.resumed.add(1, ordering: .relaxed) }
                            local.record((BenchClock.now() - began) / 1000)
                        }
                    } catch {
                        state.record(error: error)
                    }
                }
                if let session { openssl.freeSession(session) }
                state.latency.withLock { $0.add(local) }
            }
        }
    }

    /// Opens one session the blocking way.
    struct Opener: @unchecked Sendable {
        // @unchecked: the OpenSSL context is shared read-only between threads, which OpenSSL allows.
        let openssl: SystemOpenSSL
        let context: OpaquePointer
        let target: BenchTarget

        private var request: [UInt8] {
            var lines = [
                "GET \(target.path) HTTP/1.1", "Host: \(target.tls.serverName ?? target.host):\(target.port)",
                "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Key: cG9ydGN1bGxpcy1iZW5jaA==",
                "Sec-WebSocket-Version: 13",
            ]
            if let origin = target.origin { lines.append("Origin: \(origin)") }
            return Array((lines.joined(separator: "\r\n") + "\r\n\r\n").utf8)
        }

        /// A session past the upgrade (and, for NATS, its CONNECT): the socket, the TLS connection, whether it
        /// resumed an earlier TLS session, and what the server sent after what was awaited.
        struct Established {
            let fd: Int32
            let ssl: OpaquePointer
            let resumed: Bool
            var buffered: [UInt8]
        }

        /// Connects, resuming `session` when given, and keeps the newest TLS session in `session`; presents
        /// `credentials` (certificate chain and key files) instead of the context's when given. The caller owns
        /// the connection; a failure leaves nothing open.
        func establish(
            resuming session: inout OpaquePointer?, credentials: (chain: String, key: String)? = nil
        ) throws -> Established {
            let fd = try Self.connectTCP(host: target.host, port: target.port, from: target.sources.take())
            guard let ssl = openssl.newSSL(context) else {
                close(fd)
                throw BenchError("SSL_new failed")
            }
            do {
                _ = openssl.setFD(ssl, fd)
                if let credentials {
                    guard openssl.useConnectionCertificateChainFile(ssl, credentials.chain) == 1,
                        openssl.useConnectionPrivateKeyFile(ssl, credentials.key, 1 /* SSL_FILETYPE_PEM */) == 1
                    else { throw BenchError("cannot load \(credentials.chain) with OpenSSL") }
                }
                openssl.setServerName(ssl, target.tls.serverName ?? target.host)
                if let session { _ = openssl.setSession(ssl, session) }
                guard openssl.connect(ssl) == 1 else { throw BenchError("the TLS handshake failed") }
                try write(ssl, request)
                var received = try readHead(ssl)
                if let handshake = BenchWire(wire: target.wire, topic: "").handshake {
                    try write(ssl, Self.maskedFrame(opcode: 0x2, payload: handshake))
                    try awaitPong(ssl, buffered: &received)
                }
                // A TLS 1.3 ticket arrives after the handshake, with the first records read.
                if let newest = openssl.getSession(ssl) {
                    if let session { openssl.freeSession(session) }
                    session = newest
                }
                return Established(fd: fd, ssl: ssl, resumed: openssl.sessionReused(ssl) == 1, buffered: received)
            } catch {
                openssl.freeSSL(ssl)
                close(fd)
                throw error
            }
        }

        /// Opens a session and closes it cleanly; returns whether the TLS session was resumed.
        func open(resuming session: inout OpaquePointer?) throws -> Bool {
            let established = try establish(resuming: &session)
            defer {
                openssl.freeSSL(established.ssl)
                close(established.fd)
            }
            try? write(established.ssl, Self.maskedFrame(opcode: 0x8, payload: [0x03, 0xE8]))
            // Without close_notify OpenSSL marks the session as not resumable when the SSL object is freed.
            _ = openssl.shutdown(established.ssl)
            return established.resumed
        }

        func write(_ ssl: OpaquePointer, _ bytes: [UInt8]) throws {
            let written = bytes.withUnsafeBytes { openssl.write(ssl, $0.baseAddress, Int32($0.count)) }
            guard written == bytes.count else { throw BenchError("the connection closed while writing") }
        }

        func readMore(_ ssl: OpaquePointer, into buffer: inout [UInt8]) throws {
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { openssl.read(ssl, $0.baseAddress, Int32($0.count)) }
            guard count > 0 else { throw BenchError("the server closed the connection (refused at TLS?)") }
            buffer += chunk[..<Int(count)]
        }

        /// Reads the upgrade response's head; returns the bytes after it.
        private func readHead(_ ssl: OpaquePointer) throws -> [UInt8] {
            var buffer: [UInt8] = []
            let end = Array("\r\n\r\n".utf8)
            while true {
                if let range = buffer.firstRange(of: end) {
                    let head = String(decoding: buffer[..<range.lowerBound], as: UTF8.self)
                    guard head.hasPrefix("HTTP/1.1 101") else {
                        throw BenchError("refused with \(head.split(separator: " ").dropFirst().first ?? "?")")
                    }
                    return Array(buffer[range.upperBound...])
                }
                try readMore(ssl, into: &buffer)
            }
        }

        /// Reads server frames (unmasked) until a payload carries NATS's PONG.
        private func awaitPong(_ ssl: OpaquePointer, buffered: inout [UInt8]) throws {
            var text: [UInt8] = []
            while true {
                while let (payload, consumed) = Self.frame(in: buffered) {
                    buffered.removeFirst(consumed)
                    text += payload
                    if text.firstRange(of: Array("PONG\r\n".utf8)) != nil { return }
                    if let error = text.firstRange(of: Array("-ERR".utf8)) {
                        throw BenchError(String(decoding: text[error.lowerBound...], as: UTF8.self))
                    }
                }
                try readMore(ssl, into: &buffered)
            }
        }

        /// The payload of the first complete server frame in `bytes`, and how many bytes it took.
        static func frame(in bytes: [UInt8]) -> ([UInt8], Int)? {
            guard bytes.count >= 2 else { return nil }
            var length = Int(bytes[1] & 0x7F)
            var offset = 2
            if length == 126 {
                guard bytes.count >= 4 else { return nil }
                length = Int(bytes[2]) << 8 | Int(bytes[3])
                offset = 4
            } else if length == 127 {
                guard bytes.count >= 10 else { return nil }
                length = bytes[2..<10].reduce(0) { $0 << 8 | Int($1) }
                offset = 10
            }
            guard bytes.count >= offset + length else { return nil }
            return (Array(bytes[offset..<(offset + length)]), offset + length)
        }

        /// A masked client frame (RFC 6455 §5.2), small payloads only.
        static func maskedFrame(opcode: UInt8, payload: [UInt8]) -> [UInt8] {
            let key = (0..<4).map { _ in UInt8.random(in: 0...255) }
            var frame: [UInt8] = [0x80 | opcode]
            if payload.count < 126 {
                frame.append(0x80 | UInt8(payload.count))
            } else {
                frame += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
            }
            frame += key
            frame += payload.enumerated().map { $0.element ^ key[$0.offset & 3] }
            return frame
        }

        static func connectTCP(host: String, port: Int, from source: SocketAddress?) throws -> Int32 {
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var result: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, String(port), &hints, &result) == 0, let address = result else {
                throw BenchError("cannot resolve \(host)")
            }
            defer { freeaddrinfo(result) }
            let fd = socket(address.pointee.ai_family, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw BenchError("socket: \(String(cString: strerror(errno)))") }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            if let source {
                let bound = source.withSockAddr { Glibc.bind(fd, $0, socklen_t($1)) }
                guard bound == 0 else {
                    let reason = String(cString: strerror(errno))
                    close(fd)
                    throw BenchError("bind to \(source): \(reason)")
                }
            }
            guard Glibc.connect(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0 else {
                let reason = String(cString: strerror(errno))
                close(fd)
                throw BenchError("connect to \(host):\(port): \(reason)")
            }
            return fd
        }
    }
}
