import Foundation
import PortcullisAudit
import PortcullisConfig
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What the gateway does while its audit log cannot keep records: `on_audit_failure`.
@Suite("Audit failure policy")
struct AuditFailureTests {
    /// Holds the audit log's lock (as a stuck `pki` command would) and floods the gateway's queue until it drops.
    static func jam(_ gw: TestGateway) -> Int32 {
        let holder = open(gw.gateway.auditLog.layout.lockFile, O_RDWR | O_CLOEXEC)
        flock(holder, LOCK_EX)
        for _ in 0..<64 { gw.gateway.auditLog.record(AuditRecord(event: "test_flood")) }
        return holder
    }

    static func release(_ holder: Int32, _ gw: TestGateway) async throws -> Bool {
        flock(holder, LOCK_UN)
        close(holder)
        let deadline = Date().addingTimeInterval(120)
        while gw.gateway.auditLog.isFailing && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        return !gw.gateway.auditLog.isFailing
    }

    @Test("refuse_new_sessions: 503 audit_unavailable while failing, open sessions go on, admitted again after recovery")
    func refuseNewSessions() async throws {
        try await withGateway(adjust: { $0.audit.queueCapacity = 16 }) { gw in
            let admin = try #require(try await gw.gateway.startAdmin(.init(host: "127.0.0.1", port: 0)).port)
            let readyz = ["-s", "-w", " %{http_code}", "http://127.0.0.1:\(admin)/readyz"]
            #expect(try await ExternalTool("curl").run(readyz, holdInput: 0).output == "ready\n 200")
            let open = try #require(try await gw.connect(gw.device).connection)
            let holder = Self.jam(gw)
            #expect(gw.gateway.auditLog.isFailing)
            // Load balancers stop sending new sessions here while the log cannot take them.
            let notReady = try await ExternalTool("curl").run(readyz, holdInput: 0).output
            #expect(notReady == "not ready: the audit log is failing (on_audit_failure: refuse_new_sessions)\n 503")

            let refused = try await gw.connect(gw.device)
            guard case .refused(let status, let headers, let body) = refused else {
                Issue.record("expected 503, got an upgrade")
                return
            }
            #expect(status == 503)
            #expect(body.contains("cannot audit new sessions"))
            #expect(headers.contains { $0.0 == "Retry-After" && $0.1 == "1" })
            try await open.send(text: "still here")
            #expect(await open.receive() == .text("still here"))

            #expect(try await Self.release(holder, gw))
            let admitted = try await gw.connect(gw.device)
            #expect(admitted.status == 101)
            await admitted.connection?.close()
            await open.close()
            let recovered = try #require(await gw.auditRecord { $0.event == "audit_recovered" })
            #expect(recovered.reason == "audit_queue_full")
            #expect((recovered.dropped ?? 0) > 0)
            // The refusal itself came while nothing could be written, so it is among the lost, not in the log.
            let after = try gw.auditRecords().filter { $0.seq > recovered.seq }
            #expect(after.contains { $0.event == "session_opened" })
            #expect(try AuditVerifier(directory: gw.gateway.auditLog.directory).verify().problem == nil)
        }
    }

    @Test("continue: sessions are admitted while the audit log is failing")
    func continueAdmitting() async throws {
        try await withGateway(adjust: { $0.audit.queueCapacity = 16; $0.onAuditFailure = .continue }) { gw in
            let holder = Self.jam(gw)
            #expect(gw.gateway.auditLog.isFailing)
            #expect(gw.gateway.notReadyReason == nil)
            let admitted = try await gw.connect(gw.device)
            #expect(admitted.status == 101)
            await admitted.connection?.close()
            #expect(try await Self.release(holder, gw))
            #expect(try await gw.auditRecord { $0.event == "audit_recovered" } != nil)
        }
    }
}
