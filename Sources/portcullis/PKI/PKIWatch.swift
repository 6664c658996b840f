import ArgumentParser
@preconcurrency import Foundation
import PortcullisPKI

#if canImport(Glibc)
import Glibc
#endif

/// `pki watch`: the renewal loop (like `step ca renew --daemon`), for a service manager to run.
struct PKIWatch: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Until stopped: report certificates due for renewal and keep the CRL fresh; with --renew, renew them.",
        discussion: """
            Each pass revokes superseded certificates whose grace period is over, regenerates the CRL when it is \
            past half its validity, and logs every active certificate past its renewal point. With --renew it \
            renews server certificates and those issued with --auto-renew once they are due (same key; files are \
            replaced atomically, so a running gateway can pick them up).
            """)

    @OptionGroup var options: PKIOptions

    @Option(help: "Time between passes, e.g. 1h, 10m.")
    var interval = "1h"

    @Flag(help: "Renew server and auto-renew certificates that are due.")
    var renew = false

    @Flag(help: "Run one pass and exit (for cron).")
    var once = false

    func validate() throws {
        guard let seconds = parseWindow(interval), seconds > 0 else { throw ValidationError("--interval must be a duration such as 1h") }
    }

    func run() async throws {
        let pki = options.pki
        let (stop, continuation) = AsyncStream<Void>.makeStream()
        var sources: [any DispatchSourceSignal] = []
        for signal in [SIGINT, SIGTERM] {
            Glibc.signal(signal, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signal, queue: .global())
            source.setEventHandler { continuation.finish() }
            source.resume()
            sources.append(source)
        }
        defer { sources.forEach { $0.cancel() } }
        let seconds = parseWindow(interval)!
        while true {
            try options.perform { audit in try pass(pki, audit: audit) }
            if once { return }
            let timer = Task {
                try? await Task.sleep(for: .seconds(seconds))
                continuation.yield()
            }
            var iterator = stop.makeAsyncIterator()
            let next: Void? = await iterator.next()
            timer.cancel()
            if next == nil { return }
        }
    }

    private func pass(_ pki: PKIDirectory, audit: PKIAudit) throws {
        let now = Date()
        let stamp = now.formatted(.iso8601)
        let inventory = try pki.loadInventory()
        let crlStale = (try? CertificateRevocationList(pemEncoded: String(contentsOfFile: pki.crlPath, encoding: .utf8)))
            .map { crl in crl.nextUpdate.map { $0.timeIntervalSince(now) < $0.timeIntervalSince(crl.thisUpdate) / 2 } ?? true }
            ?? inventory.entries.contains { $0.state != .active }
        let graceOver = inventory.entries.contains { $0.state == .superseded && ($0.revokeAfter.map { $0 <= now } ?? false) }
        if crlStale || graceOver {
            let (crl, revoked) = try pki.regenerateCRL(now: now)
            for entry in revoked {
                audit.record("revoke", entry, reason: "superseded", detail: "grace period over")
                say("\(stamp) revoked superseded '\(entry.name)' serial \(entry.serial)")
            }
            audit.record("crl", nil, detail: "CRL with \(crl.entries.count) entries")
            say("\(stamp) wrote \(pki.crlPath) (\(crl.entries.count) revoked)")
        }
        var due = 0
        for entry in try pki.loadInventory().entries where entry.state == .active && now >= entry.renewAfter {
            due += 1
            let renewable = entry.profile == "server" || entry.autoRenew
            if renew && renewable {
                let (renewed, _) = try pki.renew(name: entry.name, now: now)
                audit.recordReplacement("renew", new: renewed, old: entry, context: "pki watch --renew")
                say("\(stamp) renewed '\(entry.name)': serial \(renewed.serial), valid until \(day(renewed.notAfter))")
            } else {
                say("\(stamp) due for renewal: '\(entry.name)' serial \(entry.serial), expires \(day(entry.notAfter)) (\(entry.daysLeft(at: now)) days)")
            }
        }
        if due == 0 { say("\(stamp) nothing due for renewal") }
    }
}
