import Foundation
import SwiftASN1
import X509

/// Why a certificate was revoked (RFC 5280 §5.3.1 CRLReason).
public enum RevocationReason: Int, Sendable, CaseIterable {
    case unspecified = 0
    case keyCompromise = 1
    case caCompromise = 2
    case affiliationChanged = 3
    case superseded = 4
    case cessationOfOperation = 5
    case certificateHold = 6
    case privilegeWithdrawn = 9

    public var name: String { String(describing: self) }

    public init?(name: String) {
        guard let match = Self.allCases.first(where: { $0.name.lowercased() == name.lowercased() }) else { return nil }
        self = match
    }
}

/// An X.509 v2 certificate revocation list (RFC 5280 §5).
///
/// swift-certificates has no CRL type, so this is a small DER codec on swift-asn1: enough to sign a CRL that
/// OpenSSL and GnuTLS accept, and to read back one made by `openssl ca -gencrl`.
public struct CertificateRevocationList: Sendable {
    public struct Entry: Sendable, Hashable {
        /// Serial number bytes, big-endian, as in the certificate.
        public var serial: [UInt8]
        public var revocationDate: Date
        public var reason: RevocationReason?

        public init(serial: [UInt8], revocationDate: Date, reason: RevocationReason? = nil) {
            self.serial = serial
            self.revocationDate = revocationDate
            self.reason = reason
        }
    }

    public let issuer: DistinguishedName
    public let thisUpdate: Date
    public let nextUpdate: Date?
    public let entries: [Entry]
    /// The CRL number extension, when present.
    public let number: [UInt8]?
    /// The complete DER encoding.
    public let derBytes: [UInt8]

    /// Orders two CRL numbers (DER INTEGER contents, big-endian; RFC 5280 §5.2.3 makes them non-negative and
    /// up to 20 octets) as the numbers they are, whatever their leading zero octets.
    public static func compareNumbers(_ a: [UInt8], _ b: [UInt8]) -> ComparisonResult {
        let x = a.drop { $0 == 0 }, y = b.drop { $0 == 0 }
        if x.count != y.count { return x.count < y.count ? .orderedAscending : .orderedDescending }
        for (left, right) in zip(x, y) where left != right { return left < right ? .orderedAscending : .orderedDescending }
        return .orderedSame
    }
    private let tbsBytes: ArraySlice<UInt8>
    private let signatureAlgorithm: Certificate.SignatureAlgorithm?
    private let signatureBytes: ArraySlice<UInt8>
    /// Where each serial's entry is in ``entries`` (the first, should a CRL list a serial twice): a handshake
    /// looks its serial up in constant time however many devices the CRL revokes.
    private let entryIndexBySerial: [[UInt8]: Int]

    /// Whether the serial of `certificate` is listed. The caller checks that the CRL's issuer is the certificate's.
    public func isRevoked(serial: Certificate.SerialNumber) -> Bool {
        entryIndexBySerial[Array(serial.bytes)] != nil
    }

    /// The entry listing `serial`, if any.
    public func entry(for serial: Certificate.SerialNumber) -> Entry? {
        entryIndexBySerial[Array(serial.bytes)].map { entries[$0] }
    }

    /// Whether the CRL is signed by `issuerCertificate`'s key and names it as issuer.
    public func isSigned(by issuerCertificate: Certificate) -> Bool {
        guard let signatureAlgorithm, issuer == issuerCertificate.subject else { return false }
        return issuerCertificate.publicKey.isValidSignature(
            signatureBytes, for: tbsBytes, signatureAlgorithm: signatureAlgorithm)
    }

    public var pemDocument: PEMDocument {
        PEMDocument(type: "X509 CRL", derBytes: derBytes)
    }

    // MARK: Signing

    /// Signs a CRL listing `entries` with the CA's key.
    public static func sign(
        entries: [Entry],
        by authority: CertificateAuthority,
        number: UInt64,
        thisUpdate: Date = Date(),
        nextUpdate: Date
    ) throws -> CertificateRevocationList {
        let algorithm = authority.privateKey.signatureAlgorithm
        guard let algorithmOID = Self.oid(for: algorithm) else {
            throw PKIError.invalidCRL("unsupported signature algorithm \(algorithm)")
        }
        let keyIdentifier = try? authority.certificate.extensions.subjectKeyIdentifier?.keyIdentifier
        var tbs = DER.Serializer()
        try tbs.appendConstructedNode(identifier: .sequence) { coder in
            try coder.serialize(1)  // v2
            try Self.serializeAlgorithm(algorithmOID, algorithm: algorithm, into: &coder)
            try coder.serialize(authority.certificate.subject)
            try Self.serializeTime(thisUpdate, into: &coder)
            try Self.serializeTime(nextUpdate, into: &coder)
            if !entries.isEmpty {
                try coder.appendConstructedNode(identifier: .sequence) { list in
                    for entry in entries {
                        try list.appendConstructedNode(identifier: .sequence) { item in
                            try item.serialize(ArraySlice(entry.serial))
                            try Self.serializeTime(entry.revocationDate, into: &item)
                            if let reason = entry.reason {
                                try item.appendConstructedNode(identifier: .sequence) { extensions in
                                    try extensions.appendConstructedNode(identifier: .sequence) { ext in
                                        try ext.serialize(ASN1ObjectIdentifier.crlReason)
                                        var value = DER.Serializer()
                                        value.appendPrimitiveNode(identifier: .enumerated) {
                                            $0.append(UInt8(reason.rawValue))
                                        }
                                        try ext.serialize(ASN1OctetString(contentBytes: value.serializedBytes[...]))
                                    }
                                }
                            }
                        }
                    }
                }
            }
            try coder.serialize(explicitlyTaggedWithTagNumber: 0, tagClass: .contextSpecific) { explicit in
                try explicit.appendConstructedNode(identifier: .sequence) { extensions in
                    if let keyIdentifier {
                        try extensions.appendConstructedNode(identifier: .sequence) { ext in
                            try ext.serialize(ASN1ObjectIdentifier.X509ExtensionID.authorityKeyIdentifier)
                            var value = DER.Serializer()
                            value.appendConstructedNode(identifier: .sequence) { aki in
                                aki.appendPrimitiveNode(identifier: ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific)) {
                                    $0.append(contentsOf: keyIdentifier)
                                }
                            }
                            try ext.serialize(ASN1OctetString(contentBytes: value.serializedBytes[...]))
                        }
                    }
                    try extensions.appendConstructedNode(identifier: .sequence) { ext in
                        try ext.serialize(ASN1ObjectIdentifier.crlNumber)
                        var value = DER.Serializer()
                        try value.serialize(number)
                        try ext.serialize(ASN1OctetString(contentBytes: value.serializedBytes[...]))
                    }
                }
            }
        }
        let tbsBytes = tbs.serializedBytes
        let signature = try authority.privateKey.sign(bytes: tbsBytes, signatureAlgorithm: algorithm)
        var whole = DER.Serializer()
        try whole.appendConstructedNode(identifier: .sequence) { coder in
            coder.serializeRawBytes(tbsBytes)
            try Self.serializeAlgorithm(algorithmOID, algorithm: algorithm, into: &coder)
            try coder.serialize(ASN1BitString(bytes: signature.rawRepresentation[...]))
        }
        return try CertificateRevocationList(derEncoded: whole.serializedBytes)
    }

    // MARK: Parsing

    public init(pemEncoded text: String) throws {
        let document: PEMDocument
        do {
            document = try PEMDocument(pemString: text)
        } catch {
            throw PKIError.invalidCRL("not a PEM document")
        }
        guard document.discriminator == "X509 CRL" else {
            throw PKIError.invalidCRL("PEM type is '\(document.discriminator)', expected 'X509 CRL'")
        }
        try self.init(derEncoded: document.derBytes)
    }

    public init(derEncoded bytes: [UInt8]) throws {
        do {
            let root = try DER.parse(bytes)
            var parts: [ASN1Node] = []
            try DER.sequence(root, identifier: .sequence) { nodes in
                while let node = nodes.next() { parts.append(node) }
            }
            guard parts.count == 3 else { throw PKIError.invalidCRL("expected tbsCertList, algorithm and signature") }
            self.derBytes = bytes
            self.tbsBytes = parts[0].encodedBytes
            let outerOID = try Self.parseAlgorithmOID(parts[1])
            self.signatureAlgorithm = Self.algorithm(for: outerOID)
            let bits = try ASN1BitString(derEncoded: parts[2])
            self.signatureBytes = bits.bytes

            var fields: [ASN1Node] = []
            try DER.sequence(parts[0], identifier: .sequence) { nodes in
                while let node = nodes.next() { fields.append(node) }
            }
            var index = 0
            if index < fields.count, fields[index].identifier == .integer {
                let version = try Int(derEncoded: fields[index])
                guard version == 1 else { throw PKIError.invalidCRL("unsupported version \(version + 1)") }
                index += 1
            }
            guard index + 3 <= fields.count else { throw PKIError.invalidCRL("truncated tbsCertList") }
            let innerOID = try Self.parseAlgorithmOID(fields[index])
            guard innerOID == outerOID else { throw PKIError.invalidCRL("inner and outer signature algorithms differ") }
            self.issuer = try DistinguishedName(derEncoded: fields[index + 1])
            self.thisUpdate = try Self.parseTime(fields[index + 2])
            index += 3
            var nextUpdate: Date?
            if index < fields.count, [.utcTime, .generalizedTime].contains(fields[index].identifier) {
                nextUpdate = try Self.parseTime(fields[index])
                index += 1
            }
            self.nextUpdate = nextUpdate
            var entries: [Entry] = []
            if index < fields.count, fields[index].identifier == .sequence {
                try DER.sequence(fields[index], identifier: .sequence) { list in
                    while let item = list.next() {
                        try DER.sequence(item, identifier: .sequence) { entry in
                            guard let serialNode = entry.next(), let dateNode = entry.next() else {
                                throw PKIError.invalidCRL("truncated revoked certificate entry")
                            }
                            let serial = try ArraySlice<UInt8>(derEncoded: serialNode)
                            let date = try Self.parseTime(dateNode)
                            var reason: RevocationReason?
                            if let extensionsNode = entry.next() {
                                reason = try Self.parseReason(extensionsNode)
                            }
                            entries.append(Entry(serial: Array(serial), revocationDate: date, reason: reason))
                        }
                    }
                }
                index += 1
            }
            var number: [UInt8]?
            if index < fields.count {
                let node = fields[index]
                guard node.identifier == ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific) else {
                    throw PKIError.invalidCRL("unexpected field in tbsCertList")
                }
                number = try Self.parseCRLNumber(node)
            }
            self.number = number
            self.entries = entries
            self.entryIndexBySerial = Dictionary(
                entries.indices.map { (entries[$0].serial, $0) }, uniquingKeysWith: { first, _ in first })
        } catch let error as PKIError {
            throw error
        } catch {
            throw PKIError.invalidCRL("malformed DER (\(error))")
        }
    }

    // MARK: DER helpers

    private static func parseAlgorithmOID(_ node: ASN1Node) throws -> ASN1ObjectIdentifier {
        try DER.sequence(node, identifier: .sequence) { nodes in
            guard let oid = nodes.next() else { throw PKIError.invalidCRL("empty AlgorithmIdentifier") }
            while nodes.next() != nil {}  // parameters (NULL for RSA) carry nothing we need
            return try ASN1ObjectIdentifier(derEncoded: oid)
        }
    }

    private static func parseTime(_ node: ASN1Node) throws -> Date {
        var components = DateComponents()
        components.timeZone = TimeZone(identifier: "UTC")
        if node.identifier == .utcTime {
            let time = try UTCTime(derEncoded: node)
            (components.year, components.month, components.day) = (time.year, time.month, time.day)
            (components.hour, components.minute, components.second) = (time.hours, time.minutes, time.seconds)
        } else {
            let time = try GeneralizedTime(derEncoded: node)
            (components.year, components.month, components.day) = (time.year, time.month, time.day)
            (components.hour, components.minute, components.second) = (time.hours, time.minutes, time.seconds)
        }
        guard let date = utcCalendar.date(from: components) else { throw PKIError.invalidCRL("invalid time") }
        return date
    }

    private static func serializeTime(_ date: Date, into coder: inout DER.Serializer) throws {
        let c = utcCalendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        // RFC 5280 §5.1.2.4: UTCTime through 2049, GeneralizedTime from 2050.
        if c.year! < 2050 {
            try coder.serialize(
                UTCTime(year: c.year!, month: c.month!, day: c.day!, hours: c.hour!, minutes: c.minute!, seconds: c.second!))
        } else {
            try coder.serialize(
                GeneralizedTime(
                    year: c.year!, month: c.month!, day: c.day!, hours: c.hour!, minutes: c.minute!, seconds: c.second!,
                    fractionalSeconds: 0))
        }
    }

    private static func serializeAlgorithm(
        _ oid: ASN1ObjectIdentifier, algorithm: Certificate.SignatureAlgorithm, into coder: inout DER.Serializer
    ) throws {
        try coder.appendConstructedNode(identifier: .sequence) { sequence in
            try sequence.serialize(oid)
            let rsa: [Certificate.SignatureAlgorithm] = [.sha256WithRSAEncryption, .sha384WithRSAEncryption, .sha512WithRSAEncryption]
            if rsa.contains(algorithm) { try sequence.serialize(ASN1Null()) }
        }
    }

    private static func parseReason(_ extensionsNode: ASN1Node) throws -> RevocationReason? {
        var reason: RevocationReason?
        try forEachExtension(in: extensionsNode, processed: [.crlReason, .invalidityDate]) { oid, value in
            guard oid == .crlReason else { return }
            let inner = try DER.parse(try ASN1OctetString(derEncoded: value).bytes)
            // CRLReason is an ENUMERATED of 0...10: one content byte. Anything else names no reason.
            guard inner.identifier == .enumerated, case .primitive(let content) = inner.content, content.count == 1
            else { return }
            reason = RevocationReason(rawValue: Int(content[content.startIndex]))
        }
        return reason
    }

    private static func parseCRLNumber(_ tagged: ASN1Node) throws -> [UInt8]? {
        guard case .constructed(let children) = tagged.content, let extensionsNode = children.first(where: { _ in true })
        else { return nil }
        var number: [UInt8]?
        try forEachExtension(in: extensionsNode, processed: [.crlNumber, ASN1ObjectIdentifier.X509ExtensionID.authorityKeyIdentifier]) { oid, value in
            guard oid == .crlNumber else { return }
            number = Array(try ArraySlice<UInt8>(derEncoded: DER.parse(try ASN1OctetString(derEncoded: value).bytes)))
        }
        return number
    }

    /// Calls `body` with each extension's identifier and value. A critical extension not in `processed` makes the
    /// whole CRL unusable (RFC 5280 §5.2): a delta CRL (delta CRL indicator), a CRL covering only part of the
    /// issuer's certificates (issuing distribution point) or an indirect CRL entry (certificate issuer) read
    /// as the issuer's full CRL could un-revoke certificates.
    private static func forEachExtension(
        in extensionsNode: ASN1Node, processed: Set<ASN1ObjectIdentifier>,
        _ body: (ASN1ObjectIdentifier, ASN1Node) throws -> Void
    ) throws {
        try DER.sequence(extensionsNode, identifier: .sequence) { extensions in
            while let ext = extensions.next() {
                try DER.sequence(ext, identifier: .sequence) { fields in
                    guard let oidNode = fields.next() else { return }
                    let oid = try ASN1ObjectIdentifier(derEncoded: oidNode)
                    var valueNode = fields.next()
                    if let criticality = valueNode, criticality.identifier == .boolean {
                        if try Bool(derEncoded: criticality), !processed.contains(oid) {
                            throw PKIError.invalidCRL(
                                "critical extension \(oid) that Portcullis does not process (RFC 5280 §5.2: such a CRL "
                                    + "cannot stand for the issuer's full CRL); publish a full CRL without it")
                        }
                        valueNode = fields.next()
                    }
                    guard let valueNode else { return }
                    try body(oid, valueNode)
                }
            }
        }
    }

    private static let algorithmOIDs: [(Certificate.SignatureAlgorithm, ASN1ObjectIdentifier)] = [
        (.ecdsaWithSHA256, [1, 2, 840, 10045, 4, 3, 2]),
        (.ecdsaWithSHA384, [1, 2, 840, 10045, 4, 3, 3]),
        (.ecdsaWithSHA512, [1, 2, 840, 10045, 4, 3, 4]),
        (.sha256WithRSAEncryption, [1, 2, 840, 113549, 1, 1, 11]),
        (.sha384WithRSAEncryption, [1, 2, 840, 113549, 1, 1, 12]),
        (.sha512WithRSAEncryption, [1, 2, 840, 113549, 1, 1, 13]),
        (.ed25519, [1, 3, 101, 112]),
    ]

    private static func oid(for algorithm: Certificate.SignatureAlgorithm) -> ASN1ObjectIdentifier? {
        algorithmOIDs.first { $0.0 == algorithm }?.1
    }

    private static func algorithm(for oid: ASN1ObjectIdentifier) -> Certificate.SignatureAlgorithm? {
        algorithmOIDs.first { $0.1 == oid }?.0
    }
}

extension ASN1ObjectIdentifier {
    static let crlNumber: ASN1ObjectIdentifier = [2, 5, 29, 20]
    static let crlReason: ASN1ObjectIdentifier = [2, 5, 29, 21]
    static let invalidityDate: ASN1ObjectIdentifier = [2, 5, 29, 24]
}

let utcCalendar: Calendar = {
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = TimeZone(identifier: "UTC")!
    return calendar
}()
