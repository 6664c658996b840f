// swift-tools-version:6.2
import PackageDescription

// libFuzzer builds (`PORTCULLIS_FUZZ=1`, into their own build path; see `Fuzz/README.md`): the parsers' own
// targets are compiled with coverage instrumentation and the fuzz targets are added. Normal builds see neither.
let fuzzing = Context.environment["PORTCULLIS_FUZZ"] == "1"
let fuzzInstrumented: [SwiftSetting] = fuzzing ? [.unsafeFlags(["-sanitize=fuzzer"])] : []

// Every dependency comes from the local package mirror; versions are pinned to what it holds.
let package = Package(
    name: "portcullis",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "portcullis", targets: ["portcullis"]),
        .library(name: "PortcullisClient", targets: ["PortcullisClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/adam-fowler/compress-nio.git", from: "1.5.0"),
    ],
    targets: [
        // Strict YAML reading shared by policies and configuration: unknown keys and wrong types are
        // collected as diagnostics with file:line instead of stopping at the first one.
        .target(
            name: "PortcullisYAML",
            dependencies: [.product(name: "Yams", package: "Yams")],
            swiftSettings: fuzzInstrumented
        ),
        // Pure: the broker's wire protocol (JSON objects and the binary envelope) and its topics (validation and
        // matching), shared by gateway, policy and client.
        .target(name: "PortcullisProtocol", swiftSettings: fuzzInstrumented),
        // Pure: identity mapping, policy model and decisions, origin matching. No NIO.
        .target(
            name: "PortcullisPolicy",
            dependencies: [
                "PortcullisYAML", "PortcullisProtocol",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: fuzzInstrumented
        ),
        // Pure: NATS's client protocol and the mapping of topics to NATS subjects, for the shared broker.
        // Hand-written: the mirror has no NATS client.
        // Its NKeys (Ed25519) sign the server's nonce when the gateway signs in with an NKey or a user JWT.
        .target(
            name: "PortcullisNATS",
            dependencies: ["PortcullisProtocol", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: fuzzInstrumented),
        // Pure + files: CA, issuance, CRL encoding and parsing, the client-certificate verifier.
        .target(
            name: "PortcullisPKI",
            dependencies: [
                "PortcullisYAML",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: fuzzInstrumented
        ),
        // Files: audit records, the hash-chained JSON Lines writer that runs off the event loop, and the reader
        // behind `portcullis audit` (query, verify).
        .target(
            name: "PortcullisAudit",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                // Only for the PEM encoding of the Ed25519 checkpoint key.
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        // Gateway configuration decoded from YAML, with file:line diagnostics.
        .target(
            name: "PortcullisConfig",
            dependencies: [
                "PortcullisPolicy", "PortcullisYAML", "PortcullisAudit", "PortcullisNATS",
            ],
            swiftSettings: fuzzInstrumented
        ),
        // Pure: admission from TCP accept to a session or a refusal, as a state machine the gateway's NIO handlers
        // only translate to; the upgrade request's checks and the route, identity, Origin and policy decision.
        .target(
            name: "PortcullisAdmission",
            dependencies: [
                "PortcullisConfig", "PortcullisPolicy", "PortcullisPKI", "PortcullisAudit",
                .product(name: "X509", package: "swift-certificates"),
            ],
            swiftSettings: fuzzInstrumented
        ),
        // NIO: listener, TLS, admission, WebSocket sessions.
        .target(
            name: "PortcullisGateway",
            dependencies: [
                "PortcullisPolicy", "PortcullisPKI", "PortcullisAudit", "PortcullisConfig", "PortcullisProtocol",
                "PortcullisAdmission", "PortcullisNATS",
                // The upstream route's backend leg is a WebSocket client like a device's.
                "PortcullisClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                // zlib for permessage-deflate (RFC 7692).
                .product(name: "CompressNIO", package: "compress-nio"),
            ]
        ),
        // NIO: the device side — connect with a client certificate, upgrade, exchange frames.
        .target(
            name: "PortcullisClient",
            dependencies: [
                "PortcullisProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // `portcullis doctor`: a connection taken apart step by step, through the system's OpenSSL (loaded at run time).
        .target(
            name: "PortcullisDoctor",
            dependencies: [
                "PortcullisClient",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: fuzzInstrumented
        ),
        // NIO: load generators (`portcullis bench`) speaking Portcullis's protocol or NATS's over WebSocket.
        .target(
            name: "PortcullisBench",
            dependencies: [
                "PortcullisClient", "PortcullisAudit", "PortcullisPolicy", "PortcullisPKI",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ]
        ),
        // The device program of `docs/examples/swift-device`, built so that CI keeps it compiling (not a product).
        .executableTarget(
            name: "portcullis-device-example",
            dependencies: ["PortcullisClient"],
            path: "docs/examples/swift-device"
        ),
        .executableTarget(
            name: "portcullis",
            dependencies: [
                "PortcullisGateway", "PortcullisBench", "PortcullisYAML", "PortcullisClient", "PortcullisDoctor",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                "PortcullisPKI", "PortcullisConfig", "PortcullisPolicy", "PortcullisProtocol", "PortcullisAudit",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "PortcullisPolicyTests",
            dependencies: ["PortcullisPolicy", "PortcullisProtocol", "PortcullisYAML", "PortcullisTestSupport"]
        ),
        // Helpers shared by the test targets: running other processes, a seeded random generator, the servers the
        // tests drive (nats-server with the NATS operator, account and user JWTs it mints).
        .target(
            name: "PortcullisTestSupport",
            dependencies: ["PortcullisNATS", .product(name: "Crypto", package: "swift-crypto")],
            path: "Tests/PortcullisTestSupport"),
        // Runs the built `portcullis` binary as an operator would (PortcullisClient as the devices of a cluster of
        // gateways). PortcullisPKI and X509 mint the certificates
        // the hostile-input suite presents that `portcullis pki` rightly refuses to make (expired, self-signed, a
        // chain of a dozen).
        .testTarget(
            name: "PortcullisCLITests",
            dependencies: [
                "portcullis", "PortcullisTestSupport", "PortcullisPKI", "PortcullisClient",
                .product(name: "X509", package: "swift-certificates"),
            ]
        ),
        .testTarget(
            name: "PortcullisDoctorTests",
            dependencies: [
                "PortcullisDoctor",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .testTarget(
            name: "PortcullisNATSTests",
            dependencies: ["PortcullisNATS", "PortcullisProtocol", "PortcullisTestSupport"]
        ),
        .testTarget(
            name: "PortcullisConfigTests",
            dependencies: ["PortcullisConfig", "PortcullisYAML", "PortcullisAudit"]
        ),
        .testTarget(
            name: "PortcullisAuditTests",
            dependencies: ["PortcullisAudit", .product(name: "Crypto", package: "swift-crypto")]
        ),
        .testTarget(
            name: "PortcullisAdmissionTests",
            dependencies: [
                "PortcullisAdmission", "PortcullisPKI", "PortcullisPolicy", "PortcullisConfig", "PortcullisAudit",
                "PortcullisTestSupport",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .testTarget(
            name: "PortcullisProtocolTests",
            dependencies: ["PortcullisProtocol", "PortcullisTestSupport"]
        ),
        // The client's pure parts (backoff, refusal and connect-error classification, offline queue, input checks): no
        // sockets.
        .testTarget(
            name: "PortcullisClientTests",
            dependencies: [
                "PortcullisClient", "PortcullisProtocol", "PortcullisTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .testTarget(
            name: "PortcullisPKITests",
            dependencies: ["PortcullisPKI", "PortcullisTestSupport", .product(name: "X509", package: "swift-certificates")]
        ),
        .testTarget(
            name: "PortcullisGatewayTests",
            dependencies: [
                "PortcullisGateway", "PortcullisClient", "PortcullisPKI", "PortcullisConfig", "PortcullisPolicy",
                "PortcullisAudit", "PortcullisAdmission", "PortcullisBench", "PortcullisTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ]
)

if fuzzing {
    /// A libFuzzer entry point (`LLVMFuzzerTestOneInput`) over one parser of untrusted input.
    func fuzzTarget(_ name: String, dependencies: [Target.Dependency]) -> Target {
        .executableTarget(
            name: "Fuzz\(name)", dependencies: ["FuzzSupport"] + dependencies, path: "Fuzz/\(name)",
            swiftSettings: [.unsafeFlags(["-sanitize=fuzzer"])],
            linkerSettings: [.unsafeFlags(["-sanitize=fuzzer", "-use-ld=lld"])])
    }
    package.targets += [
        .target(name: "FuzzDriver", path: "Fuzz/Driver"),
        // What every target checks its invariants with.
        .target(name: "FuzzSupport", path: "Fuzz/Support"),
        fuzzTarget("MessagingProtocol", dependencies: ["FuzzDriver", "PortcullisProtocol"]),
        fuzzTarget(
            "CertificateRevocationList",
            dependencies: [
                "FuzzDriver", "PortcullisPKI",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]),
        fuzzTarget(
            "CertificateIdentity",
            dependencies: ["FuzzDriver", "PortcullisPolicy", .product(name: "X509", package: "swift-certificates")]),
        fuzzTarget("PolicySet", dependencies: ["FuzzDriver", "PortcullisPolicy", "PortcullisProtocol", "PortcullisYAML"]),
        fuzzTarget("TopicTrie", dependencies: ["FuzzDriver", "PortcullisPolicy", "PortcullisProtocol"]),
        fuzzTarget("ProxyHeader", dependencies: ["FuzzDriver", "PortcullisAdmission"]),
        fuzzTarget("NATSProtocol", dependencies: ["FuzzDriver", "PortcullisNATS", "PortcullisProtocol"]),
        fuzzTarget("NATSCredentials", dependencies: ["FuzzDriver", "PortcullisNATS"]),
        // What a gateway answers `portcullis doctor`: the upgrade answer and the frames before the pong.
        fuzzTarget("DoctorProbe", dependencies: ["FuzzDriver", "PortcullisDoctor"]),
        fuzzTarget("GatewayConfiguration", dependencies: ["FuzzDriver", "PortcullisConfig", "PortcullisYAML", "PortcullisNATS"]),
        fuzzTarget(
            "UpgradeRequest",
            dependencies: ["FuzzDriver", "PortcullisAdmission", "PortcullisConfig", "PortcullisPolicy", "PortcullisPKI", "PortcullisAudit"]),
        // The gateway's WebSocket protocol layer, compiled in from its own files (symbolic links), with NIO's
        // frame decoder in front as in the gateway.
        fuzzTarget(
            "WebSocketProtocol",
            dependencies: [
                "FuzzDriver",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "CompressNIO", package: "compress-nio"),
            ]),
    ]
}

