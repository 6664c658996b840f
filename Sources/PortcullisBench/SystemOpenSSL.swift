import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The system's OpenSSL (`libssl.so.3`), loaded at run time, for the one thing swift-nio-ssl's client cannot
/// do: keep a TLS session and resume it. Only the handful of functions a resuming load generator needs are
/// looked up; no headers are needed to build, and nothing else uses it.
final class SystemOpenSSL: @unchecked Sendable {
    // @unchecked: immutable after init; the functions are thread-safe on distinct SSL objects.
    typealias Pointer = OpaquePointer
    let clientMethod: @convention(c) () -> Pointer?
    let newContext: @convention(c) (Pointer?) -> Pointer?
    let freeContext: @convention(c) (Pointer?) -> Void
    let useCertificateChainFile: @convention(c) (Pointer?, UnsafePointer<CChar>?) -> Int32
    let usePrivateKeyFile: @convention(c) (Pointer?, UnsafePointer<CChar>?, Int32) -> Int32
    let loadVerifyLocations: @convention(c) (Pointer?, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Int32
    let setVerify: @convention(c) (Pointer?, Int32, OpaquePointer?) -> Void
    let newSSL: @convention(c) (Pointer?) -> Pointer?
    let freeSSL: @convention(c) (Pointer?) -> Void
    let setFD: @convention(c) (Pointer?, Int32) -> Int32
    let control: @convention(c) (Pointer?, Int32, Int, UnsafeMutableRawPointer?) -> Int
    let connect: @convention(c) (Pointer?) -> Int32
    let read: @convention(c) (Pointer?, UnsafeMutableRawPointer?, Int32) -> Int32
    let write: @convention(c) (Pointer?, UnsafeRawPointer?, Int32) -> Int32
    let getSession: @convention(c) (Pointer?) -> Pointer?
    let setSession: @convention(c) (Pointer?, Pointer?) -> Int32
    let freeSession: @convention(c) (Pointer?) -> Void
    let sessionReused: @convention(c) (Pointer?) -> Int32
    let shutdown: @convention(c) (Pointer?) -> Int32
    let getError: @convention(c) (Pointer?, Int32) -> Int32
    let setShutdownFlags: @convention(c) (Pointer?, Int32) -> Void
    let useConnectionCertificateChainFile: @convention(c) (Pointer?, UnsafePointer<CChar>?) -> Int32
    let useConnectionPrivateKeyFile: @convention(c) (Pointer?, UnsafePointer<CChar>?, Int32) -> Int32
    private let handle: UnsafeMutableRawPointer

    init() throws {
        guard let handle = dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL) else {
            throw BenchError("--resume needs the system's OpenSSL 3 (libssl.so.3): \(String(cString: dlerror()))")
        }
        self.handle = handle
        func symbol<T>(_ name: String, as _: T.Type) throws -> T {
            guard let address = dlsym(handle, name) else { throw BenchError("libssl.so.3 has no \(name)") }
            return unsafeBitCast(address, to: T.self)
        }
        clientMethod = try symbol("TLS_client_method", as: (@convention(c) () -> Pointer?).self)
        newContext = try symbol("SSL_CTX_new", as: (@convention(c) (Pointer?) -> Pointer?).self)
        freeContext = try symbol("SSL_CTX_free", as: (@convention(c) (Pointer?) -> Void).self)
        useCertificateChainFile = try symbol(
            "SSL_CTX_use_certificate_chain_file", as: (@convention(c) (Pointer?, UnsafePointer<CChar>?) -> Int32).self)
        usePrivateKeyFile = try symbol(
            "SSL_CTX_use_PrivateKey_file", as: (@convention(c) (Pointer?, UnsafePointer<CChar>?, Int32) -> Int32).self)
        loadVerifyLocations = try symbol(
            "SSL_CTX_load_verify_locations",
            as: (@convention(c) (Pointer?, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Int32).self)
        setVerify = try symbol("SSL_CTX_set_verify", as: (@convention(c) (Pointer?, Int32, OpaquePointer?) -> Void).self)
        newSSL = try symbol("SSL_new", as: (@convention(c) (Pointer?) -> Pointer?).self)
        freeSSL = try symbol("SSL_free", as: (@convention(c) (Pointer?) -> Void).self)
        setFD = try symbol("SSL_set_fd", as: (@convention(c) (Pointer?, Int32) -> Int32).self)
        control = try symbol("SSL_ctrl", as: (@convention(c) (Pointer?, Int32, Int, UnsafeMutableRawPointer?) -> Int).self)
        connect = try symbol("SSL_connect", as: (@convention(c) (Pointer?) -> Int32).self)
        read = try symbol("SSL_read", as: (@convention(c) (Pointer?, UnsafeMutableRawPointer?, Int32) -> Int32).self)
        write = try symbol("SSL_write", as: (@convention(c) (Pointer?, UnsafeRawPointer?, Int32) -> Int32).self)
        getSession = try symbol("SSL_get1_session", as: (@convention(c) (Pointer?) -> Pointer?).self)
        setSession = try symbol("SSL_set_session", as: (@convention(c) (Pointer?, Pointer?) -> Int32).self)
        freeSession = try symbol("SSL_SESSION_free", as: (@convention(c) (Pointer?) -> Void).self)
        sessionReused = try symbol("SSL_session_reused", as: (@convention(c) (Pointer?) -> Int32).self)
        shutdown = try symbol("SSL_shutdown", as: (@convention(c) (Pointer?) -> Int32).self)
        getError = try symbol("SSL_get_error", as: (@convention(c) (Pointer?, Int32) -> Int32).self)
        setShutdownFlags = try symbol("SSL_set_shutdown", as: (@convention(c) (Pointer?, Int32) -> Void).self)
        useConnectionCertificateChainFile = try symbol(
            "SSL_use_certificate_chain_file", as: (@convention(c) (Pointer?, UnsafePointer<CChar>?) -> Int32).self)
        useConnectionPrivateKeyFile = try symbol(
            "SSL_use_PrivateKey_file", as: (@convention(c) (Pointer?, UnsafePointer<CChar>?, Int32) -> Int32).self)
    }

    /// A client context with the device's certificate and key, trusting `ca` for the server.
    func makeClientContext(certificate: String, key: String, ca: String) throws -> Pointer {
        guard let context = newContext(clientMethod()) else { throw BenchError("SSL_CTX_new failed") }
        guard useCertificateChainFile(context, certificate) == 1 else { throw BenchError("cannot load \(certificate) with OpenSSL") }
        guard usePrivateKeyFile(context, key, 1 /* SSL_FILETYPE_PEM */) == 1 else { throw BenchError("cannot load \(key) with OpenSSL") }
        guard loadVerifyLocations(context, ca, nil) == 1 else { throw BenchError("cannot load \(ca) with OpenSSL") }
        setVerify(context, 1 /* SSL_VERIFY_PEER */, nil)
        return context
    }

    /// SSL_set_tlsext_host_name, a macro over SSL_ctrl.
    func setServerName(_ ssl: Pointer, _ name: String) {
        _ = name.withCString { control(ssl, 55 /* SSL_CTRL_SET_TLSEXT_HOSTNAME */, 0, UnsafeMutableRawPointer(mutating: $0)) }
    }
}
