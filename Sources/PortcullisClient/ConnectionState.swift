/// Where a ``ReconnectingBrokerClient`` is in its life.
public enum ConnectionState: Sendable, Equatable, CustomStringConvertible {
    /// `run()` has not been called yet.
    case idle
    /// Attempt number `attempt` (counted from 1 over the client's life) is under way.
    case connecting(attempt: Int)
    /// A session is open, every held subscription was renewed on it, and the publishes queued while offline
    /// were handed to it.
    case connected(SessionDetails)
    /// The last attempt or session ended with `after`; the next attempt starts in `retryIn`.
    case waiting(retryIn: Duration, after: ConnectionFailure)
    /// The client will not connect again.
    case stopped(StopReason)

    public var description: String {
        switch self {
        case .idle: "idle"
        case .connecting(let attempt): "connecting (attempt \(attempt))"
        case .connected(let details): "connected (certificate serial \(details.certificateSerial))"
        case .waiting(let delay, let failure):
            "retrying in \((delay.inSeconds * 100).rounded() / 100) s after: \(failure)"
        case .stopped(let reason): "stopped: \(reason)"
        }
    }
}

/// What the gateway saw of the client in an open session.
public struct SessionDetails: Sendable, Equatable {
    /// The serial number of the certificate the session presented, in lowercase hex as audit records write it:
    /// after a renewal, this is how a device (and a test) tells that the new certificate is in use.
    public var certificateSerial: String

    public init(certificateSerial: String) {
        self.certificateSerial = certificateSerial
    }
}

/// Why a ``ReconnectingBrokerClient`` stopped.
public enum StopReason: Sendable, Equatable, CustomStringConvertible {
    /// `stop()` was called, or the task running `run()` was cancelled.
    case requested
    /// The gateway refused the client in a way that trying again cannot fix (``ConnectionFailure/isPermanent``):
    /// a revoked or untrusted certificate, a policy that does not admit it, an HTTP 401/403.
    case permanentRefusal(ConnectionFailure)

    public var description: String {
        switch self {
        case .requested: "stop requested"
        case .permanentRefusal(let failure): "permanently refused: \(failure)"
        }
    }
}

/// What became of a publish.
public enum PublishDisposition: Sendable, Equatable {
    /// Handed to the open session. At most once: if the connection is lost before the gateway read it, it is lost.
    case sent
    /// No session is open, or the open one is not taking what is sent (more than 64 KiB unwritten): it waits in
    /// the offline queue, which dropped `droppedToMakeRoom` older publishes (or this one, when it alone is larger
    /// than the queue) to take it.
    case queued(droppedToMakeRoom: Int)
}
