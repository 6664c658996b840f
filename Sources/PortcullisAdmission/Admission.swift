import Foundation
import PortcullisConfig
import PortcullisPolicy

/// The outcome of admission for one upgrade request.
public enum AdmissionOutcome: Sendable {
    case admit(identity: Identity, rule: String, route: GatewayConfiguration.Route)
    case refuse(Refusal, identity: Identity?)
}

/// What an admitted upgrade answers in `Sec-WebSocket-Protocol` (RFC 6455 §4.2.2).
public enum SubprotocolChoice: Sendable, Equatable {
    /// No subprotocol: the answer carries no `Sec-WebSocket-Protocol`.
    case none
    /// The gateway's own choice (`echo` and `broker` routes).
    case chosen(String)
    /// An `upstream` route: these are offered to the backend, whose choice the client is answered with.
    case askBackend(offers: [String])
}

extension Admission {
    /// The subprotocol for `request` on `route`: the first the client offers among those the route accepts (an
    /// upstream route passes the offers on to its backend), or a 400 when the route requires one and none is
    /// offered.
    public static func subprotocol(for request: UpgradeRequest, on route: GatewayConfiguration.Route) -> Result<
        SubprotocolChoice, Refusal
    > {
        let offered = request.offeredSubprotocols
        let acceptable = route.subprotocols.isEmpty ? (route.kind == .upstream ? offered : []) :
            offered.filter(route.subprotocols.contains)
        if acceptable.isEmpty, route.subprotocolRequired {
            return .failure(
                Refusal(
                    status: 400, reason: "subprotocol_required",
                    message: "this route requires a subprotocol: \(route.subprotocols.joined(separator: ", "))",
                    detail: "Sec-WebSocket-Protocol offered \(offered) on \(route.path), which accepts \(route.subprotocols)"))
        }
        if route.kind == .upstream { return .success(acceptable.isEmpty ? SubprotocolChoice.none : .askBackend(offers: acceptable)) }
        return .success(acceptable.first.map(SubprotocolChoice.chosen) ?? SubprotocolChoice.none)
    }

    /// Checks an upstream backend's answer to `offers`: its choice, which must be one of them (and present when
    /// the route requires one); a failure describes what is wrong.
    public static func backendSubprotocol(
        _ answered: String?, offers: [String], on route: GatewayConfiguration.Route
    ) -> Result<String?, SubprotocolMismatch> {
        if let answered, !offers.contains(answered) {
            return .failure(SubprotocolMismatch(detail: "the backend chose subprotocol '\(answered)', which was not offered (\(offers))"))
        }
        if answered == nil, route.subprotocolRequired {
            return .failure(SubprotocolMismatch(detail: "the backend accepted none of the subprotocols \(offers) this route requires"))
        }
        return .success(answered)
    }

    public struct SubprotocolMismatch: Error, Equatable {
        public var detail: String
    }
}

/// Admission after TLS, in the order of the design: request validation → route → identity → Origin → policy.
public struct Admission: Sendable {
    public let routes: [GatewayConfiguration.Route]
    public let policies: PolicySet
    public let gatewayOrigins: OriginMatcher
    public let maxHeaderBytes: Int

    public init(
        routes: [GatewayConfiguration.Route], policies: PolicySet, gatewayOrigins: OriginMatcher, maxHeaderBytes: Int
    ) {
        self.routes = routes
        self.policies = policies
        self.gatewayOrigins = gatewayOrigins
        self.maxHeaderBytes = maxHeaderBytes
    }

    /// Decides on `request` from a client whose certificate (already verified) has these `facts`.
    public func decide(_ request: UpgradeRequest, certificate facts: CertificateFacts) -> AdmissionOutcome {
        if let refusal = validate(request) { return .refuse(refusal, identity: nil) }
        return decideValidated(request, certificate: facts)
    }

    /// The stages after request validation, for a caller that has validated the request already (the
    /// gateway re-checks the certificate in between).
    func decideValidated(_ request: UpgradeRequest, certificate facts: CertificateFacts) -> AdmissionOutcome {
        guard let route = routes.first(where: { $0.path == request.path }) else {
            return .refuse(
                Refusal(status: 404, reason: "unknown_route", message: "no such route",
                        detail: "no route is configured for path \(request.path)"),
                identity: nil)
        }
        guard let identity = policies.identify(facts) else {
            return .refuse(
                Refusal(status: 403, reason: PolicyRefusal.noIdentityMapping.rawValue,
                        message: "certificate does not map to an identity",
                        detail: policies.mappingFailure(facts)),
                identity: nil)
        }
        let origins = request.values("Origin")
        switch policies.decide(identity: identity, route: route.path, origin: origins.first, gatewayOrigins: gatewayOrigins) {
        case .admit(let rule):
            return .admit(identity: identity, rule: rule, route: route)
        case .refuse(let reason, let rule, let detail):
            let message: String = switch reason {
            case .originNotAllowed: "origin not allowed"
            case .originRequired: "an Origin header is required"
            case .noIdentityMapping: "certificate does not map to an identity"
            case .noMatchingRule, .deniedByRule: "not permitted"
            }
            return .refuse(
                Refusal(status: 403, reason: reason.rawValue, message: message, detail: detail, rule: rule),
                identity: identity)
        }
    }

    /// RFC 6455 §4.2.1 checks on the opening handshake, plus the header size limit and a single Origin.
    func validate(_ request: UpgradeRequest) -> Refusal? {
        if request.method != "GET" {
            var refusal = Refusal(status: 405, reason: "method_not_allowed", message: "only GET can open a WebSocket",
                                  detail: "method \(request.method)")
            refusal.headers = [("Allow", "GET")]
            return refusal
        }
        if request.headSize > maxHeaderBytes {
            return Refusal(status: 431, reason: "headers_too_large", message: "request headers too large",
                           detail: "request head of \(request.headSize) bytes exceeds \(maxHeaderBytes)")
        }
        if (request.versionMajor, request.versionMinor) < (1, 1) {
            return Refusal(status: 400, reason: "invalid_upgrade_request", message: "HTTP/1.1 is required",
                           detail: "HTTP/\(request.versionMajor).\(request.versionMinor) request")
        }
        // RFC 9112 §3.2 (and RFC 6455 §4.1, which requires it of a client): exactly one Host, or 400.
        let hosts = request.values("Host")
        if hosts.count != 1 || hosts[0].isEmpty {
            return Refusal(status: 400, reason: "invalid_host_header", message: "exactly one Host header is required",
                           detail: hosts.isEmpty ? "request without a Host header" : "Host sent \(hosts.count) times: \(hosts)")
        }
        if !request.tokens("Upgrade").contains("websocket") {
            var refusal = Refusal(status: 426, reason: "upgrade_required",
                                  message: "this endpoint only speaks WebSocket",
                                  detail: "request without 'Upgrade: websocket'")
            refusal.headers = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
            return refusal
        }
        if !request.tokens("Connection").contains("upgrade") {
            return Refusal(status: 400, reason: "invalid_upgrade_request", message: "missing 'Connection: Upgrade'",
                           detail: "Connection header lacks the upgrade token")
        }
        if request.tokens("Sec-WebSocket-Version") != ["13"] {
            var refusal = Refusal(status: 426, reason: "unsupported_websocket_version",
                                  message: "WebSocket version 13 is required",
                                  detail: "Sec-WebSocket-Version: \(request.values("Sec-WebSocket-Version"))")
            refusal.headers = [("Sec-WebSocket-Version", "13")]
            return refusal
        }
        let keys = request.values("Sec-WebSocket-Key")
        guard keys.count == 1, let key = Data(base64Encoded: keys[0].trimmingCharacters(in: .whitespaces)),
            key.count == 16
        else {
            return Refusal(status: 400, reason: "invalid_websocket_key", message: "invalid Sec-WebSocket-Key",
                           detail: "Sec-WebSocket-Key must be one base64 value of 16 bytes, got \(keys)")
        }
        if request.values("Origin").count > 1 {
            return Refusal(status: 400, reason: "multiple_origin_headers", message: "more than one Origin header",
                           detail: "Origin sent \(request.values("Origin").count) times: \(request.values("Origin"))")
        }
        return nil
    }
}
