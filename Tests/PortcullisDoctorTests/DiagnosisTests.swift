import Crypto
import Foundation
@testable import PortcullisDoctor
import Testing
import X509

/// The doctor's checks on facts, without a network: what each finding says and advises.
@Suite("doctor's checks")
struct DiagnosisTests {
    static let caKey = P256.Signing.PrivateKey()
    static let caName = try! DistinguishedName { CommonName("Test CA") }
    static let now = Date()

    /// A certificate from the test CA; `usages` nil leaves the extension out.
    static func certificate(
        key: P256.Signing.PrivateKey = P256.Signing.PrivateKey(), notBefore: Date = now - 3600, notAfter: Date = now + 90 * 86_400,
        usages: [ExtendedKeyUsage.Usage]? = [.clientAuth], issuer: DistinguishedName = caName
    ) throws -> Certificate {
        var extensions = Certificate.Extensions()
        if let usages { try extensions.append(Certificate.Extension(ExtendedKeyUsage(usages), critical: false)) }
        return try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey), notValidBefore: notBefore,
            notValidAfter: notAfter, issuer: issuer, subject: try DistinguishedName { CommonName("device-1") },
            signatureAlgorithm: .ecdsaWithSHA256, extensions: extensions, issuerPrivateKey: .init(caKey))
    }

    @Test("Your certificate: each local finding fails with its own words; a good one passes, one about to expire warns")
    func clientCertificate() throws {
        func step(_ certificate: Certificate, problem: String? = nil, named: [DistinguishedName] = [Self.caName]) -> DoctorStep {
            Diagnosis.clientCertificateStep(LocalCertificate(certificate: certificate, problem: problem), named: named, now: Self.now)
        }
        #expect(step(try Self.certificate()).outcome == .passed)
        let expired = step(try Self.certificate(notBefore: Self.now - 86_400 * 10, notAfter: Self.now - 60))
        #expect(expired.outcome == .failed && expired.detail.contains("expired") && expired.advice?.contains("pki renew") == true)
        let early = step(try Self.certificate(notBefore: Self.now + 3600))
        #expect(early.outcome == .failed && early.detail.contains("not valid before") && early.advice?.contains("clock") == true)
        let serverOnly = step(try Self.certificate(usages: [.serverAuth]))
        #expect(serverOnly.outcome == .failed && serverOnly.detail.contains("lacks clientAuth"))
        // Another issuer is a warning here (the gateway may hold the intermediate); the verdict tells.
        let foreignCertificate = try Self.certificate(issuer: try DistinguishedName { CommonName("Other CA") })
        let foreign = step(foreignCertificate)
        #expect(foreign.outcome == .warning && foreign.detail.contains("not among the CAs the gateway names"))
        let refused = Diagnosis.verdictStep(
            alert: 46, failure: "", local: LocalCertificate(certificate: foreignCertificate, problem: nil), named: [Self.caName])
        #expect(refused.outcome == .failed && refused.detail.contains("the gateway does not trust the CA that issued your certificate"))
        // An intermediate sent with the certificate, issued by a CA the gateway names, is enough.
        var chained = LocalCertificate(certificate: foreignCertificate, problem: nil)
        chained.intermediates = [try Self.certificate()]
        #expect(Diagnosis.clientCertificateStep(chained, named: [Self.caName], now: Self.now).outcome == .passed)
        #expect(step(try Self.certificate(), named: []).outcome == .passed, "a server that names no CA decides itself")
        let wrongKey = step(try Self.certificate(), problem: "the key k.pem is not this certificate's key")
        #expect(wrongKey.outcome == .failed && wrongKey.detail.contains("not this certificate's key"))
        #expect(step(try Self.certificate(notAfter: Self.now + 3 * 86_400)).outcome == .warning)
    }

    @Test("Keys are matched with their certificate from PEM files")
    func keyMatching() throws {
        let directory = NSTemporaryDirectory() + "doctor-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let key = P256.Signing.PrivateKey()
        let certificate = try Self.certificate(key: key)
        try certificate.serializeAsPEM().pemString.write(toFile: "\(directory)/c.pem", atomically: true, encoding: .utf8)
        try key.pemRepresentation.write(toFile: "\(directory)/k.pem", atomically: true, encoding: .utf8)
        try P256.Signing.PrivateKey().pemRepresentation.write(toFile: "\(directory)/other.pem", atomically: true, encoding: .utf8)
        #expect(LocalCertificate.load(certificateFile: "\(directory)/c.pem", keyFile: "\(directory)/k.pem").problem == nil)
        #expect(LocalCertificate.load(certificateFile: "\(directory)/c.pem", keyFile: "\(directory)/other.pem").problem?.contains("not this certificate's key") == true)
        #expect(LocalCertificate.load(certificateFile: "\(directory)/k.pem", keyFile: "\(directory)/k.pem").certificate == nil)
        #expect(LocalCertificate.load(certificateFile: "\(directory)/none.pem", keyFile: "\(directory)/k.pem").problem?.contains("cannot read") == true)
    }

    @Test("The clock: within 2 s, minutes off (passes), over 5 minutes (a warning); a date that is not HTTP's")
    func clock() {
        let date = Date(timeIntervalSince1970: 784_111_777)  // Sun, 06 Nov 1994 08:49:37 GMT
        #expect(Diagnosis.clockStep(serverDate: "Sun, 06 Nov 1994 08:49:37 GMT", now: date).detail.contains("within 2 s"))
        let behind = Diagnosis.clockStep(serverDate: "Sun, 06 Nov 1994 08:49:37 GMT", now: date - 90)
        #expect(behind.outcome == .passed && behind.detail.contains("90 s behind"))
        let far = Diagnosis.clockStep(serverDate: "Sun, 06 Nov 1994 08:49:37 GMT", now: date + 3600)
        #expect(far.outcome == .warning && far.detail.contains("3600 s ahead of"))
        #expect(Diagnosis.clockStep(serverDate: "yesterday", now: date).outcome == .warning)
    }

    @Test("The gateway's answers: alerts in plain words, refusals with advice, a server that asks for no certificate")
    func answers() {
        let revoked = Diagnosis.verdictStep(alert: 46, failure: "", local: LocalCertificate(certificate: nil, problem: nil), named: [])
        #expect(revoked.outcome == .failed && revoked.advice?.contains("revoked") == true)
        let required = Diagnosis.verdictStep(alert: 116, failure: "", local: LocalCertificate(certificate: nil, problem: nil), named: [])
        #expect(required.detail.contains("requires a client certificate"))
        let forbidden = Diagnosis.upgradeStep(.init(status: 403, reason: "Forbidden", headers: [], body: "no rule grants this route"), path: "/v1/x")
        #expect(forbidden.advice?.contains("policy explain") == true)
        let page = Diagnosis.upgradeStep(.init(status: 200, reason: "OK", headers: [], body: "<html>\nlots\nof\nlines"), path: "/")
        #expect(page.detail == "200 OK: <html>")
        #expect(Diagnosis.upgradeStep(.init(status: 101, reason: "Switching Protocols", headers: [], body: ""), path: "/v1/echo").outcome == .passed)
        #expect(Diagnosis.certificateRequestStep(requested: false, named: []).advice?.contains("not a Portcullis gateway") == true)
    }
}
