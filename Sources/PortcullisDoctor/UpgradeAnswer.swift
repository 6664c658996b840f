/// The gateway's answer to the upgrade request, as ``UpgradeAnswerReader`` read it. (`package`: for the fuzz target.)
package struct UpgradeAnswer: Equatable {
    package var status: Int
    /// The status line's reason phrase (`Forbidden`); empty when it has none.
    package var reason: String
    /// The header lines as sent, in order: the name as written, the value without surrounding blanks.
    package var headers: [Header]
    /// The body as text, trimmed: at most ``UpgradeAnswerReader/maximumBodyLength`` bytes of a refusal's; for a
    /// 101, whatever arrived with the head (nothing is waited for).
    package var body: String

    package struct Header: Equatable {
        package var name: String
        package var value: String
    }

    /// The value of the first header named `name` (in lower case), whatever the case it was sent in.
    package func value(of name: String) -> String? {
        headers.first { $0.name.lowercased() == name }?.value
    }
}
