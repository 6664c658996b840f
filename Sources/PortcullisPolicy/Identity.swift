/// A verified client, named by the identity-mapping rule that matched its certificate.
public struct Identity: Sendable, Hashable {
    public var name: String
    public var groups: [String]
    /// The index of the mapping rule that produced this identity, for explanations.
    public var mappingRule: String
    public var certificate: CertificateFacts

    public init(name: String, groups: [String] = [], mappingRule: String, certificate: CertificateFacts) {
        self.name = name
        self.groups = groups
        self.mappingRule = mappingRule
        self.certificate = certificate
    }
}
