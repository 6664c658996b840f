import Foundation
import PortcullisAudit
import PortcullisPKI

/// Revocation everywhere: gateways pass their CRL files to each other through NATS. NATS carries a CRL, it does
/// not vouch for it: each gateway checks the signature against its own CA bundle, and takes a CRL set only when
/// it is newer than the one in force (docs/cluster.md).
extension Gateway {
    static let crlFromNATS = "CRL from another gateway (NATS)"

    /// Starts passing CRLs to and from the other gateways, when there are others and a CRL file to keep current.
    func startSharingCRLs() {
        guard let cluster, runtime.configuration.tls.crl != nil else { return }
        cluster.shareCertificateRevocationLists(
            received: { [weak self] pem in
                guard let self else { return }
                // Files and signatures: off the NATS connection's event loop.
                Task { await self.receivedCRL(pem) }
            },
            connected: { [weak self] in
                guard let self else { return }
                Task { self.announceCRL() }
            })
    }

    /// Sends the CRL file in force to the other gateways.
    func announceCRL() {
        guard let cluster, let path = runtime.configuration.tls.crl,
            let bytes = FileManager.default.contents(atPath: path), !bytes.isEmpty
        else { return }
        cluster.announceCRL(Array(bytes))
    }

    /// Takes another gateway's CRL file when its CRLs verify against this gateway's CA bundle and are newer than
    /// the ones in force: written over `tls.crl`, then reloaded, which ends the sessions of what it revokes.
    /// Answers an older set with its own, so that a gateway that was away catches up.
    func receivedCRL(_ pem: [UInt8]) async {
        let tls = runtime.configuration.tls
        guard let path = tls.crl else { return }
        // Beside the file it may replace: the rename that installs it stays on one file system.
        let staging = "\(path).from-nats-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(staging) }
        let incoming: ClientTrust
        do {
            try AtomicFile.write(pem, to: staging)
            incoming = try ClientTrust.load(
                caBundlePath: tls.clientCA, intermediatesPath: tls.clientIntermediates, crlPath: staging)
        } catch {
            refuseCRL("it does not verify against this gateway's CA bundle (\(error))")
            return
        }
        switch CRLSetComparison.compare(incoming.crls, with: runtime.verifier.trust.crls) {
        case .same:
            return
        case .older:
            announceCRL()
        case .mixed:
            refuseCRL("it is newer for one issuer and older for another than the CRLs in force; publish a current CRL")
        case .newer:
            guard rename(staging, path) == 0 else {
                refuseCRL("cannot write \(path): \(String(cString: strerror(errno)))")
                return
            }
            _ = await reload(trigger: Self.crlFromNATS)
        }
    }

    private func refuseCRL(_ why: String) {
        logger.warning("a CRL from another gateway was refused: \(why)")
        audit(AuditRecord(event: "crl_refused", decision: "deny", reason: "crl_refused", detail: "a CRL from another gateway (NATS): \(why)"))
    }
}
