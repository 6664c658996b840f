import Crypto
import Foundation
import SwiftASN1
import X509

#if canImport(Glibc)
import Glibc
#endif

/// The easy-rsa-like `pki/` directory (see `pki/README.md`) and every operation on it.
///
/// Each operation takes an exclusive lock on `pki/.lock`, finishes any transaction a crash interrupted,
/// checks all its input, and only then writes, through one ``FileTransaction``: concurrent CLI runs are
/// serialised and a refused or failed command writes nothing.
public struct PKIDirectory: Sendable {
    public let path: String

    public init(path: String) {
        self.path = path
    }

    // MARK: Layout

    /// The root CA certificate: the trust anchor the gateway's client CA bundle holds.
    public var caCertificatePath: String { "\(path)/ca.crt" }
    public var caKeyPath: String { "\(path)/private/ca.key" }
    /// The issuing CA when the PKI was made with `--intermediate`.
    public var issuingCertificatePath: String { "\(path)/issuing-ca.crt" }
    public var issuingKeyPath: String { "\(path)/private/issuing-ca.key" }
    public var crlPath: String { "\(path)/crl.pem" }
    public var inventoryPath: String { "\(path)/inventory.json" }
    public var profilesPath: String { "\(path)/profiles.yaml" }
    public func certificatePath(_ name: String) -> String { "\(path)/issued/\(name).crt" }
    /// The leaf followed by the issuing CA(s) up to, not including, the root: what a TLS peer presents.
    public func chainPath(_ name: String) -> String { "\(path)/issued/\(name).chain.pem" }
    public func keyPath(_ name: String) -> String { "\(path)/private/\(name).key" }
    public func requestPath(_ name: String) -> String { "\(path)/reqs/\(name).csr" }

    public var hasCA: Bool { FileManager.default.fileExists(atPath: caCertificatePath) }
    public var hasIntermediate: Bool { FileManager.default.fileExists(atPath: issuingCertificatePath) }

    // MARK: Locking

    /// Runs `body` holding the directory's exclusive lock, after completing any interrupted transaction.
    public func withLock<T>(_ body: () throws -> T) throws -> T {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw PKIError.invalid("\(path): no such PKI directory (create one with 'portcullis pki init')")
        }
        let fd = open("\(path)/.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AtomicFile.WriteError(path: "\(path)/.lock", operation: "open", code: errno) }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw AtomicFile.WriteError(path: "\(path)/.lock", operation: "lock", code: errno) }
        }
        defer { flock(fd, LOCK_UN) }
        try FileTransaction.recover(in: path)
        return try body()
    }

    // MARK: Reading

    public func loadInventory() throws -> Inventory {
        guard hasCA else {
            throw PKIError.invalid("\(path): no CA here (create one with 'portcullis pki init')")
        }
        guard let data = FileManager.default.contents(atPath: inventoryPath) else {
            throw PKIError.invalid("\(path): not a Portcullis PKI (it has a CA but no inventory.json)")
        }
        do {
            return try Inventory.decode(data)
        } catch {
            throw PKIError.unreadable(path: inventoryPath, reason: "not a valid inventory (\(error))")
        }
    }

    public func loadProfiles() throws -> CertificateProfiles {
        try CertificateProfiles.load(path: profilesPath)
    }

    /// The root CA; needs its key (which an offline root does not have here).
    public func loadCA() throws -> CertificateAuthority {
        try loadAuthority(certificate: caCertificatePath, key: caKeyPath)
    }

    /// The CA that signs certificates and CRLs (the intermediate when there is one), and the CA certificates
    /// a chain file carries after the leaf.
    public func loadIssuer() throws -> (authority: CertificateAuthority, chain: [Certificate]) {
        if hasIntermediate {
            let issuing = try loadAuthority(certificate: issuingCertificatePath, key: issuingKeyPath)
            return (issuing, [issuing.certificate])
        }
        return (try loadCA(), [])
    }

    private func loadAuthority(certificate certificatePath: String, key keyPath: String) throws -> CertificateAuthority {
        guard let certificate = try readPEMCertificates(path: certificatePath).first else {
            throw PKIError.unreadable(path: certificatePath, reason: "no certificate")
        }
        let key: Certificate.PrivateKey
        do {
            key = try Certificate.PrivateKey(pemEncoded: try readText(keyPath))
        } catch let error as PKIError {
            throw error
        } catch {
            throw PKIError.unreadable(path: keyPath, reason: "not a PEM private key")
        }
        guard key.publicKey == certificate.publicKey else {
            throw PKIError.unreadable(path: keyPath, reason: "the key does not match \(certificatePath)")
        }
        return CertificateAuthority(certificate: certificate, privateKey: key)
    }

    private func saveInventory(_ inventory: Inventory, in transaction: inout FileTransaction) throws {
        transaction.write(try inventory.encoded(), to: inventoryPath)
    }

    private func prepareLayout() throws {
        try AtomicFile.makeDirectory(path)
        try AtomicFile.makeDirectory("\(path)/private", mode: 0o700)
        try AtomicFile.makeDirectory("\(path)/issued")
        try AtomicFile.makeDirectory("\(path)/reqs")
    }
}

// MARK: - Operations

extension PKIDirectory {
    /// What `pki init` made.
    public struct InitResult: Sendable {
        public var root: Certificate
        public var intermediate: Certificate?
    }

    /// Creates a root CA (and with `intermediate`, an issuing CA signed by it). Refuses to overwrite one.
    @discardableResult
    public func initialize(
        name: String, key algorithm: KeyAlgorithm = .p256, intermediate: Bool = false, now: Date = Date()
    ) throws -> InitResult {
        try AtomicFile.makeDirectory(path)
        return try withLock {
            guard !hasCA else {
                throw PKIError.invalid("\(path) already has a CA (\(caCertificatePath)); refusing to overwrite it")
            }
            guard !name.trimmingCharacters(in: .whitespaces).isEmpty else { throw PKIError.invalid("the CA name is empty") }
            try prepareLayout()
            let root = try CertificateAuthority.makeRoot(name: name, key: try algorithm.generate(), now: now)
            var transaction = FileTransaction()
            transaction.write(try root.privateKey.serializeAsPEM(), to: caKeyPath, mode: 0o600)
            transaction.write(try root.certificate.serializeAsPEM(), to: caCertificatePath)
            var issuing: CertificateAuthority?
            if intermediate {
                let made = try root.makeIntermediate(name: "\(name) Issuing CA", key: try algorithm.generate(), now: now)
                transaction.write(try made.privateKey.serializeAsPEM(), to: issuingKeyPath, mode: 0o600)
                transaction.write(try made.certificate.serializeAsPEM(), to: issuingCertificatePath)
                issuing = made
            }
            try saveInventory(Inventory(), in: &transaction)
            try transaction.commit(in: path)
            return InitResult(root: root.certificate, intermediate: issuing?.certificate)
        }
    }

    /// What to issue: a name, a profile, and optionally a lifetime other than the profile's default.
    public struct IssueRequest: Sendable {
        public var name: String
        public var profile: CertificateProfile
        public var days: Int?
        public var key: KeyAlgorithm
        public var autoRenew: Bool

        public init(name: String, profile: CertificateProfile, days: Int? = nil, key: KeyAlgorithm = .p256, autoRenew: Bool = false) {
            self.name = name
            self.profile = profile
            self.days = days
            self.key = key
            self.autoRenew = autoRenew
        }
    }

    /// Issues a certificate with a new key: `issued/NAME.crt`, `issued/NAME.chain.pem`, `private/NAME.key` (0600).
    @discardableResult
    public func issue(_ request: IssueRequest, now: Date = Date()) throws -> InventoryEntry {
        try withLock {
            var inventory = try loadInventory()
            try Validation.name(request.name)
            guard !inventory.entries.contains(where: { $0.name == request.name }) else {
                throw PKIError.invalid("'\(request.name)' already exists (use 'pki renew' or 'pki rotate', or another name)")
            }
            try Validation.profile(request.profile)
            let key = try request.key.generate()
            var transaction = FileTransaction()
            let entry = try record(
                name: request.name, publicKey: key.publicKey, profile: request.profile, days: request.days,
                keyAlgorithm: request.key.rawValue, autoRenew: request.autoRenew, privateKey: key, now: now,
                inventory: &inventory, transaction: &transaction)
            try transaction.commit(in: path)
            return entry
        }
    }

    /// Makes a key and a CSR as a device would (`private/NAME.key`, `reqs/NAME.csr`): for trying the CSR flow.
    public func createRequest(name: String, key algorithm: KeyAlgorithm = .p256) throws -> String {
        try withLock {
            try Validation.name(name)
            guard !FileManager.default.fileExists(atPath: requestPath(name)),
                !FileManager.default.fileExists(atPath: keyPath(name))
            else { throw PKIError.invalid("a key or request for '\(name)' already exists") }
            try prepareLayout()
            let key = try algorithm.generate()
            let csr = try CertificateSigningRequest(
                version: .v1, subject: try DistinguishedName { CommonName(name) }, privateKey: key,
                attributes: CertificateSigningRequest.Attributes())
            var transaction = FileTransaction()
            transaction.write(try key.serializeAsPEM(), to: keyPath(name), mode: 0o600)
            transaction.write(try csr.serializeAsPEM(), to: requestPath(name))
            try transaction.commit(in: path)
            return requestPath(name)
        }
    }

    /// Signs a device's CSR: the key never leaves the device. The CSR's own signature must verify; the subject
    /// and extensions come from `name` and `profile`, never from what the CSR asks for.
    @discardableResult
    public func sign(
        requestPEM: String, name: String, profile: CertificateProfile, days: Int? = nil, autoRenew: Bool = false,
        now: Date = Date()
    ) throws -> InventoryEntry {
        try withLock {
            var inventory = try loadInventory()
            try Validation.name(name)
            guard !inventory.entries.contains(where: { $0.name == name }) else {
                throw PKIError.invalid("'\(name)' already exists (use 'pki renew' or 'pki rotate', or another name)")
            }
            try Validation.profile(profile)
            let csr: CertificateSigningRequest
            do {
                csr = try CertificateSigningRequest(pemEncoded: requestPEM)
            } catch {
                throw PKIError.invalid("not a PEM certificate signing request (\(error))")
            }
            guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
                throw PKIError.invalid("the CSR's signature does not verify: it was not made with the key it carries")
            }
            var transaction = FileTransaction()
            let entry = try record(
                name: name, publicKey: csr.publicKey, profile: profile, days: days,
                keyAlgorithm: Validation.keyAlgorithmName(csr.publicKey), autoRenew: autoRenew, privateKey: nil,
                now: now, inventory: &inventory, transaction: &transaction)
            try transaction.commit(in: path)
            return entry
        }
    }

    /// Renews `name`: the same subject, SANs and profile with a new validity (the original lifetime); with
    /// `newKey`, a new key too. The previous certificate is marked superseded (not revoked).
    @discardableResult
    public func renew(name: String, newKey: Bool = false, now: Date = Date()) throws -> (new: InventoryEntry, old: InventoryEntry) {
        try withLock {
            try replace(name: name, newKey: newKey, revokeAfter: nil, now: now)
        }
    }

    /// Rotates `name`: a new key and certificate; the previous certificate is superseded and revoked once
    /// `grace` has passed (at once when `grace` is 0), the CRL updated.
    @discardableResult
    public func rotate(name: String, grace: TimeInterval = 7 * 86400, now: Date = Date()) throws
        -> (new: InventoryEntry, old: InventoryEntry)
    {
        try withLock {
            try replace(name: name, newKey: true, revokeAfter: now.addingTimeInterval(grace), now: now)
        }
    }

    private func replace(name: String, newKey: Bool, revokeAfter: Date?, now: Date) throws
        -> (new: InventoryEntry, old: InventoryEntry)
    {
        var inventory = try loadInventory()
        guard let index = inventory.entries.lastIndex(where: { $0.name == name && $0.state == .active }) else {
            if inventory.entries.contains(where: { $0.name == name && $0.state == .revoked }) {
                throw PKIError.invalid("'\(name)' is revoked; issue a new certificate under a new name")
            }
            throw PKIError.invalid("no active certificate named '\(name)'")
        }
        let old = inventory.entries[index]
        let certificate = try Certificate(pemEncoded: old.certificatePEM)
        let profile = try Validation.profile(of: certificate)
        let lifetimeDays = max(1, Int((old.notAfter.timeIntervalSince(old.notBefore) / 86400).rounded()))
        var transaction = FileTransaction()
        let key = newKey ? try (KeyAlgorithm(rawValue: old.keyAlgorithm) ?? .p256).generate() : nil
        // Without a new key the certificate keeps its public key: for a CSR-signed device, the key it holds.
        inventory.entries[index].state = .superseded
        inventory.entries[index].supersededAt = now
        inventory.entries[index].revokeAfter = revokeAfter
        let entry = try record(
            name: name, publicKey: key?.publicKey ?? certificate.publicKey, profile: profile, days: lifetimeDays,
            keyAlgorithm: old.keyAlgorithm, autoRenew: old.autoRenew, privateKey: key, now: now,
            inventory: &inventory, transaction: &transaction)
        if revokeAfter.map({ $0 <= now }) == true {
            try revokeDue(now: now, inventory: &inventory, transaction: &transaction)
        }
        // record() saved the inventory before the revocation; save the final one.
        transaction.replaceInventory(try inventory.encoded(), at: inventoryPath)
        try transaction.commit(in: path)
        return (entry, inventory.entries[index])
    }

    /// Revokes the active certificate of `name` (or the certificate with `serial`) and regenerates the CRL.
    @discardableResult
    public func revoke(name: String?, serial: String?, reason: RevocationReason = .unspecified, now: Date = Date())
        throws -> InventoryEntry
    {
        try withLock {
            var inventory = try loadInventory()
            let index: Int
            if let serial {
                let wanted = serial.lowercased().replacingOccurrences(of: ":", with: "")
                guard let found = inventory.entries.firstIndex(where: { $0.serial == wanted }) else {
                    throw PKIError.invalid("no certificate with serial \(serial) in the inventory")
                }
                index = found
            } else if let name {
                guard let found = inventory.entries.lastIndex(where: { $0.name == name && $0.state != .revoked }) else {
                    throw PKIError.invalid(
                        inventory.entries.contains { $0.name == name }
                            ? "'\(name)' is already revoked" : "no certificate named '\(name)'")
                }
                index = found
            } else {
                throw PKIError.invalid("name a certificate or give --serial")
            }
            guard inventory.entries[index].state != .revoked else {
                throw PKIError.invalid("serial \(inventory.entries[index].serial) is already revoked")
            }
            inventory.entries[index].state = .revoked
            inventory.entries[index].revokedAt = now
            inventory.entries[index].revocationReason = reason.name
            var transaction = FileTransaction()
            try revokeDue(now: now, inventory: &inventory, transaction: &transaction)
            try transaction.commit(in: path)
            return inventory.entries[index]
        }
    }

    /// Revokes superseded certificates whose grace period is over, and writes a fresh CRL.
    /// - Returns: the CRL and the certificates this call revoked.
    @discardableResult
    public func regenerateCRL(validity: TimeInterval = 7 * 86400, now: Date = Date()) throws
        -> (crl: CertificateRevocationList, revoked: [InventoryEntry])
    {
        try withLock {
            var inventory = try loadInventory()
            var transaction = FileTransaction()
            let (crl, revoked) = try revokeDue(validity: validity, now: now, inventory: &inventory, transaction: &transaction)
            try transaction.commit(in: path)
            return (crl, revoked)
        }
    }

    /// Marks due superseded certificates revoked, then signs the CRL of every revoked one into `transaction`
    /// together with the inventory.
    @discardableResult
    private func revokeDue(
        validity: TimeInterval = 7 * 86400, now: Date, inventory: inout Inventory, transaction: inout FileTransaction
    ) throws -> (CertificateRevocationList, [InventoryEntry]) {
        var revokedNow: [InventoryEntry] = []
        for index in inventory.entries.indices {
            let entry = inventory.entries[index]
            if entry.state == .superseded, let due = entry.revokeAfter, due <= now {
                inventory.entries[index].state = .revoked
                inventory.entries[index].revokedAt = now
                inventory.entries[index].revocationReason = RevocationReason.superseded.name
                revokedNow.append(inventory.entries[index])
            }
        }
        inventory.crlNumber += 1
        let (issuer, _) = try loadIssuer()
        let entries = inventory.entries.filter { $0.state == .revoked }.map {
            CertificateRevocationList.Entry(
                serial: Validation.bytes(hex: $0.serial), revocationDate: $0.revokedAt ?? now,
                reason: $0.revocationReason.flatMap(RevocationReason.init(name:)))
        }
        let crl = try CertificateRevocationList.sign(
            entries: entries, by: issuer, number: inventory.crlNumber, thisUpdate: now,
            nextUpdate: now.addingTimeInterval(validity))
        transaction.write(crl.pemDocument.pemString + "\n", to: crlPath)
        transaction.replaceInventory(try inventory.encoded(), at: inventoryPath)
        return (crl, revokedNow)
    }

    /// Issues the certificate and puts its files and inventory entry into `transaction`.
    private func record(
        name: String, publicKey: Certificate.PublicKey, profile: CertificateProfile, days: Int?, keyAlgorithm: String,
        autoRenew: Bool, privateKey: Certificate.PrivateKey?, now: Date, inventory: inout Inventory,
        transaction: inout FileTransaction
    ) throws -> InventoryEntry {
        let defaults = try loadProfiles().defaults(for: profile.name)
        let lifetime = days ?? defaults.days
        let (issuer, chain) = try loadIssuer()
        let notAfter = now.addingTimeInterval(TimeInterval(lifetime) * 86400)
        guard lifetime > 0 else { throw PKIError.invalid("--days must be at least 1, not \(lifetime)") }
        guard notAfter <= issuer.certificate.notValidAfter else {
            throw PKIError.invalid(
                "\(lifetime) days would outlive the issuing CA, which expires "
                    + ISO8601DateFormatter().string(from: issuer.certificate.notValidAfter))
        }
        var serial = SerialNumbers.random()
        while inventory.entries.contains(where: { $0.serial == hexString(serial.bytes) }) { serial = SerialNumbers.random() }
        let certificate = try issuer.issue(
            commonName: name, publicKey: publicKey, profile: profile, notValidAfter: notAfter, now: now,
            serialNumber: serial)
        let pem = try certificate.serializeAsPEM().pemString + "\n"
        var chainPEM = pem
        for ca in chain { chainPEM += try ca.serializeAsPEM().pemString + "\n" }
        try prepareLayout()
        if let privateKey { transaction.write(try privateKey.serializeAsPEM(), to: keyPath(name), mode: 0o600) }
        transaction.write(pem, to: certificatePath(name))
        transaction.write(chainPEM, to: chainPath(name))
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        let lifetimeSeconds = certificate.notValidAfter.timeIntervalSince(certificate.notValidBefore)
        let entry = InventoryEntry(
            name: name, serial: hexString(certificate.serialNumber.bytes), profile: profile.name,
            subject: certificate.subject.description, sans: Validation.sans(of: certificate),
            fingerprint: hexString(SHA256.hash(data: serializer.serializedBytes)), keyAlgorithm: keyAlgorithm,
            issuedAt: now, notBefore: certificate.notValidBefore, notAfter: certificate.notValidAfter,
            renewAfter: certificate.notValidBefore.addingTimeInterval(lifetimeSeconds * defaults.renewAt),
            state: .active, autoRenew: autoRenew, certificatePEM: pem)
        inventory.entries.append(entry)
        transaction.replaceInventory(try inventory.encoded(), at: inventoryPath)
        return entry
    }
}

extension FileTransaction {
    /// Sets the inventory content, replacing an earlier write of it in the same transaction.
    mutating func replaceInventory(_ text: String, at path: String) {
        removeWrites(to: path)
        write(text, to: path)
    }
}

extension FileTransaction {
    fileprivate mutating func write(_ document: PEMDocument, to path: String, mode: mode_t = 0o644) {
        write(document.pemString + "\n", to: path, mode: mode)
    }
}

extension PKIDirectory {
    /// Creates the development PKI when the directory has no CA: a CA, a server certificate for localhost,
    /// 127.0.0.1 and ::1 (auto-renewed by `pki watch --renew`), and the `demo-device` and `demo-operator`
    /// client certificates.
    /// Existing material is reused as it is; a missing certificate is issued again.
    /// - Returns: what was made, for the start-up message and the audit log.
    public func bootstrapDevelopment(now: Date = Date()) throws -> (createdCA: Bool, issued: [InventoryEntry]) {
        var createdCA = false
        if !hasCA {
            try initialize(name: "Portcullis Development CA", now: now)
            createdCA = true
        }
        let wanted: [IssueRequest] = [
            IssueRequest(name: "server", profile: .server(dnsNames: ["localhost"], ipAddresses: ["127.0.0.1", "::1"]), autoRenew: true),
            IssueRequest(name: "demo-device", profile: .client()),
            IssueRequest(name: "demo-operator", profile: .client()),
        ]
        var issued: [InventoryEntry] = []
        // Only names never issued: a demo certificate the admin revoked stays revoked (and refused), rather than
        // making every later start fail on the name.
        for request in wanted where try !loadInventory().entries.contains(where: { $0.name == request.name }) {
            issued.append(try issue(request, now: now))
        }
        return (createdCA, issued)
    }
}
