import Foundation
import PortcullisConfig
import PortcullisPolicy

#if canImport(Glibc)
import Glibc
#endif

/// Watches the files a reload reads and calls back once they have changed and then kept still.
///
/// It polls `stat` rather than using inotify: writers replace these files in every way there is (an atomic
/// rename like `portcullis pki`, an editor's save, a Kubernetes secret's symlink swap, a new file appearing
/// in the policies directory), and comparing inode, size and modification time catches them all with no
/// per-case code. A poll of a dozen paths a second costs nothing, and it runs on a task of its own, never on
/// an event loop.
public struct ReloadWatcher: Sendable {
    /// The files of `configuration` that a reload reads: TLS files, CRL, every policy file and the policies
    /// directory itself (for files added or removed), the files the gateway signs in to NATS with, plus `extra`
    /// (the configuration file).
    public static func watchedPaths(of configuration: GatewayConfiguration, extra: [String] = []) -> [String] {
        let tls = configuration.tls
        var paths = extra + [tls.certificateChain, tls.privateKey, tls.clientCA]
        if let intermediates = tls.clientIntermediates { paths.append(intermediates) }
        if let crl = tls.crl { paths.append(crl) }
        if let nats = configuration.nats {
            paths += [nats.certificate, nats.key, nats.ca, nats.passwordFile, nats.credentialsFile, nats.nkeySeedFile]
                .compactMap { $0 }
        }
        let directory = configuration.policiesDirectory
        paths.append(directory)
        paths += ((try? PolicySet.fileNames(in: directory)) ?? []).map { "\(directory)/\($0)" }
        return paths
    }

    /// What `stat` says of a path; equal stamps mean the file was not replaced or written.
    struct Stamp: Equatable {
        var exists: Bool
        var device: UInt64 = 0
        var inode: UInt64 = 0
        var size: Int64 = 0
        var modified: Int64 = 0

        init(path: String) {
            var info = stat()
            // stat, not lstat: a symlink swapped to a new target shows up as a new inode.
            guard stat(path, &info) == 0 else {
                exists = false
                return
            }
            exists = true
            device = UInt64(info.st_dev)
            inode = UInt64(info.st_ino)
            size = Int64(info.st_size)
            modified = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        }
    }

    static func stamps(_ paths: [String]) -> [String: Stamp] {
        Dictionary(paths.map { ($0, Stamp(path: $0)) }, uniquingKeysWith: { first, _ in first })
    }

    /// Polls every `interval` until cancelled. When a stamp changes it waits until two polls `debounce`
    /// apart agree (a renewal writes a key and a certificate one after the other), then calls `changed` with
    /// the paths that differ, and reads `paths` again afterwards (a reload can add policy files).
    public static func run(
        interval: Duration, debounce: Duration, paths: @escaping @Sendable () -> [String],
        changed: @escaping @Sendable ([String]) async -> Void
    ) -> Task<Void, Never> {
        Task {
            var watched = paths()
            var last = stamps(watched)
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                var now = stamps(watched)
                guard now != last else { continue }
                while !Task.isCancelled {
                    try? await Task.sleep(for: debounce)
                    let again = stamps(watched)
                    if again == now { break }
                    now = again
                }
                guard !Task.isCancelled else { return }
                let differing = watched.filter { now[$0] != last[$0] }
                await changed(differing)
                // What changed while the reload ran is compared against `now`, so that it is not missed.
                watched = paths()
                last = stamps(watched).merging(now) { _, before in before }
            }
        }
    }
}
