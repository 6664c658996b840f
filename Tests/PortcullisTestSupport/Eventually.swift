import Foundation

/// Polls `condition` every `interval` until it holds or `seconds` pass, and says whether it held. The default
/// deadline leaves room for a saturated machine: a condition that holds returns at once, so only a failing test
/// waits it out.
public func eventually(
    within seconds: Double = 120, every interval: Duration = .milliseconds(50),
    _ condition: () async throws -> Bool
) async throws -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: interval)
    }
    return try await condition()
}
