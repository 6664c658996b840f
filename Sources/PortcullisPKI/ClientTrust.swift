import Foundation
import SwiftASN1
import X509

/// What the gateway trusts for client certificates: the CA bundle (roots, plus any intermediates it
/// carries) and the CRLs in force, each CRL checked against its issuer when loaded.
public struct ClientTrust: Sendable {
    public let roots: [Certificate]
    public let intermediates: [Certificate]
    public let crls: [CertificateRevocationList]

    public init(roots: [Certificate], intermediates: [Certificate] = [], crls: [CertificateRevocationList] = []) {
        self.roots = roots
        self.intermediates = intermediates
        self.crls = crls
    }

    /// Loads a PEM CA bundle and an optional PEM CRL file (which may hold several CRLs).
    ///
    /// Self-signed certificates in the bundle are roots; the others, and those of `intermediatesPath`, are
    /// intermediates. A CRL must be signed by one of these CAs.
    public static func load(caBundlePath: String, intermediatesPath: String? = nil, crlPath: String?) throws
        -> ClientTrust
    {
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
        return ClientTrust(roots: roots, intermediates: intermediates, crls: crls)
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
