import FuzzDriver
import FuzzSupport
import Glibc
import PortcullisNATS
import PortcullisProtocol

/// What a NATS server sends, through the client's parser in chunks the input's first byte decides; and the
/// input as a topic and as a subject through the subject mapping. Any stream may be refused; what is read must
/// be what the protocol promises, and the mapping must be its own exact inverse on canonical subjects.
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: count)
    checkParser(bytes)
    checkMapping(bytes)
    return 0
}

func checkParser(_ bytes: UnsafeRawBufferPointer) {
    guard let first = bytes.first else { return }
    let chunkSize = Int(first % 64) + 1
    // A small bound too, so that refusals of oversize messages are reached.
    let maximumPayload = first & 0x80 == 0 ? NATSServerParser.defaultMaximumPayload : 64
    var parser = NATSServerParser(maximumPayload: maximumPayload)
    var rest = bytes.dropFirst()
    while !rest.isEmpty {
        parser.feed(rest.prefix(chunkSize))
        rest = rest.dropFirst(chunkSize)
        do {
            while let operation = try parser.next() { check(operation, maximumPayload: maximumPayload) }
        } catch {
            require(!error.description.isEmpty, "an error says why")
            return
        }
        require(parser.bufferedByteCount <= NATSServerParser.maximumInfoLineLength + maximumPayload + 2 + chunkSize, "buffered \(parser.bufferedByteCount)")
    }
}

func check(_ operation: NATSServerMessage, maximumPayload: Int) {
    guard case .message(let message) = operation else { return }
    for subject in [message.subject] + (message.replyTo.map { [$0] } ?? []) {
        require(!subject.isEmpty, "an empty subject")
        require(!subject.utf8.contains { $0 <= 0x20 || $0 == 0x7F }, "a subject with a blank or control: \(subject)")
    }
    require(message.sid > 0, "sid 0")
    require(message.payload.count <= maximumPayload, "a payload of \(message.payload.count) bytes")
    if message.headerProblem != nil {
        require(message.headers.isEmpty && message.status == nil, "headers read from a refused block")
    }
    for header in message.headers {
        require(!header.name.isEmpty && !header.name.utf8.contains { $0 <= 0x20 || $0 >= 0x7F || $0 == UInt8(ascii: ":") }, "header name \(header.name)")
        require(!header.value.utf8.contains { $0 == 0x0D || $0 == 0x0A }, "CR or LF in header value \(header.value)")
    }
    if let status = message.status { require((0...999).contains(status), "status \(status)") }
}

let mapping = SubjectMapping(prefix: "portcullis")!

func checkMapping(_ bytes: UnsafeRawBufferPointer) {
    guard let text = String(validating: bytes, as: UTF8.self) else { return }
    if Topic.problem(withName: text) == nil {
        let subject = mapping.subject(forTopic: text)
        require(mapping.topic(forSubject: subject) == text, "\(text) did not come back from \(subject)")
    }
    // The input as a subject, as it is and under the prefix.
    for subject in [text, "portcullis." + text] {
        if let topic = mapping.topic(forSubject: subject) {
            require(Topic.problem(withName: topic) == nil, "\(subject) gave the invalid topic \(topic)")
            require(mapping.subject(forTopic: topic) == subject, "\(subject) is not canonical for \(topic)")
        }
    }
    if Topic.problem(withFilter: text) == nil {
        for subject in mapping.subjects(forFilter: text) {
            let hasWildcard = subject.split(separator: ".").contains { $0 == "*" || $0 == ">" }
            guard let topic = mapping.topic(forSubject: subject) else { continue }
            require(!hasWildcard, "the wildcard subject \(subject) read as the topic \(topic)")
            require(Topic.matches(filter: text, topic: topic), "\(text) subscribes to \(subject), the topic \(topic) it does not match")
        }
    }
}

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
