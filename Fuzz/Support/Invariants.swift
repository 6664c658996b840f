/// Stops the run with `message` when `condition` does not hold: libFuzzer then keeps the input as a crash.
public func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("invariant violated: \(message())") }
}

/// What one topic level is to a filter: a wildcard, a literal, or a level with a wildcard character inside,
/// which is no valid filter level at all.
public enum LevelShape: Hashable, Sendable {
    case literal, singleLevelWildcard, multiLevelWildcard, malformed
}

/// The shape of every level of a topic filter: what a certificate name must never change in a grant.
public func shape(_ filter: String) -> [LevelShape] {
    filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).map { level in
        if level.elementsEqual("+".utf8) { return .singleLevelWildcard }
        if level.elementsEqual("#".utf8) { return .multiLevelWildcard }
        if level.contains(UInt8(ascii: "+")) || level.contains(UInt8(ascii: "#")) { return .malformed }
        return .literal
    }
}
