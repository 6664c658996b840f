import Foundation
import SwiftASN1

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes files the way the PKI layout promises: to a temporary file in the same directory, fsync'd, then
/// renamed over the target (and the directory fsync'd), so a crash leaves either the old file or the new
/// one, never a torn one. Permissions are set on the temporary file before any byte is written.
public enum AtomicFile {
    public struct WriteError: Error, CustomStringConvertible {
        public var path: String
        public var operation: String
        public var code: Int32
        public var description: String { "\(operation) \(path): \(String(cString: strerror(code)))" }
    }

    /// Writes `bytes` to `path` atomically with the given permission bits (0o600 for private keys).
    public static func write(_ bytes: [UInt8], to path: String, mode: mode_t = 0o644) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let temporary = "\(directory.isEmpty ? "." : directory)/.\((path as NSString).lastPathComponent).tmp-\(UInt64.random(in: 0...UInt64.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw WriteError(path: temporary, operation: "create", code: errno) }
        var succeeded = false
        defer {
            if !succeeded { unlink(temporary) }
        }
        do {
            defer { close(fd) }
            // open() applies the umask; make the mode exact.
            guard fchmod(fd, mode) == 0 else { throw WriteError(path: temporary, operation: "chmod", code: errno) }
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeBytes { buffer in
                    Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                }
                if written < 0 {
                    if errno == EINTR { continue }
                    throw WriteError(path: temporary, operation: "write", code: errno)
                }
                offset += written
            }
            guard fsync(fd) == 0 else { throw WriteError(path: temporary, operation: "fsync", code: errno) }
        }
        guard rename(temporary, path) == 0 else { throw WriteError(path: path, operation: "rename to", code: errno) }
        succeeded = true
        syncDirectory(directory.isEmpty ? "." : directory)
    }

    public static func write(_ text: String, to path: String, mode: mode_t = 0o644) throws {
        try write(Array(text.utf8), to: path, mode: mode)
    }

    /// Writes a PEM document as tools expect a PEM file: ending with a newline, so files concatenate into bundles.
    public static func write(_ document: PEMDocument, to path: String, mode: mode_t = 0o644) throws {
        try write(document.pemString + "\n", to: path, mode: mode)
    }

    /// Creates a directory (and parents) with the given mode, leaving an existing one as it is.
    public static func makeDirectory(_ path: String, mode: mode_t = 0o755) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue { return }
        try FileManager.default.createDirectory(
            atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: NSNumber(value: mode)])
    }

    private static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        close(fd)
    }
}
