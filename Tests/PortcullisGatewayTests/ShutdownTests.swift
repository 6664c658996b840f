import Foundation
import PortcullisAudit
import PortcullisClient
import Testing

@Suite("Shutdown")
struct ShutdownTests {
    @Test("Shutdown drains: sessions get 1001, connections still in admission are closed, all audited, then gateway_stopped")
    func drain() async throws {
        try await withGateway { gw in
            let echo = try #require(try await gw.connect(gw.device).connection)
            let broker = try await gw.broker(gw.spiffeDevice)
            let stalled = try await openTLSOnly(gw)
            try await echo.send(text: "before")
            #expect(await next(echo) == .text("before"))

            await gw.gateway.shutdown(deadline: .seconds(5))

            #expect(await next(echo) == .close(code: 1001, reason: ""))
            await echo.closed()
            await broker.connection.closed()
            try await stalled.closeFuture.get()
            let records = try AuditLog.read(path: gw.auditPath)
            let closed = records.filter { $0.event == "session_closed" }
            #expect(closed.count == 2)
            #expect(closed.allSatisfy { $0.closeCode == 1001 && $0.reason == "shutdown" })
            // Still in admission: refused at whichever stage it had reached.
            #expect(records.contains { $0.reason == "shutdown" && ["tls_refused", "http_refused"].contains($0.event) })
            // The log ends signed: the last record is the checkpoint close() writes, right after gateway_stopped.
            #expect(records.last?.event == "audit_checkpoint")
            let last = try #require(records.last { $0.event != "audit_checkpoint" })
            #expect(last.event == "gateway_stopped")
            #expect(last.detail == "drained 3 connection(s)")
        }
    }
}
