#if canImport(Glibc)
import Glibc
#endif

/// The `Date` header of the gateway's HTTP answers (RFC 9110 §6.6.1: an origin server with a clock sends one):
/// `portcullis doctor` reads it to tell a device how far its clock is off the gateway's, which decides whether
/// a fresh certificate is "not yet valid".
enum HTTPDate {
    private static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    /// `Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate) for `seconds` since the epoch, now by default. Written out
    /// rather than with strftime, whose day and month names follow the process's locale.
    static func format(_ seconds: Int = time(nil)) -> String {
        var clock = time_t(seconds)
        var parts = tm()
        gmtime_r(&clock, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let day = days[Int(parts.tm_wday) % 7]
        let month = months[Int(parts.tm_mon) % 12]
        return "\(day), \(two(parts.tm_mday)) \(month) \(parts.tm_year + 1900) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) GMT"
    }
}
