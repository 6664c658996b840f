@testable import PortcullisGateway
import Testing

@Suite("The gateway's Date header")
struct HTTPDateTests {
    @Test("IMF-fixdate, as RFC 9110's example, whatever the locale")
    func format() {
        #expect(HTTPDate.format(784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(HTTPDate.format(0) == "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(HTTPDate.format(1_798_761_599) == "Thu, 31 Dec 2026 23:59:59 GMT")
    }
}
