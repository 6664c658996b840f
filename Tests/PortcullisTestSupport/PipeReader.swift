import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Reads a child process's pipe to its end with blocking reads on a thread of its own.
///
/// Not `FileHandle.readabilityHandler`: on Linux that arms a libdispatch read source whose teardown races the
/// descriptor's close, and it crashed the test process in `_dispatch_event_loop_drain`
/// (swift-corelibs-libdispatch#949, swift-corelibs-foundation#3276). A blocking read never registers the
/// descriptor with libdispatch, and end of file simply ends the thread.
public final class PipeReader: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private var ended = false

    /// Starts reading `handle`; `onData` sees each chunk as it arrives, on the reading thread.
    public init(_ handle: FileHandle, onData: (@Sendable (Data) -> Void)? = nil) {
        let thread = Thread { [self] in
            while true {
                // Blocks until some bytes or end of file (an empty result).
                let chunk = readSome(handle)
                if chunk.isEmpty { break }
                lock.withLock { data.append(chunk) }
                onData?(chunk)
            }
            lock.withLock { ended = true }
        }
        thread.name = "test-pipe-reader"
        thread.start()
    }

    /// Everything read so far.
    public var collected: Data { lock.withLock { data } }

    /// Waits until the writer's end is closed (the process exited) and everything is read, up to `timeout`
    /// seconds; returns whether the end was reached.
    @discardableResult
    public func waitForEnd(timeout: Double = 5) async throws -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !lock.withLock({ ended }) {
            guard Date() < deadline else { return false }
            try await Task.sleep(for: .milliseconds(10))
        }
        return true
    }
}

/// Up to 64 KiB from `handle`, blocking until some arrive; empty at end of file or on an error.
///
/// Not `availableData`, which is a `try!` around `read`: a signal interrupting the read (EINTR) ended the test
/// process with a fatal error. Here an interrupted read is simply repeated.
public func readSome(_ handle: FileHandle) -> Data {
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(handle.fileDescriptor, $0.baseAddress, $0.count) }
        if count >= 0 { return Data(buffer[0..<count]) }
        if errno != EINTR { return Data() }
    }
}

/// Everything `handle` gives until end of file (``readSome(_:)`` repeated).
public func readToEnd(_ handle: FileHandle) -> Data {
    var data = Data()
    while true {
        let chunk = readSome(handle)
        if chunk.isEmpty { return data }
        data.append(chunk)
    }
}
