import Foundation
import PortcullisPKI
import Testing
import X509

/// A PKI made by `initialize` in a temporary directory.
struct ScratchPKI {
    let root: String
    let pki: PKIDirectory

    init(intermediate: Bool = false, name: String = "Scratch CA") throws {
        root = try temporaryDirectory()
        pki = PKIDirectory(path: "\(root)/pki")
        try pki.initialize(name: name, intermediate: intermediate)
    }

    /// Every file under the PKI with its content, to prove a refused operation wrote nothing.
    func snapshot() throws -> [String: Data] {
        var result: [String: Data] = [:]
        let enumerator = FileManager.default.enumerator(atPath: pki.path)
        while let relative = enumerator?.nextObject() as? String {
            var isDirectory: ObjCBool = false
            let full = "\(pki.path)/\(relative)"
            if FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory), !isDirectory.boolValue,
                relative != ".lock"
            {
                result[relative] = FileManager.default.contents(atPath: full)
            }
        }
        return result
    }

    func remove() { try? FileManager.default.removeItem(atPath: root) }
}

@Suite("PKI operations")
struct PKIOperationTests {
    @Test("init refuses to overwrite a CA; an intermediate signs leaves and chains verify with OpenSSL and GnuTLS")
    func intermediateChains() throws {
        let scratch = try ScratchPKI(intermediate: true)
        defer { scratch.remove() }
        let pki = scratch.pki
        #expect(throws: PKIError.self) { try pki.initialize(name: "Again") }
        let client = try pki.issue(.init(name: "device-1", profile: .client(uris: ["spiffe://example.test/device/1"])))
        try pki.issue(.init(name: "gw", profile: .server(dnsNames: ["gw.example.test"], ipAddresses: ["10.0.0.1"])))
        #expect(try permissions(pki.keyPath("device-1")) == 0o600)
        #expect(try permissions(pki.issuingKeyPath) == 0o600)
        let chain = try readPEMCertificates(path: pki.chainPath("device-1"))
        #expect(chain.count == 2)
        #expect(chain[1].subject == (try readPEMCertificates(path: pki.issuingCertificatePath))[0].subject)
        #expect(hexString(chain[0].serialNumber.bytes) == client.serial)

        let untrusted = pki.issuingCertificatePath
        let sslclient = try run("openssl", ["verify", "-purpose", "sslclient", "-CAfile", pki.caCertificatePath, "-untrusted", untrusted, pki.certificatePath("device-1")])
        #expect(sslclient.status == 0, "\(sslclient.output)")
        let sslserver = try run("openssl", ["verify", "-purpose", "sslserver", "-CAfile", pki.caCertificatePath, "-untrusted", untrusted, pki.certificatePath("gw")])
        #expect(sslserver.status == 0, "\(sslserver.output)")
        let gnutls = try run("certtool", ["--verify", "--load-ca-certificate", pki.caCertificatePath, "--infile", pki.chainPath("device-1")])
        #expect(gnutls.status == 0, "\(gnutls.output)")
        let gnutlsServer = try run("certtool", ["--verify", "--load-ca-certificate", pki.caCertificatePath, "--infile", pki.chainPath("gw")])
        #expect(gnutlsServer.status == 0, "\(gnutlsServer.output)")
    }

    @Test("A CSR from openssl req signs; a CSR whose signature does not verify is refused")
    func csrSigning() throws {
        let scratch = try ScratchPKI()
        defer { scratch.remove() }
        let made = try run("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                                        "-keyout", "\(scratch.root)/device.key", "-subj", "/CN=ignored", "-out", "\(scratch.root)/device.csr"])
        #expect(made.status == 0, "\(made.output)")
        let csr = try String(contentsOfFile: "\(scratch.root)/device.csr", encoding: .utf8)
        let entry = try scratch.pki.sign(requestPEM: csr, name: "device-9", profile: .client())
        #expect(entry.subject == "CN=device-9")
        #expect(!FileManager.default.fileExists(atPath: scratch.pki.keyPath("device-9")))
        let matches = try run("openssl", ["x509", "-noout", "-pubkey", "-in", scratch.pki.certificatePath("device-9")]).output
            == (try run("openssl", ["pkey", "-pubout", "-in", "\(scratch.root)/device.key"]).output)
        #expect(matches)

        // Flip one bit of the signature (the last bytes of the DER): the CSR still parses, its signature fails.
        let document = try PEMTestDocument(csr)
        var der = document.der
        der[der.count - 3] ^= 0x01
        let before = try scratch.snapshot()
        #expect {
            try scratch.pki.sign(requestPEM: PEMTestDocument.encode(der, type: "CERTIFICATE REQUEST"), name: "device-10", profile: .client())
        } throws: { error in
            "\(error)".contains("signature does not verify")
        }
        #expect(try scratch.snapshot() == before)
    }

    @Test("renew keeps the key and supersedes; rotate changes the key and revokes after the grace period")
    func renewAndRotate() throws {
        let scratch = try ScratchPKI()
        defer { scratch.remove() }
        let pki = scratch.pki
        let first = try pki.issue(.init(name: "device-1", profile: .client()))
        let keyBefore = try String(contentsOfFile: pki.keyPath("device-1"), encoding: .utf8)
        let (renewed, old) = try pki.renew(name: "device-1")
        #expect(renewed.serial != first.serial)
        #expect(old.state == .superseded && old.revokeAfter == nil)
        #expect(try String(contentsOfFile: pki.keyPath("device-1"), encoding: .utf8) == keyBefore)
        #expect(try readPEMCertificates(path: pki.certificatePath("device-1"))[0].serialNumber.bytes.count > 0)

        let (rotated, previous) = try pki.rotate(name: "device-1", grace: 3600)
        #expect(try String(contentsOfFile: pki.keyPath("device-1"), encoding: .utf8) != keyBefore)
        #expect(previous.serial == renewed.serial && previous.state == .superseded)
        let (early, revokedEarly) = try pki.regenerateCRL()
        #expect(revokedEarly.isEmpty && !early.entries.contains { hexString($0.serial) == previous.serial })
        let (late, revokedLate) = try pki.regenerateCRL(now: Date().addingTimeInterval(7200))
        #expect(revokedLate.map(\.serial) == [previous.serial])
        #expect(late.entries.contains { hexString($0.serial) == previous.serial && $0.reason == .superseded })
        #expect(try pki.loadInventory().active("device-1")?.serial == rotated.serial)

        let (_, immediate) = try pki.rotate(name: "device-1", grace: 0)
        #expect(immediate.state == .revoked)
    }

    @Test("CRL sets compare per issuer: newer, same, older (or missing an issuer), and mixed when each is ahead somewhere")
    func crlSetComparison() throws {
        let first = try ScratchPKI()
        let second = try ScratchPKI(name: "Second Scratch CA")
        defer {
            first.remove()
            second.remove()
        }
        let (a1, _) = try first.pki.regenerateCRL()
        let (a2, _) = try first.pki.regenerateCRL()
        let (b1, _) = try second.pki.regenerateCRL()
        let (b2, _) = try second.pki.regenerateCRL()
        #expect(CRLSetComparison.compare([a2], with: [a1]) == .newer)
        #expect(CRLSetComparison.compare([a1], with: [a2]) == .older)
        #expect(CRLSetComparison.compare([a2], with: [a2]) == .same)
        #expect(CRLSetComparison.compare([a2, b1], with: [a1, b1]) == .newer)
        #expect(CRLSetComparison.compare([a1], with: [a1, b1]) == .older, "missing an issuer in force")
        #expect(CRLSetComparison.compare([a2], with: [a1, b1]) == .mixed, "newer for one, but would drop the other's")
        #expect(CRLSetComparison.compare([a1, b1], with: [a1]) == .newer, "a new issuer's CRL")
        #expect(CRLSetComparison.compare([a2, b1], with: [a1, b2]) == .mixed)
        #expect(CRLSetComparison.compare([], with: []) == .same)
    }

    @Test("revoke writes a CRL OpenSSL accepts, and openssl verify -crl_check refuses the certificate with it")
    func revokeAndCRL() throws {
        let scratch = try ScratchPKI(intermediate: true)
        defer { scratch.remove() }
        let pki = scratch.pki
        try pki.issue(.init(name: "device-1", profile: .client()))
        try pki.issue(.init(name: "device-2", profile: .client()))
        let revoked = try pki.revoke(name: "device-1", serial: nil, reason: .keyCompromise)
        #expect(revoked.state == .revoked && revoked.revocationReason == "keyCompromise")
        let verifyCRL = try run("openssl", ["crl", "-in", pki.crlPath, "-CAfile", pki.issuingCertificatePath, "-verify", "-noout"])
        #expect(verifyCRL.output.contains("verify OK"), "\(verifyCRL.output)")
        let bundle = "\(scratch.root)/bundle.pem"
        try [pki.caCertificatePath, pki.issuingCertificatePath, pki.crlPath]
            .map { try String(contentsOfFile: $0, encoding: .utf8) }.joined()
            .write(toFile: bundle, atomically: true, encoding: .utf8)
        let refused = try run("openssl", ["verify", "-crl_check", "-CAfile", bundle, pki.certificatePath("device-1")])
        #expect(refused.status != 0 && refused.output.contains("certificate revoked"), "\(refused.output)")
        let accepted = try run("openssl", ["verify", "-crl_check", "-CAfile", bundle, pki.certificatePath("device-2")])
        #expect(accepted.status == 0, "\(accepted.output)")
        // The gateway's trust loads it: the CRL is signed by the issuing CA, which the PKI names as intermediate.
        let trust = try ClientTrust.load(caBundlePath: pki.caCertificatePath, intermediatesPath: pki.issuingCertificatePath, crlPath: pki.crlPath)
        #expect(trust.revocation(of: try readPEMCertificates(path: pki.certificatePath("device-1"))[0]) != nil)
        #expect(trust.revocation(of: try readPEMCertificates(path: pki.certificatePath("device-2"))[0]) == nil)
        let bySerial = try pki.revoke(name: nil, serial: try pki.loadInventory().active("device-2")!.serial, reason: .cessationOfOperation)
        #expect(bySerial.name == "device-2")
    }

    @Test("Status follows the clock: valid, renew-due, expiring, expired")
    func statuses() throws {
        let scratch = try ScratchPKI()
        defer { scratch.remove() }
        let entry = try scratch.pki.issue(.init(name: "device-1", profile: .client(), days: 90))
        let issued = entry.notBefore
        #expect(entry.status(at: Date()) == .valid)
        #expect(entry.status(at: issued.addingTimeInterval(61 * 86400)) == .renewDue)
        #expect(entry.status(at: entry.notAfter.addingTimeInterval(-3 * 86400)) == .expiring)
        #expect(entry.status(at: entry.notAfter.addingTimeInterval(1)) == .expired)
        #expect(abs(entry.renewAfter.timeIntervalSince(issued) - 90 * 86400 * 0.6667) < 86400)
    }

    @Test(
        "Bad input is refused with a clear reason and writes nothing",
        arguments: [
            "duplicate", "unknown-renew", "unknown-revoke", "dns", "ip", "uri", "email", "days-zero", "days-beyond-ca",
            "revoked-renew", "bad-name", "server-without-san",
        ])
    func badInput(case name: String) throws {
        let scratch = try ScratchPKI()
        defer { scratch.remove() }
        let pki = scratch.pki
        try pki.issue(.init(name: "device-1", profile: .client()))
        try pki.issue(.init(name: "gone", profile: .client()))
        try pki.revoke(name: "gone", serial: nil)
        let before = try scratch.snapshot()
        let expected: String
        do {
            switch name {
            case "duplicate": expected = "already exists"; try pki.issue(.init(name: "device-1", profile: .client()))
            case "unknown-renew": expected = "no active certificate"; try pki.renew(name: "nobody")
            case "unknown-revoke": expected = "no certificate named"; try pki.revoke(name: "nobody", serial: nil)
            case "dns": expected = "invalid DNS SAN"; try pki.issue(.init(name: "s", profile: .server(dnsNames: ["bad_host!"], ipAddresses: [])))
            case "ip": expected = "invalid IP SAN"; try pki.issue(.init(name: "s", profile: .server(dnsNames: [], ipAddresses: ["1.2.3"])))
            case "uri": expected = "invalid URI SAN"; try pki.issue(.init(name: "c", profile: .client(uris: ["no scheme"])))
            case "email": expected = "invalid email SAN"; try pki.issue(.init(name: "c", profile: .client(emails: ["nobody"])))
            case "days-zero": expected = "at least 1"; try pki.issue(.init(name: "c", profile: .client(), days: 0))
            case "days-beyond-ca": expected = "outlive the issuing CA"; try pki.issue(.init(name: "c", profile: .client(), days: 20 * 365))
            case "revoked-renew": expected = "is revoked"; try pki.renew(name: "gone")
            case "bad-name": expected = "invalid name"; try pki.issue(.init(name: "../etc", profile: .client()))
            default: expected = "needs at least one"; try pki.issue(.init(name: "s", profile: .server(dnsNames: [], ipAddresses: [])))
            }
            Issue.record("\(name) was accepted")
        } catch {
            #expect("\(error)".contains(expected), "\(error)")
        }
        #expect(try scratch.snapshot() == before)
    }

    @Test("A missing or foreign PKI directory is refused")
    func foreignDirectory() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(throws: PKIError.self) { try PKIDirectory(path: "\(root)/absent").issue(.init(name: "a", profile: .client())) }
        try FileManager.default.createDirectory(atPath: "\(root)/easyrsa", withIntermediateDirectories: true)
        try "not ours".write(toFile: "\(root)/easyrsa/ca.crt", atomically: true, encoding: .utf8)
        #expect { try PKIDirectory(path: "\(root)/easyrsa").issue(.init(name: "a", profile: .client())) } throws: {
            "\($0)".contains("not a Portcullis PKI")
        }
    }

    @Test("A write failing midway leaves no trace; an interrupted transaction is rolled forward")
    func failureAndRecovery() throws {
        let scratch = try ScratchPKI()
        defer { scratch.remove() }
        let pki = scratch.pki
        let before = try scratch.snapshot()
        // A directory where the certificate's pending file must go makes that write fail after the key's.
        try FileManager.default.createDirectory(atPath: pki.certificatePath("device-1") + ".pending", withIntermediateDirectories: true)
        #expect(throws: (any Error).self) { try pki.issue(.init(name: "device-1", profile: .client())) }
        try FileManager.default.removeItem(atPath: pki.certificatePath("device-1") + ".pending")
        #expect(try scratch.snapshot() == before)
        #expect(!FileManager.default.fileExists(atPath: pki.keyPath("device-1")))

        // A crash after the journal was written: the next operation completes it.
        try "{}".write(toFile: pki.inventoryPath + ".pending", atomically: true, encoding: .utf8)
        let valid = try String(contentsOfFile: pki.inventoryPath, encoding: .utf8)
        try valid.write(toFile: pki.inventoryPath + ".pending", atomically: true, encoding: .utf8)
        try "hello\n".write(toFile: "\(pki.path)/issued/marker.txt.pending", atomically: true, encoding: .utf8)
        try "W \(pki.inventoryPath)\nW \(pki.path)/issued/marker.txt\n".write(
            toFile: "\(pki.path)/.transaction", atomically: true, encoding: .utf8)
        try pki.issue(.init(name: "device-2", profile: .client()))
        #expect(try String(contentsOfFile: "\(pki.path)/issued/marker.txt", encoding: .utf8) == "hello\n")
        #expect(!FileManager.default.fileExists(atPath: "\(pki.path)/.transaction"))
        #expect(try pki.loadInventory().active("device-2") != nil)
    }
}

/// Minimal PEM handling for tampering with a document in a test.
struct PEMTestDocument {
    let der: [UInt8]

    init(_ pem: String) throws {
        let body = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        der = Array(try #require(Data(base64Encoded: body)))
    }

    static func encode(_ der: [UInt8], type: String) -> String {
        let base64 = Data(der).base64EncodedString()
        var lines: [String] = []
        var index = base64.startIndex
        while index < base64.endIndex {
            let end = base64.index(index, offsetBy: 64, limitedBy: base64.endIndex) ?? base64.endIndex
            lines.append(String(base64[index..<end]))
            index = end
        }
        return "-----BEGIN \(type)-----\n" + lines.joined(separator: "\n") + "\n-----END \(type)-----\n"
    }
}
