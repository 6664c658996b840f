import Foundation
import FuzzDriver
import FuzzSupport
import PortcullisPolicy
import X509

/// From a client certificate's bytes to the identity admission gives it: `Certificate(derEncoded:)`, the
/// facts the policy layer keeps (`CertificateFacts`), the example policy's identity mapping and the
/// permissions and decisions that follow. An input that is no certificate is read instead as the text fields
/// a certificate could carry, which reach the mapping rules' glob and template through rules made from the
/// input too. No identity name may ever fail `Identity.problem(withName:)`, a certificate's name must never
/// change the shape of a topic grant, and glob capture and template expansion must do what their documentation
/// says.
enum ExamplePolicy {
    /// `policies/` of this checkout, as `portcullis serve --dev` loads it.
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("policies").path

    static let policies: PolicySet = {
        do {
            return try PolicySet.load(directory: directory)
        } catch {
            fatalError("the example policy in \(directory) does not load: \(error)")
        }
    }()

    /// Each publish and subscribe pattern of an allow rule, by shape: what any grant substituted from it
    /// must look like.
    static let grantShapes: Set<[LevelShape]> = Set(
        policies.rules.filter { $0.effect == .allow }.flatMap { $0.publish + $0.subscribe }.map(shape))

    static let routes = ["/v1/echo", "/v1/messages"]
    static let origins: [String?] = [nil, "https://localhost:8443", "https://evil.example"]
    static let gatewayOrigins = OriginMatcher(["https://localhost:8443"])
}

func isLowercaseHex(_ text: String) -> Bool {
    text.utf8.allSatisfy { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains($0) }
}

/// `Identity.problem(withName:)` keeps the promises its documentation makes about the names it accepts.
func checkNameRule(_ name: String) {
    guard Identity.problem(withName: name) == nil else { return }
    require(!name.isEmpty && name.utf8.count <= Identity.maximumNameBytes, "an accepted identity name is empty or too long")
    require(
        name.precomposedStringWithCanonicalMapping.utf8.elementsEqual(name.utf8),
        "an accepted identity name is not in NFC: \(String(reflecting: name))")
    require(
        !name.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) || $0.value == 0x2028 || $0.value == 0x2029 },
        "an accepted identity name has a control character: \(String(reflecting: name))")
}

/// The facts through the example policy, as admission takes them.
func checkExamplePolicy(_ facts: CertificateFacts) {
    let policies = ExamplePolicy.policies
    guard let identity = policies.identify(facts) else {
        require(!policies.mappingFailure(facts).isEmpty, "a certificate without identity has no explanation")
        return
    }
    require(
        Identity.problem(withName: identity.name) == nil,
        "the example policy gives the invalid identity name \(String(reflecting: identity.name))")
    for route in ExamplePolicy.routes {
        for origin in ExamplePolicy.origins {
            _ = policies.decide(identity: identity, route: route, origin: origin, gatewayOrigins: ExamplePolicy.gatewayOrigins)
            let permissions = policies.permissions(for: identity, route: route, origin: origin)
            for grant in permissions.publish + permissions.subscribe {
                require(
                    ExamplePolicy.grantShapes.contains(shape(grant)),
                    "identity \(String(reflecting: identity.name)) turns a grant into \(String(reflecting: grant))")
            }
        }
    }
}

/// A fingerprint as an operator pastes it from `openssl x509 -fingerprint -sha256`.
func pasted(_ fingerprint: String) -> String {
    var pairs: [String] = []
    var rest = fingerprint.uppercased()[...]
    while !rest.isEmpty {
        pairs.append(String(rest.prefix(2)))
        rest = rest.dropFirst(2)
    }
    return "sha256 Fingerprint=" + pairs.joined(separator: ":")
}

func checkCertificate(_ certificate: Certificate, derBytes: [UInt8]) {
    let facts = CertificateFacts(certificate: certificate, derBytes: derBytes)
    require(facts.fingerprint.utf8.count == 64 && isLowercaseHex(facts.fingerprint), "fingerprint \(facts.fingerprint)")
    require(facts.serial.utf8.count % 2 == 0 && isLowercaseHex(facts.serial), "serial \(facts.serial)")
    let commonNames = certificate.subject.flatMap { $0 }.filter { $0.type == .RDNAttributeType.commonName }
    require((facts.commonName != nil) == (commonNames.count == 1), "a common name kept from \(commonNames.count) CNs")
    // A pinned fingerprint, pasted as an operator would, names exactly this certificate.
    let pin = IdentityMappingRule(source: .fingerprint, match: pasted(facts.fingerprint), identity: "pinned-device")
    require(
        PolicySet(mappings: [pin], rules: []).identify(facts)?.name == "pinned-device",
        "the certificate's own pasted fingerprint does not map it")
    for name in [facts.commonName].compactMap({ $0 }) + facts.sanURIs + facts.sanDNSNames + facts.sanEmails {
        checkNameRule(name)
    }
    checkExamplePolicy(facts)
}

/// `template` with `{value}` and `{*}` replaced in one pass, as `IdentityMappingRule.identity` documents.
func expanded(_ template: String, value: String, captured: String) -> String {
    var result = ""
    var rest = template[...]
    while let first = rest.first {
        if rest.hasPrefix("{value}") {
            result += value
            rest = rest.dropFirst(7)
        } else if rest.hasPrefix("{*}") {
            result += captured
            rest = rest.dropFirst(3)
        } else {
            result.append(first)
            rest = rest.dropFirst()
        }
    }
    return result
}

/// The mapping rules' glob and template on client-chosen text: `fields` are a common name, a URI SAN, a DNS
/// SAN, a rule's `match` and its `identity`.
func checkMappingRules(_ fields: [String]) {
    let field = { (index: Int) in index < fields.count ? fields[index] : "" }
    let (commonName, uri, dns, match, template) = (field(0), field(1), field(2), field(3), field(4))
    let facts = CertificateFacts(
        commonName: commonName.isEmpty ? nil : commonName, subject: "CN=\(commonName)", sanURIs: [uri],
        sanDNSNames: [dns], fingerprint: String(repeating: "ab", count: 32), serial: "01")
    for value in [commonName, uri, dns, match, template] { checkNameRule(value) }
    checkExamplePolicy(facts)

    // The whole field: the name is the common name exactly, when that is a valid name.
    let whole = PolicySet(mappings: [IdentityMappingRule(source: .commonName)], rules: []).identify(facts)
    require(
        whole?.name == (Identity.problem(withName: commonName) == nil ? commonName : nil),
        "{value} maps \(String(reflecting: commonName)) to \(String(reflecting: whole?.name))")

    // A glob with one `*`: what it captured, put back in its place, is the field again, and holds no `/`.
    if match.utf8.filter({ $0 == UInt8(ascii: "*") }).count == 1 {
        let rule = IdentityMappingRule(source: .sanURI, match: match, identity: "{*}")
        if let captured = PolicySet(mappings: [rule], rules: []).identify(facts)?.name {
            let star = match.utf8.firstIndex(of: UInt8(ascii: "*"))!
            let rebuilt = Array(match.utf8[..<star]) + Array(captured.utf8) + Array(match.utf8[match.utf8.index(after: star)...])
            require(rebuilt.elementsEqual(uri.utf8), "glob \(String(reflecting: match)) captured \(String(reflecting: captured)) from \(String(reflecting: uri))")
            require(!captured.utf8.contains(UInt8(ascii: "/")), "glob \(String(reflecting: match)) captured a '/'")
        }
    }

    // The template, with no glob: substituted once, whatever braces the field holds.
    let templated = PolicySet(mappings: [IdentityMappingRule(source: .sanDNS, identity: template)], rules: []).identify(facts)
    if let name = templated?.name {
        require(Identity.problem(withName: name) == nil, "template \(String(reflecting: template)) gives an invalid name")
        require(
            name.utf8.elementsEqual(expanded(template, value: dns, captured: "").utf8),
            "template \(String(reflecting: template)) expands \(String(reflecting: dns)) to \(String(reflecting: name))")
    }

    // A pasted fingerprint maps exactly when it normalises to the certificate's.
    let pinned = PolicySet(
        mappings: [IdentityMappingRule(source: .fingerprint, match: match, identity: "pinned-device")], rules: []
    ).identify(facts)
    require(
        (pinned != nil) == (normalizedFingerprint(match) == facts.fingerprint),
        "fingerprint pin \(String(reflecting: match)) disagrees with normalizedFingerprint")
}

func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: count))
    if let certificate = try? Certificate(derEncoded: bytes) {
        checkCertificate(certificate, derBytes: bytes)
        return 0
    }
    // Certificate strings reach the policy layer as Swift strings: valid Unicode, whatever the bytes were.
    let fields = bytes.split(separator: 0, maxSplits: 4, omittingEmptySubsequences: false)
        .map { String(decoding: $0, as: UTF8.self) }
    checkMappingRules(fields)
    return 0
}

// Loaded now rather than on the first input, so that a policy that does not load fails at start.
_ = ExamplePolicy.grantShapes

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
