import Foundation

/// How a set of CRLs another gateway sent compares with the set in force: what the shared broker's gateways
/// decide on when they pass CRLs to each other (docs/cluster.md). Per issuer, a CRL is newer by its CRL number
/// when both have one, else by `thisUpdate`.
public enum CRLSetComparison: Sendable, Equatable {
    /// Newer for some issuer, older for none, and nothing in force is missing: take it.
    case newer
    /// The same CRLs (by number or date).
    case same
    /// Older for some issuer and newer for none, or missing an issuer in force: the sender is behind.
    case older
    /// Newer for one issuer and older (or missing) for another: neither side may take the other's, each would
    /// un-revoke something.
    case mixed

    /// Compares `incoming` with `inForce`.
    public static func compare(
        _ incoming: [CertificateRevocationList], with inForce: [CertificateRevocationList]
    ) -> CRLSetComparison {
        var newer = false
        var older = false
        for current in inForce where !incoming.contains(where: { $0.issuer == current.issuer }) {
            // Taking the set would drop this issuer's revocations.
            older = true
        }
        for crl in incoming {
            guard let current = inForce.first(where: { $0.issuer == crl.issuer }) else {
                newer = true
                continue
            }
            let order: ComparisonResult
            if let number = crl.number, let currentNumber = current.number {
                order = CertificateRevocationList.compareNumbers(number, currentNumber)
            } else {
                order = crl.thisUpdate == current.thisUpdate
                    ? .orderedSame : (crl.thisUpdate < current.thisUpdate ? .orderedAscending : .orderedDescending)
            }
            if order == .orderedDescending { newer = true }
            if order == .orderedAscending { older = true }
        }
        switch (newer, older) {
        case (true, false): return .newer
        case (false, false): return .same
        case (false, true): return .older
        case (true, true): return .mixed
        }
    }
}
