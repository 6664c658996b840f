import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A server process a test needs that did not start.
public struct StartFailure: Error, CustomStringConvertible {
    public let description: String

    public init(description: String) {
        self.description = description
    }
}

/// A loopback port nothing listens on now: bound with port 0, read back, closed.
public func freeLoopbackPort() throws -> Int {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw StartFailure(description: "socket: \(String(cString: strerror(errno)))") }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
            bind(descriptor, socketAddress, length) == 0 && getsockname(descriptor, socketAddress, &length) == 0
        }
    }
    guard bound else { throw StartFailure(description: "bind: \(String(cString: strerror(errno)))") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Whether process `pid` itself listens on `port` (IPv4 or IPv6): a listening socket of that port in
/// /proc/net/tcp or tcp6 is one of the process's descriptors. A connection test alone was fooled when
/// another test's listener took the port between `freeLoopbackPort()` and the process's bind: the process
/// exited, and the suite then ran against a port nobody listened on.
public func listens(pid: Int32, port: Int) -> Bool {
    let suffix = ":" + String(format: "%04X", port)
    let inodes = ["/proc/net/tcp", "/proc/net/tcp6"].flatMap { path -> [String] in
        guard let table = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return table.split(separator: "\n").dropFirst().compactMap { line -> String? in
            let fields = line.split(separator: " ")
            // local_address, rem_address, st (0A: LISTEN), …, inode (the tenth field).
            guard fields.count > 9, fields[1].hasSuffix(suffix), fields[3] == "0A" else { return nil }
            return String(fields[9])
        }
    }
    guard !inodes.isEmpty,
        let descriptors = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")
    else { return false }
    return descriptors.contains { descriptor in
        let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(descriptor)")
        return inodes.contains { target == "socket:[\($0)]" }
    }
}

/// Stops a child process: SIGTERM, then SIGKILL if it lingers past 5 s (some, like Mosquitto's websockets loop,
/// sit out a SIGTERM). Polled: `waitUntilExit()` can wait forever on a concurrency thread.
public func stopProcess(_ process: ChildProcess) {
    guard process.isRunning else { return }
    kill(process.processIdentifier, SIGTERM)
    var deadline = Date().addingTimeInterval(5)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    deadline = Date().addingTimeInterval(5)
    while process.isRunning && Date() < deadline { usleep(10_000) }
}

/// The path of the installed program `name`: `/usr/sbin/NAME` (where Debian puts servers, often not on a
/// user's PATH) or the first on PATH; nil when it is not installed.
public func installedProgram(_ name: String) -> String? {
    let directories = ["/usr/sbin"] + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map(String.init)
    return directories.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// Starts `executable` with `arguments`, its output appended to the file `log` (a pipe nobody reads would stop
/// it once full), and waits up to 120 s for it to listen on `port`. Nil when it exited or did not listen: the
/// port may have been taken meanwhile, and the caller tries another.
public func startListening(_ executable: String, _ arguments: [String], port: Int, log: String) async throws -> ChildProcess? {
    if !FileManager.default.fileExists(atPath: log) { _ = FileManager.default.createFile(atPath: log, contents: nil) }
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
    handle.seekToEndOfFile()
    let process = ChildProcess()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardOutput = handle
    process.standardError = handle
    process.standardInput = FileHandle.nullDevice
    try process.run()
    try? handle.close()
    let deadline = Date().addingTimeInterval(120)
    while process.isRunning && Date() < deadline {
        if listens(pid: process.processIdentifier, port: port) { return process }
        try await Task.sleep(for: .milliseconds(50))
    }
    stopProcess(process)
    return nil
}
