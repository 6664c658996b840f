import Foundation
import PortcullisTestSupport
import PortcullisPKI
import Testing
import X509

/// A temporary directory per test (tests run in parallel).
func temporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "portcullis-pki-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func permissions(_ path: String) throws -> Int {
    (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue ?? -1
}

func run(_ tool: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let directories = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
    let path = try #require(
        directories.map { "\($0)/\(tool)" }.first { FileManager.default.isExecutableFile(atPath: $0) },
        "\(tool) is not installed; scripts/test installs it")
    let process = ChildProcess()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = readToEnd(pipe.fileHandleForReading)
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

@Suite("Development PKI")
struct DevelopmentPKITests {
    @Test("serve --dev's bootstrap creates the layout with private keys 0600, and a second run reuses it")
    func bootstrapCreatesThenReuses() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let pki = PKIDirectory(path: "\(root)/pki")
        let first = try pki.bootstrapDevelopment()
        #expect(first.createdCA)
        #expect(first.issued.map(\.name) == ["server", "demo-device", "demo-operator"])
        #expect(try pki.loadInventory().entries.map(\.name) == ["server", "demo-device", "demo-operator"])
        for key in [pki.caKeyPath, pki.keyPath("server"), pki.keyPath("demo-device"), pki.keyPath("demo-operator")] {
            #expect(try permissions(key) == 0o600, "\(key)")
        }
        #expect(try permissions("\(root)/pki/private") == 0o700)
        let caBefore = try String(contentsOfFile: pki.caCertificatePath, encoding: .utf8)
        let second = try pki.bootstrapDevelopment()
        #expect(!second.createdCA && second.issued.isEmpty)
        #expect(try String(contentsOfFile: pki.caCertificatePath, encoding: .utf8) == caBefore)
    }

    @Test("Issued chains verify with OpenSSL and GnuTLS for their purpose")
    func chainsVerifyWithThirdPartyTools() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let pki = PKIDirectory(path: "\(root)/pki")
        _ = try pki.bootstrapDevelopment()
        let client = try run("openssl", ["verify", "-purpose", "sslclient", "-CAfile", pki.caCertificatePath, pki.certificatePath("demo-device")])
        #expect(client.status == 0, "\(client.output)")
        let server = try run("openssl", ["verify", "-purpose", "sslserver", "-CAfile", pki.caCertificatePath, pki.certificatePath("server")])
        #expect(server.status == 0, "\(server.output)")
        let wrongPurpose = try run("openssl", ["verify", "-purpose", "sslserver", "-CAfile", pki.caCertificatePath, pki.certificatePath("demo-device")])
        #expect(wrongPurpose.status != 0)
        let gnutls = try run("certtool", ["--verify", "--load-ca-certificate", pki.caCertificatePath, "--infile", pki.certificatePath("demo-device")])
        #expect(gnutls.status == 0, "\(gnutls.output)")
        let san = try run("openssl", ["x509", "-noout", "-ext", "subjectAltName", "-in", pki.certificatePath("server")])
        #expect(san.output.contains("DNS:localhost") && san.output.contains("IP Address:127.0.0.1") && san.output.contains("IP Address:0:0:0:0:0:0:0:1"))
    }

    @Test("Serial numbers are random, positive and unique")
    func serials() {
        let serials = (0..<1000).map { _ in SerialNumbers.random() }
        #expect(Set(serials.map { Array($0.bytes) }).count == 1000)
        #expect(serials.allSatisfy { ($0.bytes.first ?? 0) & 0x80 == 0 && $0.bytes.count >= 8 })
    }
}

@Suite("Certificate revocation lists")
struct CRLTests {
    @Test("A signed CRL reads back, and OpenSSL accepts it and refuses the revoked certificate with it")
    func crlRoundTripAndOpenSSL() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let pki = PKIDirectory(path: "\(root)/pki")
        _ = try pki.bootstrapDevelopment()
        let device = try readPEMCertificates(path: pki.certificatePath("demo-device"))[0]
        try pki.revoke(name: "demo-device", serial: nil, reason: .keyCompromise)
        let (crl, _) = try pki.regenerateCRL()
        let read = try CertificateRevocationList(pemEncoded: try String(contentsOfFile: pki.crlPath, encoding: .utf8))
        #expect(read.isRevoked(serial: device.serialNumber))
        #expect(read.entries.first?.reason == .keyCompromise)
        #expect(read.number == [2])
        #expect(read.nextUpdate != nil)
        #expect(read.isSigned(by: try pki.loadCA().certificate))
        #expect(crl.derBytes == read.derBytes)

        let verify = try run("openssl", ["crl", "-in", pki.crlPath, "-CAfile", pki.caCertificatePath, "-verify", "-noout"])
        #expect(verify.output.contains("verify OK"), "\(verify.output)")
        let bundle = "\(root)/ca-and-crl.pem"
        try (String(contentsOfFile: pki.caCertificatePath, encoding: .utf8) + String(contentsOfFile: pki.crlPath, encoding: .utf8))
            .write(toFile: bundle, atomically: true, encoding: .utf8)
        let refused = try run("openssl", ["verify", "-crl_check", "-CAfile", bundle, pki.certificatePath("demo-device")])
        #expect(refused.status != 0)
        #expect(refused.output.contains("certificate revoked"), "\(refused.output)")
        let server = try run("openssl", ["verify", "-crl_check", "-CAfile", bundle, pki.certificatePath("server")])
        #expect(server.status == 0, "\(server.output)")
    }

    @Test("A CRL of 100,000 serials is read, and each serial is found with its own entry")
    func largeCRL() throws {
        let ca = try CertificateAuthority.makeRoot(name: "Fleet CA", key: try KeyAlgorithm.p256.generate())
        let device = try ca.issue(commonName: "device", publicKey: try KeyAlgorithm.p256.generate().publicKey,
                                  profile: .client(), notValidAfter: Date().addingTimeInterval(3600))
        let date = Date(timeIntervalSince1970: 1_700_000_000)
        var entries = (1...100_000).map { number -> CertificateRevocationList.Entry in
            let bytes = withUnsafeBytes(of: UInt32(number).bigEndian) { Array($0) }
            return .init(serial: [0x7F] + bytes, revocationDate: date, reason: number.isMultiple(of: 2) ? .superseded : .keyCompromise)
        }
        entries.append(.init(serial: Array(device.serialNumber.bytes), revocationDate: date, reason: .cessationOfOperation))
        let signed = try CertificateRevocationList.sign(entries: entries, by: ca, number: 9, nextUpdate: date.addingTimeInterval(86_400))
        let crl = try CertificateRevocationList(derEncoded: signed.derBytes)
        #expect(crl.entries.count == 100_001)
        #expect(crl.isRevoked(serial: device.serialNumber))
        #expect(crl.entry(for: device.serialNumber)?.reason == .cessationOfOperation)
        #expect(crl.entry(for: Certificate.SerialNumber(bytes: [0x7F, 0, 0, 0, 2]))?.reason == .superseded)
        #expect(crl.entry(for: Certificate.SerialNumber(bytes: [0x7F, 0, 1, 0x86, 0x9F]))?.reason == .keyCompromise)
        #expect(!crl.isRevoked(serial: Certificate.SerialNumber(bytes: [0x7F, 0, 1, 0x86, 0xA1])))
    }

    @Test("A CRL made by openssl ca -gencrl is read, including its reasons")
    func readsOpenSSLCRL() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let pki = PKIDirectory(path: "\(root)/pki")
        _ = try pki.bootstrapDevelopment()
        let device = try readPEMCertificates(path: pki.certificatePath("demo-device"))[0]
        let serialHex = device.serialNumber.bytes.map { String(format: "%02X", $0) }.joined()
        try "R\t301231235959Z\t241125000000Z,keyCompromise\t\(serialHex)\tunknown\t/CN=demo-device\n"
            .write(toFile: "\(root)/index.txt", atomically: true, encoding: .utf8)
        let crl = try CertificateRevocationList(pemEncoded: try openSSLCRL(in: root, pki: pki))
        #expect(crl.isRevoked(serial: device.serialNumber))
        #expect(crl.entry(for: device.serialNumber)?.reason == .keyCompromise)
        #expect(crl.number == [5])
        #expect(crl.isSigned(by: try pki.loadCA().certificate))
    }

    /// A delta CRL or a partial one must not stand for the issuer's full CRL.
    @Test(
        "A CRL with a critical extension Portcullis does not process is refused (RFC 5280 §5.2)",
        arguments: [
            ("2.5.29.27 = critical, ASN1:INTEGER:4", "delta CRL indicator"),
            ("2.5.29.28 = critical, DER:3000", "issuing distribution point"),
            ("2.5.29.27 = ASN1:INTEGER:4", "a non-critical extension is read past"),
        ])
    func criticalExtensions(extensionLine: String, meaning: String) throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let pki = PKIDirectory(path: "\(root)/pki")
        _ = try pki.bootstrapDevelopment()
        try "".write(toFile: "\(root)/index.txt", atomically: true, encoding: .utf8)
        let pem = try openSSLCRL(in: root, pki: pki, extensions: extensionLine)
        if extensionLine.contains("critical") {
            #expect(throws: PKIError.self, "\(meaning)") { try CertificateRevocationList(pemEncoded: pem) }
        } else {
            #expect(try CertificateRevocationList(pemEncoded: pem).number == [5], "\(meaning)")
        }
    }

    /// A CRL that `openssl ca -gencrl` makes with the development CA from `root/index.txt`, CRL number 5, with
    /// `extensions` (OpenSSL configuration lines) as its CRL extensions; its PEM.
    func openSSLCRL(in root: String, pki: PKIDirectory, extensions: String? = nil) throws -> String {
        try """
            [ca]
            default_ca = dev
            [dev]
            database = \(root)/index.txt
            crlnumber = \(root)/crlnumber
            default_md = sha256
            default_crl_days = 7
            [extensions]
            \(extensions ?? "")
            """.write(toFile: "\(root)/ca.cnf", atomically: true, encoding: .utf8)
        try "05\n".write(toFile: "\(root)/crlnumber", atomically: true, encoding: .utf8)
        let made = try run(
            "openssl",
            ["ca", "-gencrl", "-config", "\(root)/ca.cnf", "-cert", pki.caCertificatePath, "-keyfile", pki.caKeyPath]
                + (extensions == nil ? [] : ["-crlexts", "extensions"]) + ["-out", "\(root)/crl.pem"])
        #expect(made.status == 0, "\(made.output)")
        return try String(contentsOfFile: "\(root)/crl.pem", encoding: .utf8)
    }

    @Test("Garbage and tampered CRLs are refused", arguments: [
        "not pem at all", "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    ])
    func garbage(text: String) {
        #expect(throws: PKIError.self) { try CertificateRevocationList(pemEncoded: text) }
    }

    @Test("A CRL signed by another CA is not accepted as the bundle's")
    func foreignSignature() throws {
        let ca = try CertificateAuthority.makeRoot(name: "A", key: try KeyAlgorithm.p256.generate())
        let other = try CertificateAuthority.makeRoot(name: "A", key: try KeyAlgorithm.p256.generate())
        let crl = try CertificateRevocationList.sign(entries: [], by: other, number: 1, nextUpdate: Date().addingTimeInterval(60))
        #expect(!crl.isSigned(by: ca.certificate))
        #expect(crl.isSigned(by: other.certificate))
    }
}

@Suite("Client certificate verification")
struct ClientVerifierTests {
    let ca: CertificateAuthority
    let verifier: ClientCertificateVerifier
    let revoked: Certificate

    init() throws {
        ca = try CertificateAuthority.makeRoot(name: "Test CA", key: try KeyAlgorithm.p256.generate())
        revoked = try ca.issue(commonName: "revoked", publicKey: try KeyAlgorithm.p256.generate().publicKey,
                               profile: .client(), notValidAfter: Date().addingTimeInterval(3600))
        let crl = try CertificateRevocationList.sign(
            entries: [.init(serial: Array(revoked.serialNumber.bytes), revocationDate: Date(), reason: .superseded)],
            by: ca, number: 1, nextUpdate: Date().addingTimeInterval(3600))
        verifier = ClientCertificateVerifier(trust: ClientTrust(roots: [ca.certificate], crls: [crl]))
    }

    func leaf(_ profile: CertificateProfile = .client(), notBefore: Date? = nil, notAfter: Date = Date().addingTimeInterval(3600),
              by issuer: CertificateAuthority? = nil) throws -> Certificate {
        try (issuer ?? ca).issue(commonName: "device", publicKey: try KeyAlgorithm.p256.generate().publicKey, profile: profile,
                                 notValidBefore: notBefore, notValidAfter: notAfter)
    }

    func reason(_ result: ClientVerification) -> String {
        switch result {
        case .trusted: "trusted"
        case .refused(let refusal, _): refusal.rawValue
        }
    }

    @Test("Each failure gets its own reason code")
    func reasons() async throws {
        let foreign = try CertificateAuthority.makeRoot(name: "Test CA", key: try KeyAlgorithm.p256.generate())
        #expect(reason(await verifier.verify(presented: [try leaf()])) == "trusted")
        #expect(reason(await verifier.verify(presented: [try leaf(by: foreign)])) == "certificate_untrusted")
        #expect(reason(await verifier.verify(presented: [try leaf(notBefore: Date().addingTimeInterval(-7200), notAfter: Date().addingTimeInterval(-3600))])) == "certificate_expired")
        #expect(reason(await verifier.verify(presented: [try leaf(notBefore: Date().addingTimeInterval(3600), notAfter: Date().addingTimeInterval(7200))])) == "certificate_not_yet_valid")
        #expect(reason(await verifier.verify(presented: [try leaf(.server(dnsNames: ["x"], ipAddresses: []))])) == "certificate_missing_client_auth")
        #expect(reason(await verifier.verify(presented: [revoked])) == "certificate_revoked")
        #expect(reason(await verifier.verify(presented: [])) == "certificate_untrusted")
    }

    @Test("The clock is a parameter: a certificate valid now is expired later")
    func injectedClock() async throws {
        let certificate = try leaf()
        #expect(reason(await verifier.verify(presented: [certificate], now: Date().addingTimeInterval(7200))) == "certificate_expired")
        #expect(reason(verifier.recheck(chain: [certificate], now: Date().addingTimeInterval(7200)) ?? .trusted(chain: [])) == "certificate_expired")
    }

    @Test("The re-check for resumed sessions finds revocation and expiry")
    func recheck() throws {
        #expect(verifier.recheck(chain: [try leaf()]) == nil)
        #expect(reason(verifier.recheck(chain: [revoked]) ?? .trusted(chain: [])) == "certificate_revoked")
    }

    @Test("The re-check of a remembered chain covers every certificate: an expired or a revoked intermediate")
    func recheckOfAChain() throws {
        let intermediate = try ca.makeIntermediate(name: "Issuing CA", key: try KeyAlgorithm.p256.generate(), validity: 60)
        let device = try leaf(by: intermediate)
        let crl = try CertificateRevocationList.sign(
            entries: [.init(serial: Array(intermediate.certificate.serialNumber.bytes), revocationDate: Date(), reason: .caCompromise)],
            by: ca, number: 2, nextUpdate: Date().addingTimeInterval(3600))
        let chain = [device, intermediate.certificate, ca.certificate]
        #expect(verifier.recheck(chain: chain) == nil)
        let revoking = ClientCertificateVerifier(trust: ClientTrust(roots: [ca.certificate], crls: [crl]))
        #expect(reason(revoking.recheck(chain: chain) ?? .trusted(chain: [])) == "certificate_revoked")
        #expect(revoking.recheck(chain: [device]) == nil)
        // The intermediate expires first: the chain fails while the leaf alone would still pass.
        let later = Date().addingTimeInterval(120)
        #expect(reason(verifier.recheck(chain: chain, now: later) ?? .trusted(chain: [])) == "certificate_expired")
        #expect(verifier.recheck(chain: [device], now: later) == nil)
        // The root of a chain is never looked up on a CRL (nothing can sign its revocation), even one naming it.
        let namingTheRoot = try CertificateRevocationList.sign(
            entries: [.init(serial: Array(ca.certificate.serialNumber.bytes), revocationDate: Date(), reason: .caCompromise)],
            by: ca, number: 3, nextUpdate: Date().addingTimeInterval(3600))
        let rootListed = ClientCertificateVerifier(trust: ClientTrust(roots: [ca.certificate], crls: [namingTheRoot]))
        #expect(rootListed.recheck(chain: [try leaf(), ca.certificate]) == nil)
        #expect(reason(rootListed.recheck(chain: [ca.certificate]) ?? .trusted(chain: [])) == "certificate_revoked")
    }
}

@Suite("Chain building under hostile input")
struct HostileChainTests {
    /// `layers` layers of `width` certificates; each layer's certificates share a subject and a key and are
    /// signed by the next layer's key, so every combination is a valid path; the top is signed by an untrusted
    /// root. Returns the leaf followed by every intermediate, as a client would present them.
    static func layeredChain(layers: Int, width: Int) throws -> [Certificate] {
        let keys = try (0...layers).map { _ in try KeyAlgorithm.p256.generate() }
        let top = try DistinguishedName { CommonName("Untrusted Root") }
        func name(_ layer: Int) throws -> DistinguishedName {
            layer == layers ? top : try DistinguishedName { CommonName("Layer \(layer)") }
        }
        func certificate(subject: Int, issuer: Int, serial: Int) throws -> Certificate {
            try Certificate(
                version: .v3, serialNumber: .init(bytes: [UInt8(serial % 200 + 1), UInt8(subject)]),
                publicKey: keys[subject].publicKey, notValidBefore: Date().addingTimeInterval(-60),
                notValidAfter: Date().addingTimeInterval(3600), issuer: try name(issuer), subject: try name(subject),
                signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                },
                issuerPrivateKey: keys[issuer])
        }
        var presented = [try certificate(subject: 0, issuer: 1, serial: 0)]
        for layer in 1..<layers {
            for index in 0..<width { presented.append(try certificate(subject: layer, issuer: layer + 1, serial: index)) }
        }
        return presented
    }

    @Test("A presentation of 10 layers × 4 certificates is refused before any path is built")
    func tooManyCertificates() async throws {
        let ca = try CertificateAuthority.makeRoot(name: "Test CA", key: try KeyAlgorithm.p256.generate())
        let verifier = ClientCertificateVerifier(trust: ClientTrust(roots: [ca.certificate]))
        let presented = try Self.layeredChain(layers: 10, width: 4)
        #expect(presented.count == 37)
        // 4^9 paths, each a signature check: minutes of CPU if the search ran.
        guard case .refused(let reason, let detail) = await verifier.verify(presented: presented) else {
            Issue.record("accepted")
            return
        }
        #expect(reason == .untrusted)
        #expect(detail == "the client presented 37 certificates; at most 10 are accepted")
        // Within the cap the search stays small and still ends in the precise refusal.
        let short = try Self.layeredChain(layers: 4, width: 3)
        #expect(short.count == 10)
        guard case .refused(let shortReason, _) = await verifier.verify(presented: short) else {
            Issue.record("accepted")
            return
        }
        #expect(shortReason == .untrusted)
    }

    @Test("A resumed session's chain is rebuilt from the trust set and intermediates seen before")
    func rebuildChain() throws {
        let ca = try CertificateAuthority.makeRoot(name: "Test CA", key: try KeyAlgorithm.p256.generate())
        let intermediate = try ca.makeIntermediate(name: "Issuing CA", key: try KeyAlgorithm.p256.generate())
        let device = try intermediate.issue(
            commonName: "device", publicKey: try KeyAlgorithm.p256.generate().publicKey, profile: .client(),
            notValidAfter: Date().addingTimeInterval(3600))
        let verifier = ClientCertificateVerifier(trust: ClientTrust(roots: [ca.certificate]))
        #expect(verifier.rebuildChain(leaf: device, seen: []) == nil)
        let seen = SeenIntermediates()
        seen.learn(from: [device, intermediate.certificate, ca.certificate])
        #expect(seen.all == [intermediate.certificate])
        #expect(verifier.rebuildChain(leaf: device, seen: seen.all) == [device, intermediate.certificate, ca.certificate])
        // A certificate with the right name but another key does not count as the issuer.
        let impostor = try ca.makeIntermediate(name: "Issuing CA", key: try KeyAlgorithm.p256.generate())
        #expect(verifier.rebuildChain(leaf: device, seen: [impostor.certificate]) == nil)
        // Configured intermediates count too; a leaf of the root itself needs none.
        let configured = ClientCertificateVerifier(trust: ClientTrust(roots: [ca.certificate], intermediates: [intermediate.certificate]))
        #expect(configured.rebuildChain(leaf: device, seen: [])?.count == 3)
        let direct = try ca.issue(
            commonName: "direct", publicKey: try KeyAlgorithm.p256.generate().publicKey, profile: .client(),
            notValidAfter: Date().addingTimeInterval(3600))
        #expect(verifier.rebuildChain(leaf: direct, seen: []) == [direct, ca.certificate])
    }
}

@Suite("Stale and out-of-order CRLs")
struct CRLFreshnessTests {
    @Test("A CRL past its nextUpdate refuses what it covers (crl_expired), unless stale CRLs only warn")
    func expiredCRL() async throws {
        let ca = try CertificateAuthority.makeRoot(
            name: "Test CA", key: try KeyAlgorithm.p256.generate(), now: Date().addingTimeInterval(-4 * 3600))
        let device = try ca.issue(
            commonName: "device", publicKey: try KeyAlgorithm.p256.generate().publicKey, profile: .client(),
            notValidBefore: Date().addingTimeInterval(-3 * 3600), notValidAfter: Date().addingTimeInterval(86400))
        let stale = try CertificateRevocationList.sign(
            entries: [], by: ca, number: 1, thisUpdate: Date().addingTimeInterval(-7200),
            nextUpdate: Date().addingTimeInterval(-3600))
        let refusing = ClientCertificateVerifier(trust: ClientTrust(roots: [ca.certificate], crls: [stale]))
        #expect(refusing.trust.expiredCRLs(at: Date()).count == 1)
        guard case .refused(let reason, let detail) = await refusing.verify(presented: [device]) else {
            Issue.record("a stale CRL admitted the device")
            return
        }
        #expect(reason == .crlExpired)
        #expect(detail.contains("nextUpdate") && detail.contains("publish a new CRL"), "\(detail)")
        guard case .refused(.crlExpired, _) = refusing.recheck(chain: [device, ca.certificate]) else {
            Issue.record("the re-check missed the stale CRL")
            return
        }
        // An hour earlier the same CRL was current.
        #expect(refusing.recheck(chain: [device, ca.certificate], now: Date().addingTimeInterval(-5400)) == nil)
        let warning = ClientCertificateVerifier(
            trust: ClientTrust(roots: [ca.certificate], crls: [stale], refusesExpiredCRLs: false))
        guard case .trusted = await warning.verify(presented: [device]) else {
            Issue.record("crl_expired: warn refused the device")
            return
        }
        #expect(warning.trust.expiredCRLs(at: Date()).count == 1)
    }

    @Test("CRL numbers compare as numbers", arguments: [
        ([1], [2], ComparisonResult.orderedAscending), ([0, 0xFF], [1, 0], .orderedAscending), ([2], [0, 2], .orderedSame),
        ([1, 0], [0xFF], .orderedDescending), ([0x7F, 0xFF, 0xFF], [0x01, 0, 0, 0], .orderedAscending),
    ] as [([UInt8], [UInt8], ComparisonResult)])
    func numbers(a: [UInt8], b: [UInt8], expected: ComparisonResult) {
        #expect(CertificateRevocationList.compareNumbers(a, b) == expected)
    }
}

@Suite("Cache of verified chains")
struct VerifiedChainCacheTests {
    let leafDER: [UInt8] = Array(repeating: 1, count: 300)
    let rootDER: [UInt8] = Array(repeating: 2, count: 200)

    @Test("A chain is found again by exactly what was presented, and by its leaf alone")
    func lookups() {
        let cache = VerifiedChainCache<String>()
        let presented = VerifiedChainCache<String>.Presented(certificates: [leafDER, rootDER])
        #expect(cache.entry(for: presented) == nil)
        cache.insert(presented, chain: [], value: "device")
        #expect(cache.entry(for: .init(certificates: [leafDER, rootDER]))?.value == "device")
        #expect(cache.entry(forLeaf: leafDER)?.value == "device")
        // The same leaf with other certificates after it, or none, is another presentation: verified afresh.
        #expect(cache.entry(for: .init(certificates: [leafDER])) == nil)
        #expect(cache.entry(for: .init(certificates: [leafDER, rootDER, rootDER])) == nil)
        // Lengths are hashed too: the same bytes split differently are not the same chain.
        #expect(cache.entry(for: .init(certificates: [leafDER + rootDER.prefix(1), Array(rootDER.dropFirst())])) == nil)
        #expect(cache.entry(forLeaf: rootDER) == nil)
    }

    @Test("A full cache starts over instead of growing")
    func bounded() {
        let cache = VerifiedChainCache<Int>(capacity: 3)
        for index in 0..<3 { cache.insert(.init(certificates: [[UInt8(index)]]), chain: [], value: index) }
        #expect(cache.count == 3)
        cache.insert(.init(certificates: [[1]]), chain: [], value: 10)
        #expect(cache.count == 3)
        #expect(cache.entry(forLeaf: [1])?.value == 10)
        cache.insert(.init(certificates: [[9]]), chain: [], value: 9)
        #expect(cache.count == 1)
        #expect(cache.entry(forLeaf: [9])?.value == 9)
        #expect(cache.entry(forLeaf: [0]) == nil)
    }
}

@Suite("Atomic files")
struct AtomicFileTests {
    @Test("Writes replace whole files with the requested mode and leave no temporary file")
    func atomicWrite() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        try AtomicFile.write("first", to: "\(root)/key.pem", mode: 0o600)
        try AtomicFile.write("second", to: "\(root)/key.pem", mode: 0o600)
        #expect(try String(contentsOfFile: "\(root)/key.pem", encoding: .utf8) == "second")
        #expect(try permissions("\(root)/key.pem") == 0o600)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root) == ["key.pem"])
        #expect(throws: AtomicFile.WriteError.self) { try AtomicFile.write("x", to: "\(root)/missing/dir/file") }
    }
}
