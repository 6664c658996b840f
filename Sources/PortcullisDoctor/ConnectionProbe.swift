import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// One connection to a gateway, made step by step with blocking calls (a diagnosis waits for each answer
/// anyway), each step bounded by `timeout` seconds: name resolution, TCP, the TLS handshake through OpenSSL,
/// the WebSocket upgrade and a ping.
final class ConnectionProbe {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// An address a name resolved to.
    struct ResolvedAddress {
        var family: Int32
        var text: String
        fileprivate var storage: sockaddr_storage
        fileprivate var length: socklen_t
    }

    /// What the TLS handshake showed.
    struct Handshake {
        var version = ""
        var cipher = ""
        var group = ""
        /// The server's certificates as sent, leaf first (DER).
        var serverChain: [[UInt8]] = []
        /// OpenSSL's verdict on the server's chain and name against the given CA bundle; nil when it verified.
        var verifyError: String?
        /// The handshake's own failure (OpenSSL's error queue), if it failed.
        var failure: String?
    }

    /// What the handshake messages showed, recorded by OpenSSL's message callback.
    final class Recorder {
        var certificateRequested = false
        var receivedAlert: UInt8?
    }

    private let openssl: OpenSSLLibrary
    private let timeout: Double
    let recorder = Recorder()
    private var descriptor: Int32 = -1
    private var context: OpaquePointer?
    private var ssl: OpaquePointer?

    init(openssl: OpenSSLLibrary, timeout: Double = 10) {
        self.openssl = openssl
        self.timeout = timeout
    }

    deinit {
        if let ssl { openssl.freeSSL(ssl) }
        if let context { openssl.freeContext(context) }
        if descriptor >= 0 { Glibc.close(descriptor) }
    }

    /// The addresses `host` resolves to (TCP), in the resolver's order.
    func resolve(_ host: String, port: Int) throws -> [ResolvedAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let first = list else {
            throw Failure(description: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(list) }
        var addresses: [ResolvedAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let entry = cursor, addresses.count < 16 {
            defer { cursor = entry.pointee.ai_next }
            guard let address = entry.pointee.ai_addr else { continue }
            var storage = sockaddr_storage()
            let length = min(entry.pointee.ai_addrlen, socklen_t(MemoryLayout<sockaddr_storage>.size))
            withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(length))) }
            var text = [CChar](repeating: 0, count: Int(NI_MAXHOST))
            getnameinfo(address, length, &text, socklen_t(text.count), nil, 0, NI_NUMERICHOST)
            let item = ResolvedAddress(
                family: entry.pointee.ai_family, text: String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
                storage: storage, length: length)
            if !addresses.contains(where: { $0.text == item.text }) { addresses.append(item) }
        }
        return addresses
    }

    /// Connects to the first address that answers; the errors of those that did not, in order.
    func connect(_ addresses: [ResolvedAddress]) -> (connected: ResolvedAddress?, errors: [String]) {
        var errors: [String] = []
        for address in addresses {
            let socket = Glibc.socket(address.family, Int32(SOCK_STREAM.rawValue), 0)
            guard socket >= 0 else {
                errors.append("\(address.text): \(String(cString: strerror(errno)))")
                continue
            }
            // Linux bounds a blocking connect by the send timeout too.
            // At least a millisecond: a zero timeval means no timeout at all.
            let bounded = max(timeout, 0.001)
            var limit = timeval(tv_sec: Int(bounded), tv_usec: Int((bounded - bounded.rounded(.down)) * 1_000_000))
            setsockopt(socket, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            var storage = address.storage
            let result = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(socket, $0, address.length) }
            }
            if result == 0 {
                descriptor = socket
                return (address, errors)
            }
            errors.append("\(address.text): \(errno == EINPROGRESS ? "timed out" : String(cString: strerror(errno)))")
            Glibc.close(socket)
        }
        return (nil, errors)
    }

    /// The TLS handshake on the connected socket. The client certificate is offered when it loads (a key that
    /// does not match is a local finding, and the handshake goes on without it to see the rest).
    func handshake(serverName: String, caFile: String, certificateFile: String?, keyFile: String?) -> Handshake {
        var result = Handshake()
        openssl.clearErrors()
        guard let context = openssl.newContext(openssl.clientMethod()) else {
            result.failure = "OpenSSL could not make a context"
            return result
        }
        self.context = context
        guard openssl.loadVerifyLocations(context, caFile, nil) == 1 else {
            result.failure = "cannot load the CA bundle \(caFile): \(openssl.drainErrors().joined(separator: "; "))"
            return result
        }
        if let certificateFile, let keyFile,
            openssl.useCertificateChainFile(context, certificateFile) == 1,
            openssl.usePrivateKeyFile(context, keyFile, 1 /* SSL_FILETYPE_PEM */) == 1,
            openssl.checkPrivateKey(context) == 1
        {
            // Offered.
        } else {
            openssl.drainErrors()
        }
        guard let ssl = openssl.newSSL(context) else {
            result.failure = "OpenSSL could not make a connection"
            return result
        }
        self.ssl = ssl
        _ = openssl.setFD(ssl, descriptor)
        let isAddress = serverName.contains(":") || serverName.allSatisfy { $0.isNumber || $0 == "." }
        if isAddress {
            _ = openssl.setVerifyIP(openssl.verifyParameters(ssl), serverName)
        } else {
            _ = serverName.withCString { openssl.control(ssl, OpenSSLLibrary.setServerName, 0, UnsafeMutableRawPointer(mutating: $0)) }
            _ = openssl.setHost(ssl, serverName)
        }
        openssl.setMessageCallback(ssl) { writing, _, contentType, bytes, length, _, argument in
            guard writing == 0, let bytes, length > 0, let argument else { return }
            let recorder = Unmanaged<Recorder>.fromOpaque(argument).takeUnretainedValue()
            let first = bytes.load(as: UInt8.self)
            switch contentType {
            case 22 where first == 13: recorder.certificateRequested = true  // handshake: CertificateRequest
            case 21 where length >= 2: recorder.receivedAlert = bytes.load(fromByteOffset: 1, as: UInt8.self)  // alert
            default: break
            }
        }
        _ = openssl.control(ssl, OpenSSLLibrary.setMessageCallbackArgument, 0, Unmanaged.passUnretained(recorder).toOpaque())

        let connected = openssl.connect(ssl)
        if connected != 1 {
            // The error queue names TLS failures; a silent or closed peer leaves it empty (and says so in errno).
            result.failure = readFailure(connected)
        }
        result.version = openssl.version(ssl).map { String(cString: $0) } ?? ""
        result.cipher = openssl.currentCipher(ssl).flatMap { openssl.cipherStandardName($0) }.map { String(cString: $0) } ?? ""
        let group = Int32(truncatingIfNeeded: openssl.control(ssl, OpenSSLLibrary.negotiatedGroup, 0, nil))
        result.group = group > 0 ? (openssl.groupName(ssl, group).map { String(cString: $0) } ?? "group \(group)") : ""
        result.serverChain = openssl.derEncodings(of: openssl.peerChain(ssl), openssl.certificateDER)
        let verification = openssl.verifyResult(ssl)
        if verification != 0 { result.verifyError = openssl.verifyErrorText(verification).map { String(cString: $0) } ?? "error \(verification)" }
        return result
    }

    /// The CA names of the server's CertificateRequest (DER), as OpenSSL kept them.
    var namedCertificateAuthorities: [[UInt8]] {
        guard let ssl else { return [] }
        return openssl.derEncodings(of: openssl.clientCAList(ssl), openssl.nameDER)
    }

    /// Sends the upgrade request and reads the answer's head (and a refusal's body: ``UpgradeAnswerReader``).
    func upgrade(host: String, port: Int, path: String, origin: String?) throws -> UpgradeAnswer {
        let key = Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        var request = "GET \(path) HTTP/1.1\r\nHost: \(host.contains(":") ? "[\(host)]" : host):\(port)\r\nUpgrade: websocket\r\n"
        request += "Connection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n"
        if let origin { request += "Origin: \(origin)\r\n" }
        request += "\r\n"
        try send(Array(request.utf8))
        var reader = UpgradeAnswerReader()
        do {
            while !reader.hasHead { try reader.append(try receive()) }
        } catch let failure as UpgradeAnswerReader.Failure {
            throw Failure(description: failure.description)
        }
        // A refusal's body as far as it comes: a gateway that closes early has said what it had to.
        while reader.wantsMore, let more = try? receive(), !more.isEmpty { try? reader.append(more) }
        return reader.answer!
    }

    /// Sends a masked ping and waits for its pong; the round trip in seconds.
    func ping() throws -> Double {
        let payload = (0..<8).map { _ in UInt8.random(in: 0...255) }
        let mask = (0..<4).map { _ in UInt8.random(in: 0...255) }
        let started = DispatchTime.now()
        try send([0x89, 0x80 | UInt8(payload.count)] + mask + payload.enumerated().map { $0.element ^ mask[$0.offset % 4] })
        var reader = ServerFrameReader()
        while true {
            let next: ServerFrameReader.Frame?
            do { next = try reader.nextFrame() } catch { throw Failure(description: error.description) }
            guard let frame = next else {
                reader.append(try receive())
                continue
            }
            if frame.opcode == 0xA, frame.payload == payload {
                return Double(DispatchTime.now().uptimeNanoseconds - started.uptimeNanoseconds) / 1e9
            }
            if let close = frame.close {
                throw Failure(description: "the gateway closed the session (\(close.code) \(close.reason))")
            }
        }
    }

    /// Ends the session politely: a close frame (1000), then TLS close_notify.
    func close() {
        guard let ssl else { return }
        let mask = (0..<4).map { _ in UInt8.random(in: 0...255) }
        let code: [UInt8] = [0x03, 0xE8]
        try? send([0x88, 0x82] + mask + code.enumerated().map { $0.element ^ mask[$0.offset % 4] })
        _ = openssl.shutdown(ssl)
    }

    private func send(_ bytes: [UInt8]) throws {
        guard let ssl else { throw Failure(description: "no TLS connection") }
        let written = bytes.withUnsafeBytes { openssl.write(ssl, $0.baseAddress, Int32($0.count)) }
        guard written == bytes.count else { throw Failure(description: readFailure(written)) }
    }

    private func receive() throws -> [UInt8] {
        guard let ssl else { throw Failure(description: "no TLS connection") }
        var buffer = [UInt8](repeating: 0, count: 16_384)
        let count = buffer.withUnsafeMutableBytes { openssl.read(ssl, $0.baseAddress, Int32($0.count)) }
        guard count > 0 else { throw Failure(description: readFailure(count)) }
        return Array(buffer[0..<Int(count)])
    }

    static func seconds(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(format: "%.3g", value)
    }

    private func readFailure(_ result: Int32) -> String {
        let systemError = errno
        guard let ssl else { return "no TLS connection" }
        let code = openssl.getError(ssl, result)
        let errors = openssl.drainErrors()
        if let alert = recorder.receivedAlert { return "the gateway sent the alert \(alert)" }
        switch code {
        case 6: return "the gateway closed the connection (TLS close_notify)"  // SSL_ERROR_ZERO_RETURN
        case 2, 3: return "no answer within \(Self.seconds(timeout)) s"  // WANT_READ / WANT_WRITE: the socket timed out
        case _ where !errors.isEmpty: return errors.joined(separator: "; ")
        case 5: return systemError == EAGAIN || systemError == EWOULDBLOCK ? "no answer within \(Self.seconds(timeout)) s" : "the connection was closed or reset"
        default: return "TLS error \(code)"
        }
    }
}
