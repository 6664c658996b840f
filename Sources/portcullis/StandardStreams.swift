#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Standard output and error, written with `write(2)`.
///
/// Foundation's `FileHandle.write` is a `try!` around `write`: when the reader has gone (`portcullis audit query |
/// head`, a subscriber piped into a program that ended) the command trapped with a fatal error. SIGPIPE is
/// ignored in this process (SwiftNIO's sockets need that), so the write fails with EPIPE instead, and the command
/// ends as a Unix tool killed by SIGPIPE would look to its shell: quietly, with status 141.
enum StandardStreams {
    /// Writes `text` to standard output; ends the process (141) when nobody reads it any more.
    static func output(_ text: String) {
        if !write(Array(text.utf8), to: STDOUT_FILENO) { exit(141) }
    }

    /// Writes `bytes` to standard output; ends the process (141) when nobody reads it any more.
    static func output(_ bytes: [UInt8]) {
        if !write(bytes, to: STDOUT_FILENO) { exit(141) }
    }

    /// Writes `text` to standard output for a server: a gateway does not end because its output is not read.
    static func serverOutput(_ text: String) {
        _ = write(Array(text.utf8), to: STDOUT_FILENO)
    }

    /// Writes `text` to standard error; a closed standard error is ignored (there is nowhere left to say it).
    static func error(_ text: String) {
        _ = write(Array(text.utf8), to: STDERR_FILENO)
    }

    /// All of `bytes`, retrying interrupted and short writes; false when the descriptor cannot take them.
    private static func write(_ bytes: [UInt8], to descriptor: Int32) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { buffer in
                Glibc.write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
            }
            if written < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return false
            }
            offset += written
        }
        return true
    }
}
