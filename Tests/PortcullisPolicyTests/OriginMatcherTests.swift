import PortcullisPolicy
import Testing

@Suite("Origin allow-list matching")
struct OriginMatcherTests {
    static let matcher = OriginMatcher([
        "https://console.example.test", "https://LOCALHOST:8443", "https://*.fleet.example", "http://legacy.example:80",
    ])

    @Test(
        "Origins are compared as RFC 6454 origins",
        arguments: [
            ("https://console.example.test", true),
            ("https://console.example.test:443", true),  // default port
            ("HTTPS://Console.Example.Test", true),  // scheme and host are case-insensitive
            ("http://console.example.test", false),  // another scheme is another origin
            ("https://console.example.test:8443", false),
            ("https://localhost:8443", true),
            ("https://localhost", false),
            ("https://a.fleet.example", true),
            ("https://a.b.fleet.example", true),
            ("https://fleet.example", false),  // the wildcard never covers the bare domain
            ("https://evilfleet.example", false),
            ("http://legacy.example", true),
            ("https://console.example.test.evil.example", false),
            ("https://console.example.test/", false),  // a path is not an origin
            ("null", false),
            ("", false),
            ("console.example.test", false),
        ])
    func matching(origin: String, allowed: Bool) {
        #expect(Self.matcher.allows(origin) == allowed)
    }

    @Test("The opaque origin null matches only a literal null entry")
    func nullOrigin() {
        #expect(OriginMatcher(["null"]).allows("null"))
        #expect(!OriginMatcher(["https://*.example"]).allows("null"))
    }

    @Test("Unusable allow-list entries are reported", arguments: [
        "https://example.test/path", "example.test", "https://", "https://*.*.example", "https://a:99999",
    ])
    func invalidEntries(entry: String) {
        #expect(OriginMatcher.problem(with: entry) != nil)
    }

    @Test("Valid entries raise no problem", arguments: ["https://example.test", "https://*.example.test", "http://[::1]:8080", "null"])
    func validEntries(entry: String) {
        #expect(OriginMatcher.problem(with: entry) == nil)
    }
}
