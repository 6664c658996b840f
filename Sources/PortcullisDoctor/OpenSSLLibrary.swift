import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The system's OpenSSL 3 (`libssl.so.3`, and libcrypto through it), loaded at run time for what swift-nio-ssl
/// does not tell a client: the negotiated cipher suite and key-exchange group, whether the server asked for a
/// client certificate and which CAs it named, and the alert it sent. A diagnosis wants exactly those, and
/// OpenSSL is what most devices' TLS stacks are, so its view is the device's view. No headers are needed to build.
final class OpenSSLLibrary: @unchecked Sendable {
    // @unchecked: immutable after init; the functions are thread-safe on distinct SSL objects.
    typealias Pointer = OpaquePointer
    typealias MessageCallback = @convention(c) (
        Int32, Int32, Int32, UnsafeRawPointer?, Int, Pointer?, UnsafeMutableRawPointer?
    ) -> Void

    let clientMethod: @convention(c) () -> Pointer?
    let newContext: @convention(c) (Pointer?) -> Pointer?
    let freeContext: @convention(c) (Pointer?) -> Void
    let loadVerifyLocations: @convention(c) (Pointer?, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Int32
    let useCertificateChainFile: @convention(c) (Pointer?, UnsafePointer<CChar>?) -> Int32
    let usePrivateKeyFile: @convention(c) (Pointer?, UnsafePointer<CChar>?, Int32) -> Int32
    let checkPrivateKey: @convention(c) (Pointer?) -> Int32
    let newSSL: @convention(c) (Pointer?) -> Pointer?
    let freeSSL: @convention(c) (Pointer?) -> Void
    let setFD: @convention(c) (Pointer?, Int32) -> Int32
    let control: @convention(c) (Pointer?, Int32, Int, UnsafeMutableRawPointer?) -> Int
    let setMessageCallback: @convention(c) (Pointer?, MessageCallback?) -> Void
    let setHost: @convention(c) (Pointer?, UnsafePointer<CChar>?) -> Int32
    let verifyParameters: @convention(c) (Pointer?) -> Pointer?
    let setVerifyIP: @convention(c) (Pointer?, UnsafePointer<CChar>?) -> Int32
    let connect: @convention(c) (Pointer?) -> Int32
    let read: @convention(c) (Pointer?, UnsafeMutableRawPointer?, Int32) -> Int32
    let write: @convention(c) (Pointer?, UnsafeRawPointer?, Int32) -> Int32
    let getError: @convention(c) (Pointer?, Int32) -> Int32
    let shutdown: @convention(c) (Pointer?) -> Int32
    let version: @convention(c) (Pointer?) -> UnsafePointer<CChar>?
    let currentCipher: @convention(c) (Pointer?) -> Pointer?
    let cipherStandardName: @convention(c) (Pointer?) -> UnsafePointer<CChar>?
    let groupName: @convention(c) (Pointer?, Int32) -> UnsafePointer<CChar>?
    let peerChain: @convention(c) (Pointer?) -> Pointer?
    let clientCAList: @convention(c) (Pointer?) -> Pointer?
    let stackCount: @convention(c) (Pointer?) -> Int32
    let stackValue: @convention(c) (Pointer?, Int32) -> Pointer?
    let certificateDER: @convention(c) (Pointer?, UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?) -> Int32
    let nameDER: @convention(c) (Pointer?, UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?) -> Int32
    let verifyResult: @convention(c) (Pointer?) -> Int
    let verifyErrorText: @convention(c) (Int) -> UnsafePointer<CChar>?
    let nextError: @convention(c) () -> UInt
    let errorText: @convention(c) (UInt, UnsafeMutablePointer<CChar>?, Int) -> Void
    let clearErrors: @convention(c) () -> Void
    private let handle: UnsafeMutableRawPointer

    /// `SSL_ctrl` commands (macros in ssl.h).
    static let setMessageCallbackArgument: Int32 = 16
    static let setServerName: Int32 = 55
    static let negotiatedGroup: Int32 = 134

    struct Unavailable: Error, CustomStringConvertible {
        var description: String
    }

    init() throws {
        guard let handle = dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL) else {
            throw Unavailable(description: "doctor needs the system's OpenSSL 3 (libssl.so.3): \(String(cString: dlerror()))")
        }
        self.handle = handle
        func symbol<T>(_ name: String, as _: T.Type) throws -> T {
            // Through libssl's handle: dlsym searches its dependencies, libcrypto among them.
            guard let address = dlsym(handle, name) else { throw Unavailable(description: "libssl.so.3 has no \(name)") }
            return unsafeBitCast(address, to: T.self)
        }
        clientMethod = try symbol("TLS_client_method", as: (@convention(c) () -> Pointer?).self)
        newContext = try symbol("SSL_CTX_new", as: (@convention(c) (Pointer?) -> Pointer?).self)
        freeContext = try symbol("SSL_CTX_free", as: (@convention(c) (Pointer?) -> Void).self)
        loadVerifyLocations = try symbol(
            "SSL_CTX_load_verify_locations", as: (@convention(c) (Pointer?, UnsafePointer<CChar>?, UnsafePointer<CChar>?) -> Int32).self)
        useCertificateChainFile = try symbol(
            "SSL_CTX_use_certificate_chain_file", as: (@convention(c) (Pointer?, UnsafePointer<CChar>?) -> Int32).self)
        usePrivateKeyFile = try symbol(
            "SSL_CTX_use_PrivateKey_file", as: (@convention(c) (Pointer?, UnsafePointer<CChar>?, Int32) -> Int32).self)
        checkPrivateKey = try symbol("SSL_CTX_check_private_key", as: (@convention(c) (Pointer?) -> Int32).self)
        newSSL = try symbol("SSL_new", as: (@convention(c) (Pointer?) -> Pointer?).self)
        freeSSL = try symbol("SSL_free", as: (@convention(c) (Pointer?) -> Void).self)
        setFD = try symbol("SSL_set_fd", as: (@convention(c) (Pointer?, Int32) -> Int32).self)
        control = try symbol("SSL_ctrl", as: (@convention(c) (Pointer?, Int32, Int, UnsafeMutableRawPointer?) -> Int).self)
        setMessageCallback = try symbol("SSL_set_msg_callback", as: (@convention(c) (Pointer?, MessageCallback?) -> Void).self)
        setHost = try symbol("SSL_set1_host", as: (@convention(c) (Pointer?, UnsafePointer<CChar>?) -> Int32).self)
        verifyParameters = try symbol("SSL_get0_param", as: (@convention(c) (Pointer?) -> Pointer?).self)
        setVerifyIP = try symbol("X509_VERIFY_PARAM_set1_ip_asc", as: (@convention(c) (Pointer?, UnsafePointer<CChar>?) -> Int32).self)
        connect = try symbol("SSL_connect", as: (@convention(c) (Pointer?) -> Int32).self)
        read = try symbol("SSL_read", as: (@convention(c) (Pointer?, UnsafeMutableRawPointer?, Int32) -> Int32).self)
        write = try symbol("SSL_write", as: (@convention(c) (Pointer?, UnsafeRawPointer?, Int32) -> Int32).self)
        getError = try symbol("SSL_get_error", as: (@convention(c) (Pointer?, Int32) -> Int32).self)
        shutdown = try symbol("SSL_shutdown", as: (@convention(c) (Pointer?) -> Int32).self)
        version = try symbol("SSL_get_version", as: (@convention(c) (Pointer?) -> UnsafePointer<CChar>?).self)
        currentCipher = try symbol("SSL_get_current_cipher", as: (@convention(c) (Pointer?) -> Pointer?).self)
        cipherStandardName = try symbol("SSL_CIPHER_standard_name", as: (@convention(c) (Pointer?) -> UnsafePointer<CChar>?).self)
        groupName = try symbol("SSL_group_to_name", as: (@convention(c) (Pointer?, Int32) -> UnsafePointer<CChar>?).self)
        peerChain = try symbol("SSL_get_peer_cert_chain", as: (@convention(c) (Pointer?) -> Pointer?).self)
        clientCAList = try symbol("SSL_get_client_CA_list", as: (@convention(c) (Pointer?) -> Pointer?).self)
        stackCount = try symbol("OPENSSL_sk_num", as: (@convention(c) (Pointer?) -> Int32).self)
        stackValue = try symbol("OPENSSL_sk_value", as: (@convention(c) (Pointer?, Int32) -> Pointer?).self)
        certificateDER = try symbol(
            "i2d_X509", as: (@convention(c) (Pointer?, UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?) -> Int32).self)
        nameDER = try symbol(
            "i2d_X509_NAME", as: (@convention(c) (Pointer?, UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?) -> Int32).self)
        verifyResult = try symbol("SSL_get_verify_result", as: (@convention(c) (Pointer?) -> Int).self)
        verifyErrorText = try symbol("X509_verify_cert_error_string", as: (@convention(c) (Int) -> UnsafePointer<CChar>?).self)
        nextError = try symbol("ERR_get_error", as: (@convention(c) () -> UInt).self)
        errorText = try symbol("ERR_error_string_n", as: (@convention(c) (UInt, UnsafeMutablePointer<CChar>?, Int) -> Void).self)
        clearErrors = try symbol("ERR_clear_error", as: (@convention(c) () -> Void).self)
    }

    /// The DER encodings of a `STACK_OF(X509)` or `STACK_OF(X509_NAME)`, by `encode` (i2d_X509 or i2d_X509_NAME).
    func derEncodings(
        of stack: Pointer?, _ encode: @convention(c) (Pointer?, UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?) -> Int32
    ) -> [[UInt8]] {
        guard let stack else { return [] }
        return (0..<max(0, stackCount(stack))).compactMap { index in
            let item = stackValue(stack, index)
            let length = encode(item, nil)
            guard length > 0, length < 1 << 20 else { return nil }
            var bytes = [UInt8](repeating: 0, count: Int(length))
            let written = bytes.withUnsafeMutableBufferPointer { buffer -> Int32 in
                var cursor = buffer.baseAddress
                return encode(item, &cursor)
            }
            return written == length ? bytes : nil
        }
    }

    /// OpenSSL's queued errors as text, oldest first; the queue is emptied.
    @discardableResult
    func drainErrors() -> [String] {
        var texts: [String] = []
        while texts.count < 16 {
            let code = nextError()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            errorText(code, &buffer, buffer.count)
            texts.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return texts
    }
}
