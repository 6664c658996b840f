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
        if !cluster.announceCRL(Array(bytes)) {
            logger.warning(
                "the CRL was not announced to the other gateways: NATS is unreachable, or the file (\(bytes.count) bytes) is over its max_payload",
                metadata: ["tls.crl": "\(path)"])
        }
    }

    /// Takes another gateway's CRL file when its CRLs verify against this gateway's CA bundle and are newer than
    /// the ones in force and than the file on disk: written over `tls.crl`, then reloaded, which ends the sessions
    /// of what it revokes. Answers an older set with its own, so that a gateway that was away catches up.
    ///
    /// In the reload queue, from the comparison to the reload: two CRLs arriving together (every gateway announces
    /// when NATS comes back) are taken one after the other, so an older one can never be written over a newer one.
    func receivedCRL(_ pem: [UInt8]) async {
        _ = await reloads.run { await self.takeCRL(pem) }
    }

    private func takeCRL(_ pem: [UInt8]) async -> ReloadOutcome {
        let unchanged = ReloadOutcome(result: .unchanged, lines: [])
        let tls = runtime.configuration.tls
        guard let path = tls.crl else { return unchanged }
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
            return unchanged
        }
        switch CRLSetComparison.compare(incoming.crls, with: runtime.verifier.trust.crls) {
        case .same:
            return unchanged
        case .older:
            announceCRL()
            return unchanged
        case .mixed:
            refuseCRL("it is newer for one issuer and older for another than the CRLs in force; publish a current CRL")
            return unchanged
        case .newer:
            // A newer file an operator (or `pki revoke`) wrote that the watcher has not reloaded yet stays.
            if let onDisk = try? ClientTrust.load(
                caBundlePath: tls.clientCA, intermediatesPath: tls.clientIntermediates, crlPath: path),
                CRLSetComparison.compare(incoming.crls, with: onDisk.crls) != .newer
            {
                return unchanged
            }
            guard rename(staging, path) == 0 else {
                refuseCRL("cannot write \(path): \(String(cString: strerror(errno)))")
                return unchanged
            }
            let configuration = runtime.configuration
            return await performReload(trigger: Self.crlFromNATS) { configuration }
        }
    }

    private func refuseCRL(_ why: String) {
        logger.warning("a CRL from another gateway was refused: \(why)")
        audit(AuditRecord(event: "crl_refused", decision: "deny", reason: "crl_refused", detail: "a CRL from another gateway (NATS): \(why)"))
    }
}
