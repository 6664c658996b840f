import FuzzDriver
import FuzzSupport
import Glibc
import PortcullisAdmission

/// A connection's first bytes as a trusted load balancer's PROXY protocol v2 header. What the reader decides must
/// hold whatever else arrives: a header reads the same from its own bytes, a refusal of some first bytes stays a
/// refusal (with the same reason) of every longer input, and nothing past the accepted length is ever waited for.
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(UnsafeRawBufferPointer(start: data, count: count))
    let outcome = ProxyHeader.read(bytes)
    switch outcome {
    case .header(let header):
        require(header.length >= ProxyHeader.fixedLength, "a header of \(header.length) bytes")
        require(header.length <= ProxyHeader.fixedLength + ProxyHeader.maximumBodyLength, "a header of \(header.length) bytes")
        require(header.length <= count, "a header longer than its input")
        require(ProxyHeader.read(bytes.prefix(header.length)) == outcome, "the header does not read the same alone")
        if let source = header.source {
            require(!source.address.isEmpty && (0...65_535).contains(source.port), "source \(source)")
            require(header.command == .proxy, "a LOCAL header with a source")
        }
    case .needMore:
        require(count < ProxyHeader.fixedLength + ProxyHeader.maximumBodyLength, "waits past the largest header")
    case .refused(let problem):
        require(problem.reason.hasPrefix("proxy_header_") && !problem.detail.isEmpty, "refusal \(problem)")
    }
    // Decisions made on some first bytes stand.
    for length in stride(from: 0, to: count, by: max(1, count / 8)) {
        if case .refused(let early) = ProxyHeader.read(bytes.prefix(length)) {
            guard case .refused(let late) = outcome else {
                require(false, "refused after \(length) bytes, then \(outcome)")
                return 0
            }
            require(early.reason == late.reason, "\(early) after \(length) bytes, then \(late)")
        }
    }
    return 0
}

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
