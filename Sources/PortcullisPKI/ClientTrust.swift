import Foundation
import SwiftASN1
import X509

/// What the gateway trusts for client certificates: the CA bundle (roots, plus any intermediates it
/// carries) and the CRLs in force, each CRL checked against its issuer when loaded.
public struct ClientTrust: Sendable {
    public let roots: [Certificate]
    public let intermediates: [Certificate]
    public let crls: [CertificateRevocationList]
    /// Whether a CRL past its `nextUpdate` refuses the certificates it covers (fail closed) or still counts
    /// as it stands.
    public let refusesExpiredCRLs: Bool

    public init(
        roots: [Certificate], intermediates: [Certificate] = [], crls: [CertificateRevocationList] = [],
        refusesExpiredCRLs: Bool = true
    ) {
        self.roots = roots
        self.intermediates = intermediates
        self.crls = crls
        self.refusesExpiredCRLs = refusesExpiredCRLs
    }

    /// The same trust with other CRLs in force.
    public func replacingCRLs(with crls: [CertificateRevocationList]) -> ClientTrust {
        ClientTrust(roots: roots, intermediates: intermediates, crls: crls, refusesExpiredCRLs: refusesExpiredCRLs)
    }

    /// The CRLs in force that are past their `nextUpdate` at `now`.
    public func expiredCRLs(at now: Date) -> [CertificateRevocationList] {
        crls.filter { $0.nextUpdate.map { $0 < now } ?? false }
    }

    /// The CRL of `certificate`'s issuer when it is past its `nextUpdate` at `now` and such a CRL refuses.
    public func expiredCRL(covering certificate: Certificate, at now: Date) -> CertificateRevocationList? {
        guard refusesExpiredCRLs else { return nil }
        return crls.first { $0.issuer == certificate.issuer && ($0.nextUpdate.map { $0 < now } ?? false) }
    }

    /// Loads a PEM CA bundle and an optional PEM CRL file (which may hold several CRLs).
    ///
    /// Self-signed certificates in the bundle are roots; the others, and those of `intermediatesPath`, are
    /// intermediates. A CRL must be signed by one of these CAs.
    public static func load(
        caBundlePath: String, intermediatesPath: String? = nil, crlPath: String?, refusesExpiredCRLs: Bool = true
    ) throws -> ClientTrust {
        var bundle = try readPEMCertificates(path: caBundlePath)
        guard !bundle.isEmpty else {
            throw PKIError.unreadable(path: caBundlePath, reason: "no CERTIFICATE in the CA bundle")
        }
        let roots = bundle.filter { $0.issuer == $0.subject }
        if let intermediatesPath {
            bundle += try readPEMCertificates(path: intermediatesPath).filter { $0.issuer != $0.subject }
        }
        let intermediates = bundle.filter { $0.issuer != $0.subject }
        guard !roots.isEmpty else {
            throw PKIError.unreadable(path: caBundlePath, reason: "the CA bundle holds no self-signed root")
        }
        var crls: [CertificateRevocationList] = []
        if let crlPath {
            let text = try readText(crlPath)
            let documents: [PEMDocument]
            do {
                documents = try PEMDocument.parseMultiple(pemString: text)
            } catch {
                throw PKIError.unreadable(path: crlPath, reason: "not a PEM file")
            }
            for document in documents {
                let crl: CertificateRevocationList
                do {
                    crl = try CertificateRevocationList(pemEncoded: document.pemString)
                } catch {
                    throw PKIError.unreadable(path: crlPath, reason: "\(error)")
                }
                guard bundle.contains(where: { crl.isSigned(by: $0) }) else {
                    throw PKIError.unreadable(
                        path: crlPath, reason: "CRL issued by \(crl.issuer) is not signed by a CA of the bundle")
                }
                crls.append(crl)
            }
        }
        return ClientTrust(roots: roots, intermediates: intermediates, crls: crls, refusesExpiredCRLs: refusesExpiredCRLs)
    }

    /// The revocation entry for `certificate` when the CRL of its issuer lists it.
    public func revocation(of certificate: Certificate) -> CertificateRevocationList.Entry? {
        for crl in crls where crl.issuer == certificate.issuer {
            if let entry = crl.entry(for: certificate.serialNumber) { return entry }
        }
        return nil
    }
}

/// Reads every CERTIFICATE block of a PEM file.
public func readPEMCertificates(path: String) throws -> [Certificate] {
    let text = try readText(path)
    do {
        return try PEMDocument.parseMultiple(pemString: text)
            .filter { $0.discriminator == "CERTIFICATE" }
            .map { try Certificate(derEncoded: $0.derBytes) }
    } catch {
        throw PKIError.unreadable(path: path, reason: "not a PEM certificate file (\(error))")
    }
}

func readText(_ path: String) throws -> String {
    do {
        return try String(contentsOfFile: path, encoding: .utf8)
    } catch {
        let reason = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "no such file"
        throw PKIError.unreadable(path: path, reason: reason)
    }
}
