import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A child process started with `posix_spawn`: the subset of Foundation's `Process` the tests use, with the
/// same property names.
///
/// Not Foundation's `Process`: on this toolchain (Swift 6.3.1) `Process.run()` finds the highest open
/// descriptor by copying whole `dirent` records out of `/proc/self/fd`, which reads past the end of glibc's
/// buffer when a short record sits at the end of a page — it crashed the test process in `memmove` (CI, stop 25;
/// fixed upstream in swift-corelibs-foundation's `findMaximumOpenFromProcSelfFD`). Here the child closes every
/// inherited descriptor with `posix_spawn_file_actions_addclosefrom_np`, and nothing reads `/proc`.
public final class ChildProcess: @unchecked Sendable {
    /// The program to run.
    public var executableURL: URL?
    public var arguments: [String] = []
    /// The whole environment of the child; nil inherits this process's.
    public var environment: [String: String]?
    public var currentDirectoryURL: URL?
    /// A `Pipe` or a `FileHandle` each; nil inherits this process's.
    public var standardInput: Any?
    public var standardOutput: Any?
    public var standardError: Any?

    private let lock = NSLock()
    private var pid: pid_t = 0
    private var waitStatus: Int32?

    public init() {}

    /// The child's process ID; 0 before `run()`.
    public var processIdentifier: Int32 { lock.withLock { pid } }

    /// Starts the child; throws when the program could not be spawned.
    public func run() throws {
        guard let executable = executableURL?.path else { throw StartFailure(description: "no executable") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var closeInParent: [Int32: FileHandle] = [:]
        for (stream, target) in [(standardInput, STDIN_FILENO), (standardOutput, STDOUT_FILENO), (standardError, STDERR_FILENO)] {
            let result: Int32
            switch stream {
            case let pipe as Pipe:
                // The child's end goes to the child; the parent keeps only its own end, so that end of file arrives.
                let childEnd = target == STDIN_FILENO ? pipe.fileHandleForReading : pipe.fileHandleForWriting
                result = posix_spawn_file_actions_adddup2(&actions, childEnd.fileDescriptor, target)
                closeInParent[childEnd.fileDescriptor] = childEnd
            case let handle as FileHandle where handle.fileDescriptor < 0:
                // `FileHandle.nullDevice` has no descriptor (-1): the child gets /dev/null. Left alone, the child
                // inherited the test process's own output, and a server that outlived its test (Mosquitto) held
                // swift-test's pipe open: the run never ended.
                result = posix_spawn_file_actions_addopen(&actions, target, "/dev/null", O_RDWR, 0)
            case let handle as FileHandle:
                result = posix_spawn_file_actions_adddup2(&actions, handle.fileDescriptor, target)
            default:
                result = 0
            }
            guard result == 0 else { throw StartFailure(description: "spawn file action for descriptor \(target): \(String(cString: strerror(result)))") }
        }
        // After the dup2s: the originals, and everything else this process holds, stay out of the child.
        guard GlibcSpawn.addClosefrom(&actions, 3) == 0 else { throw StartFailure(description: "addclosefrom_np failed") }
        if let directory = currentDirectoryURL?.path {
            guard GlibcSpawn.addChdir(&actions, directory) == 0 else { throw StartFailure(description: "addchdir_np failed") }
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group, as Foundation's `Process` does: a terminal's Ctrl-C is for the test runner.
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP))
        posix_spawnattr_setpgroup(&attributes, 0)

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let environmentStrings = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        let envp = environmentStrings.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var child: pid_t = 0
        let result = posix_spawn(&child, executable, &actions, &attributes, argv, envp)
        guard result == 0 else {
            throw StartFailure(description: "posix_spawn \(executable): \(String(cString: strerror(result)))")
        }
        lock.withLock { pid = child }
        // Through the handle, which owns the descriptor: a bare close() would be repeated when it is released.
        for handle in closeInParent.values { try? handle.close() }
    }

    /// Whether the child has not exited yet (reaps it when it has).
    public var isRunning: Bool {
        lock.withLock {
            guard pid > 0, waitStatus == nil else { return false }
            var status: Int32 = 0
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid { waitStatus = status }
            return result == 0
        }
    }

    /// Blocks until the child exits.
    public func waitUntilExit() {
        while isRunning { usleep(5_000) }
    }

    /// SIGTERM to the child's process group (its own, see `run()`), while the child runs: what a shell it runs
    /// started goes too (an `openssl` holding a session, its `sleep`). Not once the child has exited: its number
    /// may name another group by then.
    public func terminate() {
        let child = processIdentifier
        if child > 0, isRunning { kill(-child, SIGTERM) }
    }

    /// The exit code, or the signal that ended the child; -1 while it runs.
    public var terminationStatus: Int32 {
        guard let status = lock.withLock({ waitStatus }) else { return -1 }
        let signal = status & 0x7f
        return signal == 0 ? (status >> 8) & 0xff : signal
    }
}

/// glibc's `_np` spawn actions (2.29 and 2.34; Debian 12 has 2.36), which its headers declare only under
/// `_GNU_SOURCE`, so Swift's Glibc module does not import them: looked up once by name.
private enum GlibcSpawn {
    typealias Closefrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    typealias Chdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32

    static let addClosefrom: Closefrom = unsafeBitCast(symbol("posix_spawn_file_actions_addclosefrom_np"), to: Closefrom.self)
    static let addChdir: Chdir = unsafeBitCast(symbol("posix_spawn_file_actions_addchdir_np"), to: Chdir.self)

    private static func symbol(_ name: String) -> UnsafeMutableRawPointer {
        // A null handle is RTLD_DEFAULT: the symbols of the process, libc's among them.
        guard let address = dlsym(nil, name) else { fatalError("glibc has no \(name) (it needs 2.34 or later)") }
        return address
    }
}
