import Foundation
import Synchronization
import Testing

@testable import PortcullisGateway

@Suite("The admin listener")
struct AdminListenerTests {
    /// What holds the loops: each counts itself in, then spins until the gate opens.
    final class Gate: Sendable {
        let open = Atomic<Bool>(false)
        let held = Atomic<Int>(0)
    }

    @Test("/metrics answers while every session event loop is held busy: scrapes run on the admin listener's own thread")
    func scrapeDoesNotNeedSessionLoops() async throws {
        try await withGateway { gw in
            let admin = try #require(try await gw.gateway.startAdmin(.init(host: "127.0.0.1", port: 0)).port)
            let gate = Gate()
            let loops = Array(gw.gateway.group.makeIterator())
            for loop in loops {
                loop.execute {
                    gate.held.add(1, ordering: .relaxed)
                    while !gate.open.load(ordering: .relaxed) { usleep(1_000) }
                }
            }
            defer { gate.open.store(true, ordering: .relaxed) }
            let deadline = Date().addingTimeInterval(60)
            while gate.held.load(ordering: .relaxed) < loops.count, Date() < deadline { try await Task.sleep(for: .milliseconds(10)) }
            try #require(gate.held.load(ordering: .relaxed) == loops.count, "every session loop is held")
            let scrape = try await ExternalTool("curl").run(
                ["-s", "-m", "60", "-w", " %{http_code}", "http://127.0.0.1:\(admin)/metrics"], holdInput: 0)
            #expect(scrape.output.hasSuffix(" 200"), "\(scrape.all)")
            #expect(scrape.output.contains("portcullis_connections_open"))
        }
    }
}
