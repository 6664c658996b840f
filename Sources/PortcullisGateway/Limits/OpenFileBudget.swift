#if canImport(Glibc)
import Glibc
#endif

/// How many connections the process's open-file limit leaves room for. Every connection is a file descriptor
/// (an upstream session, two); past the limit `accept` fails with `EMFILE`, and so would the audit log opening
/// its next segment or a reload reading its files. So the gateway refuses connections at accept, before TLS,
/// while `reserved` descriptors are still free, whatever `limits.max_connections` says.
struct OpenFileBudget: Sendable, Equatable {
    /// Descriptors kept for everything that is not a connection: listeners, each event loop's epoll and
    /// event descriptors, the audit log's segment and checkpoint, admin scrapes, reloads reading policies,
    /// certificates and the CRL, and upstream name lookups.
    static let reserved = 128

    /// The process's open-file limit (the soft `RLIMIT_NOFILE`).
    let limit: Int

    /// Connections that fit when each takes `descriptorsPerConnection`.
    func connections(descriptorsPerConnection: Int) -> Int {
        max(0, (limit - Self.reserved) / max(1, descriptorsPerConnection))
    }

    /// Raises the soft open-file limit to the hard one, as a server that holds a descriptor per client should
    /// (systemd's default soft limit is 1,024, its hard limit far higher), and returns the budget it leaves.
    static func raisingSoftLimit() -> OpenFileBudget {
        var limits = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits) == 0 else { return OpenFileBudget(limit: Int(FD_SETSIZE)) }
        if limits.rlim_cur < limits.rlim_max {
            var raised = limits
            raised.rlim_cur = limits.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limits = raised }
        }
        // RLIM_INFINITY (and any value past Int's range) is bounded rather than converted.
        return OpenFileBudget(limit: Int(min(limits.rlim_cur, rlim_t(Int32.max))))
    }
}
