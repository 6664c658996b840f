import FuzzDriver
import FuzzSupport
import Glibc
import PortcullisAdmission
import PortcullisAudit
import PortcullisConfig
import PortcullisPKI
import PortcullisPolicy

// Upgrade-request validation and the admission decision after it, as the gateway makes them: a request head
// (request line and header lines, as text) through `Admission.decide`, and through the admission state machine
// from a verified handshake to the close. Any request may be refused; none may crash, trap or hang, a refusal
// has a status admission documents, an admitted request is a GET with one Host and one key on a configured
// route, and the state machine concludes every connection with exactly one record and gives back every
// session slot it took.

/// Session counts, which must be back to zero after every input.
final class Slots: SessionSlots, @unchecked Sendable {
    var open: [String: Int] = [:]
    func reserveSession(_ identity: String, limit: Int?) -> Bool {
        if let limit, open[identity, default: 0] >= limit { return false }
        open[identity, default: 0] += 1
        return true
    }
    func releaseSession(_ identity: String) { open[identity, default: 0] -= 1 }
}

enum Fixture {
    static let routes: [GatewayConfiguration.Route] = [
        .init(path: "/v1/echo", kind: .echo),
        .init(path: "/v1/mqtt", kind: .echo, subprotocols: ["mqtt"], subprotocolRequired: true),
        .init(path: "/v1/backend", kind: .upstream, upstream: .init(url: "ws://127.0.0.1:9/x")),
    ]
    static let admission = Admission(
        routes: routes,
        policies: PolicySet(
            mappings: [IdentityMappingRule(source: .commonName)],
            rules: [
                PolicyRule(name: "devices", identities: ["device-1"], routes: routes.map(\.path), allowMissingOrigin: true,
                           limits: Limits(sessions: 1)),
                PolicyRule(name: "console", identities: ["device-1"], routes: ["/v1/echo"],
                           origins: OriginMatcher(["https://console.example.test"])),
            ]),
        gatewayOrigins: OriginMatcher(["https://gateway.example.test"]), maxHeaderBytes: 2048)
    static let facts = CertificateFacts(commonName: "device-1", subject: "CN=device-1", fingerprint: "00", serial: "01")
    static let slots = Slots()
    static let environment = AdmissionEnvironment(
        admission: admission, verifier: ClientCertificateVerifier(trust: ClientTrust(roots: [])),
        verifiedChains: VerifiedChainCache(), seenIntermediates: SeenIntermediates(), sessions: slots,
        refusesWhileAuditFails: true, handshakeTimeout: 10)
}

/// The request head as text: a request line `METHOD TARGET HTTP/x.y`, then `Name: value` lines.
func request(from text: String) -> UpgradeRequest? {
    var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { $0.hasSuffix("\r") ? $0.dropLast() : $0 }
    guard !lines.isEmpty else { return nil }
    let requestLine = lines.removeFirst().split(separator: " ", maxSplits: 2)
    guard requestLine.count == 3 else { return nil }
    let version = requestLine[2].split(separator: "/").last?.split(separator: ".").compactMap { Int($0.prefix(3)) } ?? []
    let headers = lines.compactMap { line -> (name: String, value: String)? in
        guard let colon = line.firstIndex(of: ":") else { return nil }
        return (String(line[..<colon]), String(line[line.index(after: colon)...].drop { $0 == " " }))
    }
    return UpgradeRequest(
        method: String(requestLine[0]), uri: String(requestLine[1]),
        version: (version.first ?? 1, version.count > 1 ? version[1] : 1), headers: headers)
}

let statuses: Set = [400, 403, 404, 405, 426, 429, 431, 503]

func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let request = request(from: String(decoding: UnsafeBufferPointer(start: data, count: count), as: UTF8.self))
    else { return 0 }
    switch Fixture.admission.decide(request, certificate: Fixture.facts) {
    case .admit(let identity, _, let route):
        require(request.method == "GET", "admitted \(request.method)")
        require(request.values("Host").count == 1 && request.values("Sec-WebSocket-Key").count == 1, "admitted without one Host and one key")
        require(route.path == request.path, "admitted on \(route.path) for \(request.path)")
        require(identity.name == "device-1", "identity \(identity.name)")
    case .refuse(let refusal, _):
        require(statuses.contains(refusal.status), "status \(refusal.status) (\(refusal.reason))")
    }

    // The same request through a whole connection, with every ending a request can have.
    for ending in [AdmissionEvent.upgraded, .requestNotUpgraded(request, auditFailing: false), .deadlinePassed] {
        var machine = AdmissionStateMachine(environment: Fixture.environment, peer: "192.0.2.1:1", sessionID: "1")
        var conclusions = 0
        func run(_ event: AdmissionEvent) {
            for case .conclude in machine.handle(event) { conclusions += 1 }
        }
        run(.certificateVerified(.trusted(chain: []), presented: Fixture.facts))
        run(.handshakeCompleted(tlsVersion: "TLSv1.3"))
        run(.upgradeRequested(request, auditFailing: count % 7 == 0))
        run(ending)
        run(.closed)
        require(conclusions == 1, "\(conclusions) records concluded one connection")
        require(Fixture.slots.open.values.allSatisfy { $0 == 0 }, "session slots left taken: \(Fixture.slots.open)")
    }
    return 0
}

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
