import FuzzDriver
import Glibc
import PortcullisProtocol

/// Every way the gateway reads a client's broker message (the JSON request through the object scanner, the
/// binary envelope with and without a remembered topic), and the client side's reading of deliveries. Any
/// input may be refused; none may crash, trap or hang (libFuzzer's -timeout catches the last).
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: count)
    _ = try? JSONObjectScanner.members(of: bytes)
    _ = try? MessagingProtocol.decodeRequest(text: bytes)
    _ = try? MessagingProtocol.decodeRequest(binary: bytes, previousTopic: nil)
    _ = try? MessagingProtocol.decodeRequest(binary: bytes, previousTopic: "devices/42/telemetry")
    _ = MessagingProtocol.decodeEvent(binary: true, bytes: bytes)
    _ = MessagingProtocol.decodeEvent(binary: false, bytes: bytes)
    return 0
}

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
