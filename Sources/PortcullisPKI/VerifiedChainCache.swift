import Crypto
import Synchronization
import X509

/// Chains the verifier has accepted, found again by the exact DER bytes a client presents, so that a device
/// reconnecting with the same certificate skips parsing and path building.
///
/// Path building and signature checks are a pure function of the presented bytes and the trust set, which is
/// why one cache belongs to one trust set: a new CA bundle or CRL means a new verifier and a new cache. What
/// can change over time — validity at this instant, revocation — is not cached: a hit must still pass
/// ``ClientCertificateVerifier/recheck(chain:now:)`` before it is trusted.
///
/// `Value` is what the caller derives from the chain once (the gateway keeps the leaf's identity facts). The
/// cache is bounded; when full it starts over, which costs a fleet one full verification per device.
public final class VerifiedChainCache<Value: Sendable>: Sendable {
    /// What a client presented in a full handshake: its leaf, and the whole chain as sent.
    public struct Presented: Sendable {
        let leaf: SHA256Digest
        let chain: SHA256Digest

        /// `certificates` are the DER encodings, leaf first.
        public init(certificates: [[UInt8]]) {
            leaf = SHA256.hash(data: certificates.first ?? [])
            var hasher = SHA256()
            for der in certificates {
                // Each certificate's length first, so that no two different lists hash the same bytes.
                withUnsafeBytes(of: UInt32(der.count).bigEndian) { hasher.update(bufferPointer: $0) }
                hasher.update(data: der)
            }
            chain = hasher.finalize()
        }
    }

    public struct Entry: Sendable {
        /// The validated chain, leaf first, root last.
        public var chain: [Certificate]
        public var value: Value
        fileprivate var presentedChain: SHA256Digest
    }

    public let capacity: Int
    /// By the SHA-256 of the leaf's DER.
    private let entries = Mutex<[SHA256Digest: Entry]>([:])

    public init(capacity: Int = 4096) {
        self.capacity = capacity
    }

    /// The entry for exactly this presentation: the same leaf with the same certificates after it.
    public func entry(for presented: Presented) -> Entry? {
        entries.withLock { entries in
            entries[presented.leaf].flatMap { $0.presentedChain == presented.chain ? $0 : nil }
        }
    }

    /// The entry for a leaf alone, whatever came with it: a resumed TLS session only knows the leaf.
    public func entry(forLeaf der: [UInt8]) -> Entry? {
        let digest = SHA256.hash(data: der)
        return entries.withLock { $0[digest] }
    }

    /// Remembers a chain the verifier accepted for `presented`.
    public func insert(_ presented: Presented, chain: [Certificate], value: Value) {
        entries.withLock { entries in
            if entries.count >= capacity, entries[presented.leaf] == nil { entries.removeAll(keepingCapacity: true) }
            entries[presented.leaf] = Entry(chain: chain, value: value, presentedChain: presented.chain)
        }
    }

    public var count: Int { entries.withLock { $0.count } }
}

/// Intermediates that appeared in chains the verifier accepted, so that the chain of a resumed TLS session
/// can be rebuilt (``ClientCertificateVerifier/rebuildChain(leaf:seen:)``): a resumed session carries only
/// its leaf. Only verified chains teach it, so a client cannot fill it with certificates of its making.
/// Bounded; once full, new intermediates are not learned (a fleet has a handful).
public final class SeenIntermediates: Sendable {
    public let capacity: Int
    private let certificates = Mutex<(list: [Certificate], set: Set<Certificate>)>(([], []))

    public init(capacity: Int = 256) {
        self.capacity = capacity
    }

    /// Learns the intermediates of `chain` (leaf first, root last).
    public func learn(from chain: [Certificate]) {
        guard chain.count > 2 else { return }
        certificates.withLock { known in
            for certificate in chain.dropFirst().dropLast() where known.list.count < capacity {
                if known.set.insert(certificate).inserted { known.list.append(certificate) }
            }
        }
    }

    public var all: [Certificate] { certificates.withLock { $0.list } }
}
