import ArgumentParser

/// `portcullis`: one binary, one subcommand per job (like `step`, `vault` or `nats`).
@main
struct Portcullis: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "portcullis",
        abstract: "A mutual-TLS gateway for WebSocket messaging.",
        discussion: """
            Devices connect over WSS with client certificates; a session is admitted only after the \
            certificate verifies, the Origin passes and the identity's policy grants the route.

            Shell completions: portcullis --generate-completion-script bash|zsh|fish (see README.md).
            """,
        version: portcullisVersion,
        subcommands: [Serve.self, PKICommand.self, PolicyCommand.self, AuditCommand.self, Connect.self, Doctor.self, Bench.self]
    )
}
