import Foundation
import FuzzDriver
import FuzzSupport
import PortcullisPKI
import SwiftASN1
import X509

/// Every way the gateway and `portcullis pki` read a CRL file: the DER decoder itself, a whole file as one PEM
/// document (`pki watch`), and a file of several PEM documents each checked against the CA bundle
/// (`ClientTrust.load`, on every start and reload). Any input may be refused; none may crash, trap or hang,
/// and a CRL that is read must read back the same from its own encoding and answer revocation questions about
/// the serials it lists.
enum CorpusAuthorities {
    /// The CAs the seeds' CRLs are signed by (P-256, RSA and Ed25519 keys made for the corpus and thrown away),
    /// so that mutated CRLs that keep their issuer reach the signature check as they would at load.
    static let authorities: [Certificate] = certificates("""
        -----BEGIN CERTIFICATE-----
        MIIBrjCCAVOgAwIBAgIUMYwqBuGl7u2txcNKksFTdMh+lSkwCgYIKoZIzj0EAwIw
        JDEiMCAGA1UEAwwZUG9ydGN1bGxpcyBGdXp6IENvcnB1cyBDQTAeFw0yNjEyMDIx
        OTA2MjJaFw0zNjExMjkxOTA2MjJaMCQxIjAgBgNVBAMMGVBvcnRjdWxsaXMgRnV6
        eiBDb3JwdXMgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAR4r3Q3ZVBbL4/C
        nq3JJuat2p/hvD/UDedZ7pBV69bE4RISvj38iDFv+GOrakqzPvH6q+VMDj0dxfPD
        9N3QuAIho2MwYTAfBgNVHSMEGDAWgBQ/SVLTYgIqpZNOD/2KtjiuhwPkgDAPBgNV
        HRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUP0lS02ICKqWT
        Tg/9irY4rocD5IAwCgYIKoZIzj0EAwIDSQAwRgIhAPjWjklroMQxeJDN5r+rklEx
        CYX+WbU+b00CF4bPY1LSAiEAlw2C6fWJXcikI3zmxjXVcYDz1NEOgz5hSbAAnl+3
        x+0=
        -----END CERTIFICATE-----
        -----BEGIN CERTIFICATE-----
        MIIDQTCCAimgAwIBAgIUJ2rEZKlDKE4bryygH1UczyQPr+wwDQYJKoZIhvcNAQEL
        BQAwKDEmMCQGA1UEAwwdUG9ydGN1bGxpcyBGdXp6IENvcnB1cyBSU0EgQ0EwHhcN
        MjYxMjAyMTkwNjIzWhcNMzYxMTI5MTkwNjIzWjAoMSYwJAYDVQQDDB1Qb3J0Y3Vs
        bGlzIEZ1enogQ29ycHVzIFJTQSBDQTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCC
        AQoCggEBAIY+KvK7jLYyGAipEqn5Vn85HDhlDEzap3/uAQZ3x06np+HZlt/o1Kka
        pW//SidEfkFGCGLDVz88M6cFr8lhFc5hisgAwXaLCL7a12aGB03D3BTtWOZC/zqW
        O92Y1sXN7FGQSWLL3IyKpZ7svJksSrw2k1jTTNNL8vM7k9iF+Ot2GD5s6CxOPAWL
        +E3WYCUjTTEv9fEAIcJDqI9EuLwGZXtbctbAjdYrhkm/mRGzj4tMEs3F09IO6a25
        GzZAXvyOi+xeb5wG3gzVzz3vtWnSgyZERLrl7EqorPG20cUW2ln7yxz8FtlCqRzs
        24Kz/FLQus1eU0SCeLAub5yQF+F9bdMCAwEAAaNjMGEwHwYDVR0jBBgwFoAU8Ln7
        ea41XgY4tABf1b4NVjzBzIgwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMC
        AQYwHQYDVR0OBBYEFPC5+3muNV4GOLQAX9W+DVY8wcyIMA0GCSqGSIb3DQEBCwUA
        A4IBAQBc0LqfLmtLu/nnWPmjmSa2YfjoJmcLRrXrdG3t13IHpwdxHckruYLTdqbD
        eR4nKUQX29lnNTBvY9b1teOwLSEvXimCIvAribDbq/Gsc6j4qstH/7Osj0E0Zasy
        aExZTUfiPZXbduVKJdo/4jJ5NS8rl8kcvEhHjD8/xrjiGu2f3VWokIqAwg3VvBMg
        lk0raqbjKOJsj2CTJS7nXHWHIzujCFQ6JYEGCgNn7WUFU+mBaWCMwBwZvuTKhWBg
        PGgNjZHldyIcJaq0fiAWxHbelBGt4TAFajRe2OrKVrVys0c6++mDM7I23nG8OhjP
        lGFCpvWlaJHF0BQoUW5XRKDczlvs
        -----END CERTIFICATE-----
        -----BEGIN CERTIFICATE-----
        MIIBfTCCAS+gAwIBAgIUWLArav9gHsDcfo8K60O4aydjjIowBQYDK2VwMCwxKjAo
        BgNVBAMMIVBvcnRjdWxsaXMgRnV6eiBDb3JwdXMgRWQyNTUxOSBDQTAeFw0yNjEy
        MDIxOTA2MjNaFw0zNjExMjkxOTA2MjNaMCwxKjAoBgNVBAMMIVBvcnRjdWxsaXMg
        RnV6eiBDb3JwdXMgRWQyNTUxOSBDQTAqMAUGAytlcAMhADpRtRb+N1qL4U0nQXs5
        8wmPRWC33EwTor/6APTavwFco2MwYTAfBgNVHSMEGDAWgBSPTtj3C6fNksImBDml
        FSs4dk2uMTAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4E
        FgQUj07Y9wunzZLCJgQ5pRUrOHZNrjEwBQYDK2VwA0EAmh5mGYm01NJJPpsOBzRg
        sXPOkDmYh0yu86aBN6V7iYJIl+mqjEUAqFKghVcxV+T5N8DPlIzRtVCni9hQy1AI
        DQ==
        -----END CERTIFICATE-----
        """)

    /// A device certificate of the P-256 CA that the seed `ca-crl` revokes: `ClientTrust.revocation(of:)` is
    /// asked about it for every CRL read.
    static let revokedDevice: Certificate = certificates("""
        -----BEGIN CERTIFICATE-----
        MIIB1jCCAX2gAwIBAgITFsm8azmSPb8Dd80y4r/BJ2VPxTAKBggqhkjOPQQDAjAk
        MSIwIAYDVQQDDBlQb3J0Y3VsbGlzIEZ1enogQ29ycHVzIENBMB4XDTI2MTIwMjE5
        MDYyNFoXDTI3MDMwMjE5MDYyNFowFjEUMBIGA1UEAwwLZGVtby1kZXZpY2UwWTAT
        BgcqhkjOPQIBBggqhkjOPQMBBwNCAAQ0KXdVq59WtHFE8ITwzfU6gdio9e6ZjaDE
        96myZFJiLYsRU0qHzciNhaiQRnSUuEo9fwbackJCTeoo2cuHGPMgo4GbMIGYMAwG
        A1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMC
        MB0GA1UdDgQWBBS30crKnd5T5X0NR0SBWyFvyRXrNzAfBgNVHSMEGDAWgBQ/SVLT
        YgIqpZNOD/2KtjiuhwPkgDAjBgNVHREEHDAaghhkZW1vLWRldmljZS5leGFtcGxl
        LnRlc3QwCgYIKoZIzj0EAwIDRwAwRAIgAJ85gEICSCmJNSBiRa62DLwZafHEv5+G
        bRBKvc5koigCIFRwF3NbVEa4NpzCZSEaT/kNi/Hz1kp6wbmcesgjpqMW
        -----END CERTIFICATE-----
        """)[0]

    /// CRL numbers every number read is ordered against: zero, one, and the largest RFC 5280 allows.
    static let referenceNumbers: [[UInt8]] = [[], [0x01], [0x7F] + Array(repeating: 0xFF, count: 19)]

    private static func certificates(_ pem: String) -> [Certificate] {
        do {
            return try PEMDocument.parseMultiple(pemString: pem).map { try Certificate(derEncoded: $0.derBytes) }
        } catch {
            fatalError("the fuzz target's own CA bundle does not parse: \(error)")
        }
    }
}

/// The order `compareNumbers` gives two CRL numbers, as a sign.
func orderSign(_ result: ComparisonResult) -> Int {
    switch result {
    case .orderedAscending: -1
    case .orderedSame: 0
    case .orderedDescending: 1
    }
}

/// What a CRL says, for comparing two readings of it (the type itself is not `Equatable`).
func sameContents(_ a: CertificateRevocationList, _ b: CertificateRevocationList) -> Bool {
    a.issuer == b.issuer && a.thisUpdate == b.thisUpdate && a.nextUpdate == b.nextUpdate && a.entries == b.entries
        && a.number == b.number && a.derBytes == b.derBytes
}

/// The checks every CRL that was read must pass, whichever path read it.
func checkRead(_ crl: CertificateRevocationList) {
    // Its own PEM serialisation (what `pki` writes to crl.pem) reads back as the same CRL.
    do {
        let again = try CertificateRevocationList(pemEncoded: crl.pemDocument.pemString)
        require(sameContents(crl, again), "a CRL read back from its own PEM encoding differs")
    } catch {
        require(false, "a CRL that was read does not read back from its own PEM encoding: \(error)")
    }
    // Each serial listed is revoked, as a certificate's parsed serial number would ask.
    for entry in crl.entries {
        let serial = Certificate.SerialNumber(bytes: entry.serial)
        require(crl.isRevoked(serial: serial), "serial \(entry.serial) is listed but not revoked")
        require(crl.entry(for: serial)?.serial == entry.serial, "serial \(entry.serial) is listed but has no entry")
    }
    if let number = crl.number {
        require(CertificateRevocationList.compareNumbers(number, number) == .orderedSame, "a CRL number differs from itself")
        require(
            CertificateRevocationList.compareNumbers([0, 0] + number, number) == .orderedSame,
            "leading zero octets change a CRL number's order")
        for reference in CorpusAuthorities.referenceNumbers {
            let forward = orderSign(CertificateRevocationList.compareNumbers(number, reference))
            let backward = orderSign(CertificateRevocationList.compareNumbers(reference, number))
            require(forward == -backward, "CRL numbers \(number) and \(reference) are not ordered consistently")
        }
    }
    // What admission asks of the CRLs in force: the revocation of a certificate of the bundle's CA, and
    // whether a stale CRL refuses it.
    let trust = ClientTrust(roots: CorpusAuthorities.authorities, crls: [crl])
    let revocation = trust.revocation(of: CorpusAuthorities.revokedDevice)
    let listed = crl.issuer == CorpusAuthorities.revokedDevice.issuer && crl.isRevoked(serial: CorpusAuthorities.revokedDevice.serialNumber)
    require((revocation != nil) == listed, "ClientTrust.revocation disagrees with the CRL's own list")
    _ = trust.expiredCRL(covering: CorpusAuthorities.revokedDevice, at: Date())
    _ = trust.expiredCRLs(at: crl.thisUpdate)
}

func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: count))
    if let crl = try? CertificateRevocationList(derEncoded: bytes) {
        require(crl.derBytes == bytes, "a CRL read from DER does not keep those bytes")
        checkRead(crl)
        for authority in CorpusAuthorities.authorities where crl.isSigned(by: authority) {
            require(crl.issuer == authority.subject, "a CRL counts as signed by a CA it does not name")
        }
    }
    // The files are read as UTF-8 text; an input that is not is refused before any parser sees it.
    guard let text = String(validating: bytes, as: UTF8.self) else { return 0 }
    // `pki watch`: the whole file as one CRL.
    if let crl = try? CertificateRevocationList(pemEncoded: text) {
        checkRead(crl)
    }
    // `ClientTrust.load`: every PEM document of the file, each one a CRL signed by a CA of the bundle.
    if let documents = try? PEMDocument.parseMultiple(pemString: text) {
        for document in documents {
            guard let crl = try? CertificateRevocationList(pemEncoded: document.pemString) else { continue }
            checkRead(crl)
            for authority in CorpusAuthorities.authorities where crl.isSigned(by: authority) {
                require(crl.issuer == authority.subject, "a CRL counts as signed by a CA it does not name")
            }
        }
    }
    return 0
}

// Parsed now rather than on the first input, so that a broken bundle fails at start.
_ = CorpusAuthorities.authorities
_ = CorpusAuthorities.revokedDevice

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
