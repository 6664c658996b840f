/// Which identity names a mapping rule can give, asked without a certificate: what `policy check` needs to
/// tell whether a rule's identity can ever exist and whether two mappings can give the same name.
///
/// A rule's names have a simple shape: its `identity` template with `{value}` standing for the field (the
/// `match` prefix, what `*` covered, the `match` suffix) and `{*}` for what `*` covered, every occurrence the
/// same bytes. So the length of a name fixes the length of what `*` covered, and one expansion answers
/// whether the rule can give it: a linear check, never a search.
extension IdentityMappingRule {
    /// The certificate field value that makes this rule give `name`, or nil when no value can.
    ///
    /// Rules without a `match` accept any non-empty field; the value returned is then the simplest one (the
    /// name itself for `identity: "{value}"`).
    func fieldValue(giving name: String) -> String? {
        let wanted = Array(name.utf8)
        let prefix: [UInt8]
        let suffix: [UInt8]
        var captureMayHoldSlash = false
        if source == .fingerprint {
            guard let pinned = match.flatMap(normalizedFingerprint) else { return nil }
            return expand(value: Array(pinned.utf8), captured: []) == wanted ? pinned : nil
        } else if let glob {
            guard let globSuffix = glob.suffix else {
                return expand(value: glob.prefix, captured: []) == wanted ? match : nil
            }
            prefix = glob.prefix
            suffix = globSuffix
        } else {
            // No pattern: the whole field is free, and `{*}` (which the loader refuses here) is empty.
            prefix = []
            suffix = []
            captureMayHoldSlash = true
        }
        var fixedBytes = 0
        var valueCount = 0
        var captureCount = 0
        for part in template.parts {
            switch part {
            case .text(let text): fixedBytes += text.utf8.count
            case .variable("value"): valueCount += 1
            case .variable: captureCount += glob == nil ? 0 : 1
            }
        }
        let perValue = prefix.count + suffix.count
        let variableBytes = wanted.count - fixedBytes - valueCount * perValue
        let occurrences = valueCount + captureCount
        guard occurrences > 0 else {
            // The name is the template's text whatever the field holds; any value that matches gives it.
            let value = prefix + Array("1".utf8) + suffix
            return expand(value: value, captured: []) == wanted ? String(decoding: value, as: UTF8.self) : nil
        }
        guard variableBytes > 0, variableBytes % occurrences == 0 else { return nil }
        let capturedLength = variableBytes / occurrences
        // Where the first variable starts in `wanted`, and so where the captured bytes are.
        var offset = 0
        for part in template.parts {
            if case .text(let text) = part {
                offset += text.utf8.count
                continue
            }
            if case .variable("value") = part { offset += prefix.count }
            break
        }
        guard offset + capturedLength <= wanted.count else { return nil }
        let captured = Array(wanted[offset..<(offset + capturedLength)])
        if !captureMayHoldSlash && captured.contains(UInt8(ascii: "/")) { return nil }
        let value = prefix + captured + suffix
        guard expand(value: value, captured: glob == nil ? [] : captured) == wanted else { return nil }
        return String(decoding: value, as: UTF8.self)
    }

    /// The name this rule gives whatever the certificate holds, when it gives only one (a pinned fingerprint,
    /// an exact match, or a template without variables).
    var onlyName: String? {
        if source == .fingerprint {
            return match.flatMap(normalizedFingerprint).flatMap { expandedName(value: Array($0.utf8), captured: []) }
        }
        if let glob, glob.suffix == nil { return expandedName(value: glob.prefix, captured: []) }
        if !template.hasVariables { return identity }
        return nil
    }

    /// A name this rule can give, built to also fit `other`'s shape when the two can overlap: the longer of
    /// their literal beginnings, `42` for the variable part, and the longer of their literal ends.
    func overlapCandidate(with other: IdentityMappingRule) -> String? {
        let (myStart, myEnd) = literalEnds
        let (otherStart, otherEnd) = other.literalEnds
        let start = myStart.count >= otherStart.count ? myStart : otherStart
        let end = myEnd.count >= otherEnd.count ? myEnd : otherEnd
        guard start.starts(with: myStart), start.starts(with: otherStart),
            end.reversed().starts(with: myEnd.reversed()), end.reversed().starts(with: otherEnd.reversed())
        else { return nil }
        return String(decoding: start + Array("42".utf8) + end, as: UTF8.self)
    }

    /// The bytes every name of this rule starts and ends with.
    private var literalEnds: (start: [UInt8], end: [UInt8]) {
        let prefix: [UInt8] = glob?.suffix == nil ? [] : (glob?.prefix ?? [])
        let suffix: [UInt8] = glob?.suffix ?? []
        var start: [UInt8] = []
        for part in template.parts {
            guard case .text(let text) = part else {
                if case .variable("value") = part { start += prefix }
                break
            }
            start += text.utf8
        }
        var end: [UInt8] = []
        for part in template.parts.reversed() {
            guard case .text(let text) = part else {
                if case .variable("value") = part { end = suffix + end }
                break
            }
            end = Array(text.utf8) + end
        }
        return (start, end)
    }

    private func expand(value: [UInt8], captured: [UInt8]) -> [UInt8]? {
        expandedName(value: value, captured: captured).map { Array($0.utf8) }
    }

    private func expandedName(value: [UInt8], captured: [UInt8]) -> String? {
        template.expand { variable in
            String(decoding: variable == "value" ? value : captured, as: UTF8.self)
        }
    }
}
