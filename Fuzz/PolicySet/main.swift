import FuzzDriver
import FuzzSupport
import Glibc
import PortcullisPolicy
import PortcullisProtocol
import PortcullisYAML

/// The policy loader (`PolicySet.parse`, behind `PolicySet.load` at start and on every reload) on YAML text.
/// Any input may be refused, with diagnostics; none may crash, trap or hang. A policy set that loads must hold
/// what the loader promises to check (rule names, routes, identity names, topic patterns, fingerprint pins),
/// and give certificates only valid identity names and grants of the shape its patterns have.
enum Certificates {
    /// Certificates as the policy layer sees them, from the ordinary (the example's demo device, a SPIFFE
    /// device, the operator) to names chosen to break a template or a topic: braces, topic wildcards and
    /// separators, a name that is not NFC.
    static let all: [CertificateFacts] = [
        facts(commonName: "demo-device", dns: ["demo-device.example.test"]),
        facts(commonName: "device-42", uris: ["spiffe://example.test/device/42"]),
        facts(commonName: "demo-operator", emails: ["operator@example.test"]),
        facts(commonName: "{*}{value}{identity}", uris: ["spiffe://example.test/device/{cn}"]),
        facts(commonName: "a/+/#", uris: ["spiffe://example.test/device/+"], dns: ["#.example.test"]),
        facts(commonName: "cafe\u{301}", uris: ["spiffe://example.test/device/cafe\u{301}"]),
        facts(commonName: nil, uris: ["spiffe://example.test/device/a/b"]),
    ]

    private static func facts(
        commonName: String?, uris: [String] = [], dns: [String] = [], emails: [String] = []
    ) -> CertificateFacts {
        CertificateFacts(
            commonName: commonName, subject: commonName.map { "CN=\($0)" } ?? "", sanURIs: uris, sanDNSNames: dns,
            sanEmails: emails, fingerprint: String(repeating: "ab", count: 32), serial: "01")
    }

    static let routes = ["/v1/echo", "/v1/messages", "/"]
    static let origins: [String?] = [nil, "https://localhost:8443"]
}

/// A topic pattern with `{identity}` and `{cn}` replaced once by `x`, as the loader probes a pattern.
func probe(_ pattern: String) -> String {
    var result = ""
    var rest = pattern[...]
    while let first = rest.first {
        if rest.hasPrefix("{identity}") {
            result += "x"
            rest = rest.dropFirst(10)
        } else if rest.hasPrefix("{cn}") {
            result += "x"
            rest = rest.dropFirst(4)
        } else {
            result.append(first)
            rest = rest.dropFirst()
        }
    }
    return result
}

func checkLoaded(_ set: PolicySet, text: String) {
    var names: Set<String> = []
    for rule in set.rules {
        require(!rule.name.isEmpty, "a rule without a name loaded")
        require(names.insert(rule.name).inserted, "rule name \(String(reflecting: rule.name)) loaded twice")
        require(!rule.routes.isEmpty, "rule \(rule.name) grants no route")
        require(rule.routes.allSatisfy { $0 == "*" || $0.hasPrefix("/") }, "rule \(rule.name) has a route that is no path")
        require(!rule.identities.isEmpty || !rule.groups.isEmpty, "rule \(rule.name) names nobody")
        for name in rule.identities where name != "*" {
            require(Identity.problem(withName: name) == nil, "rule \(rule.name) names the invalid identity \(String(reflecting: name))")
        }
        for pattern in rule.publish + rule.subscribe {
            let probed = probe(pattern)
            require(!probed.contains("{") && !probed.contains("}"), "pattern \(String(reflecting: pattern)) keeps an unknown variable")
            require(Topic.problem(withFilter: probed) == nil, "pattern \(String(reflecting: pattern)) is no valid filter")
        }
    }
    for mapping in set.mappings {
        if mapping.source == .fingerprint {
            require(mapping.match.flatMap(normalizedFingerprint) != nil, "a fingerprint mapping without a valid pin loaded")
        }
        require(
            (mapping.match?.filter { $0 == "*" }.count ?? 0) <= 1, "match \(String(reflecting: mapping.match)) has several '*'")
        if mapping.identity.contains("{*}") {
            require(mapping.match?.contains("*") == true, "identity \(String(reflecting: mapping.identity)) uses {*} without a glob")
        }
    }

    let grantShapes = Set(set.rules.filter { $0.effect == .allow }.flatMap { $0.publish + $0.subscribe }.map(shape))
    for facts in Certificates.all {
        guard let identity = set.identify(facts) else {
            require(!set.mappingFailure(facts).isEmpty, "a certificate without identity has no explanation")
            continue
        }
        require(
            Identity.problem(withName: identity.name) == nil,
            "the policy gives the invalid identity name \(String(reflecting: identity.name))")
        for route in Certificates.routes {
            for origin in Certificates.origins {
                _ = set.decide(identity: identity, route: route, origin: origin, gatewayOrigins: OriginMatcher(["https://localhost:8443"]))
                let permissions = set.permissions(for: identity, route: route, origin: origin)
                for grant in permissions.publish + permissions.subscribe {
                    require(
                        grantShapes.contains(shape(grant)),
                        "identity \(String(reflecting: identity.name)) turns a grant into \(String(reflecting: grant))")
                }
            }
        }
    }

    // The same file twice: its rule names are then used twice, which the loader must refuse.
    if !set.rules.isEmpty {
        let twice = try? PolicySet.parse([("a.yaml", text), ("b.yaml", text)])
        require(twice == nil, "a policy loaded twice over does not refuse its duplicate rule names")
    }
}

func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    // Policy files are read as UTF-8 text; one that is not is refused before the loader sees it.
    guard let text = String(validating: UnsafeBufferPointer(start: data, count: count), as: UTF8.self) else { return 0 }
    do {
        checkLoaded(try PolicySet.parse([("fuzz.yaml", text)]), text: text)
    } catch let error as DiagnosticsError {
        require(!error.diagnostics.isEmpty, "a policy refused without a diagnostic")
        for diagnostic in error.diagnostics {
            require(diagnostic.file == "fuzz.yaml", "a diagnostic names the file \(String(reflecting: diagnostic.file))")
            require(diagnostic.line.map { $0 >= 1 } ?? true, "a diagnostic on line \(diagnostic.line!)")
        }
    } catch {
        require(false, "the policy loader threw something else than diagnostics: \(error)")
    }
    return 0
}

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
