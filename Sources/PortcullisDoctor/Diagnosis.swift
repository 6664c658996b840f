import Foundation
import PortcullisClient
import SwiftASN1
import X509

/// One step of a diagnosis: what was checked, how it went, and what to do when it did not.
public struct DoctorStep: Sendable, Equatable {
    public enum Outcome: String, Sendable {
        case passed = "ok"
        case warning = "warn"
        case failed = "FAIL"
    }

    public var name: String
    public var outcome: Outcome
    public var detail: String
    /// What to do about a failure or a warning.
    public var advice: String?

    public init(_ name: String, _ outcome: Outcome, _ detail: String, advice: String? = nil) {
        self.name = name
        self.outcome = outcome
        self.detail = detail
        self.advice = advice
    }
}

/// What a diagnosis is given: the gateway's URL and the device's files.
public struct DoctorRequest: Sendable {
    public var url: GatewayURL
    public var certificateFile: String
    public var keyFile: String
    public var caFile: String
    public var serverName: String?
    public var origin: String?
    /// Seconds each network step may take.
    public var timeout: Double

    public init(url: GatewayURL, certificateFile: String, keyFile: String, caFile: String, serverName: String?, origin: String?, timeout: Double = 10) {
        self.url = url
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.caFile = caFile
        self.serverName = serverName
        self.origin = origin
        self.timeout = timeout
    }
}

/// `portcullis doctor`: a connection to a gateway taken apart step by step, stopping at the first failure.
public enum Diagnosis {
    /// Runs every step in order, handing each to `report` as it completes; stops after the first failure.
    /// Returns whether every step passed (warnings pass).
    public static func run(_ request: DoctorRequest, report: (DoctorStep) -> Void) -> Bool {
        var passed = true
        func record(_ step: DoctorStep) -> Bool {
            report(step)
            if step.outcome == .failed { passed = false }
            return step.outcome != .failed
        }
        // The probe writes to a plain socket: a gateway that resets the connection must be an error, not SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        let openssl: OpenSSLLibrary
        do { openssl = try OpenSSLLibrary() } catch {
            _ = record(DoctorStep("TLS library", .failed, "\(error)", advice: "install OpenSSL 3 (Debian: apt-get install libssl3)"))
            return false
        }
        let probe = ConnectionProbe(openssl: openssl, timeout: request.timeout)
        let host = request.url.host
        let serverName = request.serverName ?? host

        // Name resolution.
        let resolveStart = Date()
        let addresses: [ConnectionProbe.ResolvedAddress]
        do {
            addresses = try probe.resolve(host, port: request.url.port)
        } catch {
            _ = record(DoctorStep(
                "name resolution", .failed, "\(host): \(error)",
                advice: "check the host name in the URL, and the device's DNS (/etc/resolv.conf) or /etc/hosts"))
            return false
        }
        guard record(DoctorStep(
            "name resolution", .passed,
            "\(host) → \(addresses.map(\.text).joined(separator: ", ")) in \(milliseconds(Date().timeIntervalSince(resolveStart)))"))
        else { return false }

        // TCP.
        let connectStart = Date()
        let (connected, connectErrors) = probe.connect(addresses)
        guard let connected else {
            _ = record(DoctorStep(
                "TCP connect", .failed, "port \(request.url.port): \(connectErrors.joined(separator: "; "))",
                advice: "is the gateway running and listening on this address and port? A firewall or a load balancer in between?"))
            return false
        }
        guard record(DoctorStep(
            "TCP connect", .passed,
            "\(connected.text) port \(request.url.port) in \(milliseconds(Date().timeIntervalSince(connectStart)))"
                + (connectErrors.isEmpty ? "" : " (before: \(connectErrors.joined(separator: "; ")))")))
        else { return false }

        // The client certificate, read here: its facts decide how the gateway's answer is read.
        let local = LocalCertificate.load(certificateFile: request.certificateFile, keyFile: request.keyFile)

        // TLS.
        let handshake = probe.handshake(
            serverName: serverName, caFile: request.caFile, certificateFile: request.certificateFile, keyFile: request.keyFile)
        // A handshake that failed before the server's certificate arrived (an alert in answer to the ClientHello,
        // a peer that does not speak TLS) has nothing more to show.
        if handshake.failure != nil && handshake.serverChain.isEmpty {
            _ = record(tlsFailureStep(handshake, alert: probe.recorder.receivedAlert, local: local))
            return false
        }
        guard record(DoctorStep("TLS", .passed, "\(handshake.version), \(handshake.cipher)\(handshake.group.isEmpty ? "" : ", \(handshake.group)")"))
        else { return false }

        // The server's chain.
        let chain = handshake.serverChain.compactMap { try? Certificate(derEncoded: $0) }
        guard record(serverCertificateStep(chain: chain, verifyError: handshake.verifyError, serverName: serverName, caFile: request.caFile, now: Date()))
        else { return false }

        // The certificate request.
        let named = probe.namedCertificateAuthorities.compactMap { try? DistinguishedName(derEncoded: DER.parse($0)) }
        guard record(certificateRequestStep(requested: probe.recorder.certificateRequested, named: named)) else { return false }

        // The client certificate, locally.
        guard record(clientCertificateStep(local, named: named, now: Date())) else { return false }

        // The gateway's verdict: with TLS 1.3 it comes after the handshake, so the upgrade request is sent first.
        let answer: Result<UpgradeAnswer, any Error> = handshake.failure == nil
            ? Result { try probe.upgrade(host: serverName, port: request.url.port, path: request.url.path, origin: request.origin) }
            : .failure(ConnectionProbe.Failure(description: handshake.failure ?? ""))
        let alert = probe.recorder.receivedAlert
        if alert != nil || handshake.failure != nil {
            _ = record(verdictStep(
                alert: alert, failure: handshake.failure ?? (try? answer.get()).map { _ in "" } ?? "\(answer)", local: local, named: named))
            return false
        }
        switch answer {
        case .failure(let error):
            _ = record(DoctorStep(
                "gateway's verdict", .failed, "no HTTP answer: \(error)",
                advice: "the gateway closed the connection after the handshake: look for a tls_refused record in its audit log"))
            return false
        case .success(let upgrade):
            guard record(DoctorStep("gateway's verdict", .passed, "your certificate was accepted in the handshake")) else { return false }
            let date = upgrade.value(of: "date")
            guard record(upgradeStep(upgrade, path: request.url.path)) else { return false }
            if let date { guard record(clockStep(serverDate: date, now: Date())) else { return false } }
        }

        // A ping.
        do {
            let roundTrip = try probe.ping()
            _ = record(DoctorStep("ping", .passed, "round trip \(milliseconds(roundTrip))"))
        } catch {
            _ = record(DoctorStep("ping", .failed, "\(error)", advice: "the session was admitted but does not answer: look at the gateway's log"))
        }
        probe.close()
        return passed
    }

    // MARK: - Pure checks

    /// A handshake that did not complete: the gateway's alert in plain words, or the local failure.
    static func tlsFailureStep(_ handshake: ConnectionProbe.Handshake, alert: UInt8?, local: LocalCertificate) -> DoctorStep {
        if let alert {
            return verdictStep(alert: alert, failure: handshake.failure ?? "", local: local, named: [], name: "TLS")
        }
        let failure = handshake.failure ?? "the handshake did not complete"
        if failure.hasPrefix("no answer within") {
            return DoctorStep("TLS", .failed, failure, advice: "the server took the TCP connection but did not answer TLS: is this the gateway's port, or a proxy that waits for something else (a PROXY protocol header)?")
        }
        if failure.contains("wrong version number") || failure.contains("packet length too long") {
            return DoctorStep("TLS", .failed, failure, advice: "the server does not speak TLS on this port: is it plain HTTP, or another service?")
        }
        return DoctorStep(
            "TLS", .failed, failure,
            advice: "no TLS version or cipher suite in common, or the connection was cut: the gateway takes TLS 1.2 (ECDHE, AES-GCM or ChaCha20) and 1.3")
    }

    /// The server's chain: whether it verifies against `--ca`, names what was asked for, and how long it has.
    static func serverCertificateStep(chain: [Certificate], verifyError: String?, serverName: String, caFile: String, now: Date) -> DoctorStep {
        guard let leaf = chain.first else {
            return DoctorStep("server certificate", .failed, "the server sent no certificate", advice: "this is not a Portcullis gateway")
        }
        let subject = leaf.subject.description
        let issuer = leaf.issuer.description
        if let verifyError {
            if verifyError.contains("mismatch") {
                return DoctorStep(
                    "server certificate", .failed, "\(subject) does not name \(serverName) (\(verifyError))",
                    advice: "connect with the name the certificate has (its subjectAltName: \(alternativeNames(leaf))), or give it with --server-name")
            }
            return DoctorStep(
                "server certificate", .failed, "\(subject), issued by \(issuer): \(verifyError) against \(caFile)",
                advice: "--ca must hold the CA that issued the gateway's certificate (with portcullis pki: pki/ca.crt of the gateway's PKI)")
        }
        let days = Int(leaf.notValidAfter.timeIntervalSince(now) / 86_400)
        let detail = "\(subject), issued by \(issuer); verifies against \(caFile); names \(serverName); expires \(day(leaf.notValidAfter)) (in \(days) days)"
        if days < 14 {
            return DoctorStep("server certificate", .warning, detail, advice: "the gateway's certificate expires soon: tell its operator")
        }
        return DoctorStep("server certificate", .passed, detail)
    }

    /// Whether the server asked for a client certificate, and which CAs it named.
    static func certificateRequestStep(requested: Bool, named: [DistinguishedName]) -> DoctorStep {
        guard requested else {
            return DoctorStep(
                "client certificate request", .failed, "the server did not ask for a client certificate",
                advice: "this is not a Portcullis gateway (which always asks), or something in between ends TLS (a TLS-terminating proxy): connect to the gateway itself, or pass TLS through (TCP mode)")
        }
        let names = named.isEmpty ? "no CA names" : named.map(\.description).joined(separator: "; ")
        return DoctorStep("client certificate request", .passed, "the gateway asked for one, naming \(names)")
    }

    /// The device's certificate and key, checked here: readable, matching, for clientAuth, valid now, and
    /// issued by a CA the gateway named.
    static func clientCertificateStep(_ local: LocalCertificate, named: [DistinguishedName], now: Date) -> DoctorStep {
        guard let certificate = local.certificate else {
            return DoctorStep("your certificate", .failed, local.problem ?? "unreadable", advice: "give a PEM certificate with --cert and its key with --key")
        }
        let subject = certificate.subject.description
        let serial = local.serial
        if let problem = local.problem {
            return DoctorStep("your certificate", .failed, "\(subject) (serial \(serial)): \(problem)", advice: "give the key that belongs to this certificate with --key")
        }
        let usages = (try? certificate.extensions.extendedKeyUsage).flatMap { $0 }
        if let usages, !usages.contains(.clientAuth) {
            return DoctorStep(
                "your certificate", .failed, "\(subject) (serial \(serial)) is not for client authentication (its extended key usage lacks clientAuth)",
                advice: "issue a client certificate: portcullis pki issue client NAME")
        }
        if now < certificate.notValidBefore {
            return DoctorStep(
                "your certificate", .failed, "\(subject) (serial \(serial)) is not valid before \(timestamp(certificate.notValidBefore))",
                advice: "check this device's clock (it may be behind), or wait until then")
        }
        if now > certificate.notValidAfter {
            return DoctorStep(
                "your certificate", .failed, "\(subject) (serial \(serial)) expired on \(timestamp(certificate.notValidAfter))",
                advice: "renew it: portcullis pki renew NAME (on the admin host), then install the new certificate and key")
        }
        let days = Int(certificate.notValidAfter.timeIntervalSince(now) / 86_400)
        let detail = "\(subject) (serial \(serial)); clientAuth; the key matches; valid until \(day(certificate.notValidAfter)) (\(days) days)"
        if !local.chainsTo(named) {
            // Not a failure yet: a gateway that holds the intermediate (tls.client_intermediates) names only the root.
            return DoctorStep(
                "your certificate", .warning,
                "\(detail); issued by \(certificate.issuer), which is not among the CAs the gateway names",
                advice: "unless the gateway holds this intermediate, it does not trust the CA that issued your certificate")
        }
        if days < 7 {
            return DoctorStep("your certificate", .warning, detail, advice: "renew it soon: portcullis pki renew NAME")
        }
        return DoctorStep("your certificate", .passed, detail)
    }

    /// The gateway's refusal in the handshake, in plain words, sharpened by what is known locally: the alert it
    /// sends for a failed verification is the same whatever the reason.
    static func verdictStep(
        alert: UInt8?, failure: String, local: LocalCertificate, named: [DistinguishedName], name: String = "gateway's verdict"
    ) -> DoctorStep {
        guard let alert else {
            return DoctorStep(name, .failed, failure.isEmpty ? "the gateway ended the connection" : failure, advice: "look for a tls_refused record in the gateway's audit log")
        }
        let tlsAlert = TLSAlert.code(alert)
        let serial = local.certificate == nil ? "" : " --serial \(local.serial)"
        switch alert {
        case 46 where !local.chainsTo(named):
            return DoctorStep(
                name, .failed,
                "the gateway refused your certificate (\(tlsAlert)): the gateway does not trust the CA that issued your certificate (\(local.certificate?.issuer.description ?? "unknown"))",
                advice: "use a certificate from a CA the gateway trusts (\(named.map(\.description).joined(separator: "; "))), or ask its operator to add your CA to tls.client_ca")
        case 46, 44, 42:
            // Everything checked here passed (or the doctor would have stopped): what is left is what only the
            // gateway knows.
            return DoctorStep(
                name, .failed, "the gateway refused your certificate: it sent \(tlsAlert)",
                advice: "it is valid, for clientAuth and from a CA the gateway names: it is most likely revoked, or the gateway's CA bundle has a CA of the same name with another key. The operator can tell: portcullis audit query --event tls_refused\(serial)")
        case 116:
            return DoctorStep(name, .failed, "the gateway sent \(tlsAlert): \(tlsAlert.explanation)", advice: "check that --cert and --key are the files of a certificate and its key")
        default:
            return DoctorStep(name, .failed, "the gateway sent \(tlsAlert): \(tlsAlert.explanation)", advice: "look for a tls_refused record in the gateway's audit log")
        }
    }

    /// The upgrade's answer: 101, or the refusal's status and the gateway's short reason.
    static func upgradeStep(_ answer: UpgradeAnswer, path: String) -> DoctorStep {
        if answer.status == 101 { return DoctorStep("upgrade", .passed, "101 Switching Protocols on \(path)") }
        // The gateway's reason is one short line; another server's page is cut to its first line.
        let firstLine = answer.body.split(separator: "\n").first.map { String($0.prefix(200)) } ?? ""
        let reason = firstLine.isEmpty ? answer.reason : firstLine
        let advice: String
        switch answer.status {
        case 403 where reason.lowercased().contains("origin"):
            advice = "the Origin is not allowed for this route: devices send none; browsers' origins go in allowed_origins"
        case 403:
            advice = "the policy does not grant this identity this route: portcullis policy explain --cert YOUR_CERT --path \(path) shows which rule decides"
        case 404:
            advice = "no route has this path: check the URL's path against the gateway's routes"
        case 429:
            advice = "a limit refused the session (too many sessions for this identity or address, or too fast): wait, or ask the operator"
        case 503:
            advice = "the gateway is not admitting sessions now (draining, its audit log failing, or overloaded): retry later"
        default:
            advice = "look for the refusal's record in the gateway's audit log"
        }
        return DoctorStep("upgrade", .failed, "\(answer.status) \(answer.reason): \(reason)", advice: advice)
    }

    /// The device's clock against the gateway's `Date` header: a certificate valid from "now" is refused by a
    /// gateway whose clock is behind, and one that has expired is accepted by a device whose clock is.
    static func clockStep(serverDate: String, now: Date) -> DoctorStep {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        guard let date = formatter.date(from: serverDate) else {
            return DoctorStep("clock", .warning, "the gateway's Date header '\(serverDate)' is not an HTTP date")
        }
        let skew = now.timeIntervalSince(date)
        let text = abs(skew) < 2 ? "within 2 s of the gateway's" : String(format: "%.0f s %@ the gateway's", abs(skew), skew > 0 ? "ahead of" : "behind")
        if abs(skew) > 300 {
            return DoctorStep("clock", .warning, "this device's clock is \(text)", advice: "set the clock with NTP: certificate validity is checked against the gateway's clock")
        }
        return DoctorStep("clock", .passed, "this device's clock is \(text)")
    }

    // MARK: - Formatting

    static func milliseconds(_ seconds: Double) -> String { String(format: "%.1f ms", seconds * 1000) }

    static func day(_ date: Date) -> String { date.formatted(.iso8601.year().month().day()) }

    static func timestamp(_ date: Date) -> String { date.formatted(.iso8601) }

    static func alternativeNames(_ certificate: Certificate) -> String {
        guard let names = try? certificate.extensions.subjectAlternativeNames else { return "none" }
        return names.map { name -> String in
            switch name {
            case .dnsName(let dns): "DNS:\(dns)"
            case .ipAddress(let bytes): "IP:" + ipText(Array(bytes.bytes))
            default: "\(name)"
            }
        }.joined(separator: ", ")
    }

    static func ipText(_ bytes: [UInt8]) -> String {
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        return stride(from: 0, to: bytes.count, by: 2).map { String(format: "%x", Int(bytes[$0]) << 8 | Int(bytes[min($0 + 1, bytes.count - 1)])) }
            .joined(separator: ":")
    }
}

/// The device's certificate and key as read from its files.
public struct LocalCertificate: Sendable {
    public var certificate: Certificate?
    /// The certificates after the first in the file (intermediates the device sends with it).
    public var intermediates: [Certificate] = []
    /// What is wrong with the files (unreadable, not PEM, the key not the certificate's); nil when nothing.
    public var problem: String?

    public init(certificate: Certificate?, problem: String?) {
        self.certificate = certificate
        self.problem = problem
    }

    /// Whether the certificate, or an intermediate sent with it, is issued by one of `named` (true when the
    /// server named none: it decides itself).
    public func chainsTo(_ named: [DistinguishedName]) -> Bool {
        guard let certificate, !named.isEmpty else { return true }
        return ([certificate] + intermediates).contains { named.contains($0.issuer) }
    }

    /// The serial in hex, as `portcullis pki` and the audit log write it.
    public var serial: String {
        certificate.map { $0.serialNumber.bytes.map { String(format: "%02x", $0) }.joined() } ?? ""
    }

    /// Reads the certificate (the first of the file) and checks that the key is its key.
    public static func load(certificateFile: String, keyFile: String) -> LocalCertificate {
        guard let certificateText = try? String(contentsOfFile: certificateFile, encoding: .utf8) else {
            return LocalCertificate(certificate: nil, problem: "cannot read \(certificateFile)")
        }
        let certificate: Certificate
        let intermediates: [Certificate]
        do {
            let documents = try PEMDocument.parseMultiple(pemString: certificateText).filter { $0.discriminator == "CERTIFICATE" }
            guard let first = documents.first else { return LocalCertificate(certificate: nil, problem: "\(certificateFile) holds no certificate") }
            certificate = try Certificate(derEncoded: first.derBytes)
            intermediates = documents.dropFirst().prefix(8).compactMap { try? Certificate(derEncoded: $0.derBytes) }
        } catch {
            return LocalCertificate(certificate: nil, problem: "\(certificateFile) is not a PEM certificate: \(error)")
        }
        guard let keyText = try? String(contentsOfFile: keyFile, encoding: .utf8) else {
            return LocalCertificate(certificate: certificate, problem: "cannot read the key \(keyFile)")
        }
        guard let key = try? Certificate.PrivateKey(pemEncoded: keyText) else {
            return LocalCertificate(certificate: certificate, problem: "\(keyFile) is not a PEM private key this tool reads (RSA, P-256, P-384, P-521, Ed25519)")
        }
        guard key.publicKey == certificate.publicKey else {
            return LocalCertificate(certificate: certificate, problem: "the key \(keyFile) is not this certificate's key")
        }
        var local = LocalCertificate(certificate: certificate, problem: nil)
        local.intermediates = intermediates
        return local
    }
}
