import FuzzDriver
import FuzzSupport
import Glibc
import PortcullisDoctor

/// What a gateway (or whatever answers in its place) sends `portcullis doctor`: the answer to its upgrade request
/// (`UpgradeAnswerReader`) and the frames before its pong (`ServerFrameReader`). The first byte sets the size of
/// the pieces the rest arrives in; both readers read the rest. Whatever the pieces, a reader must decide as it does
/// on the whole input (the head's 16 KiB bound aside, which counts what is held), stay within its bounds, and give
/// an answer whose parts hold no line break.
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard count > 0 else { return 0 }
    let all = Array(UnsafeRawBufferPointer(start: data, count: count))
    let pieceSize = 1 + Int(all[0] % 64)
    let bytes = Array(all.dropFirst())
    checkUpgradeAnswer(bytes, pieceSize: pieceSize)
    checkFrames(bytes, pieceSize: pieceSize)
    return 0
}

func checkUpgradeAnswer(_ bytes: [UInt8], pieceSize: Int) {
    var pieces = UpgradeAnswerReader()
    var held = 0
    var piecesFailure: UpgradeAnswerReader.Failure?
    while pieces.wantsMore, held < bytes.count, piecesFailure == nil {
        let piece = bytes[held..<min(held + pieceSize, bytes.count)]
        do { try pieces.append(piece) } catch { piecesFailure = error }
        held += piece.count
        if !pieces.hasHead { require(held < UpgradeAnswerReader.maximumHeadLength + pieceSize, "holds \(held) bytes without a head") }
    }
    var whole = UpgradeAnswerReader()
    var wholeFailure: UpgradeAnswerReader.Failure?
    do { try whole.append(bytes) } catch { wholeFailure = error }

    let separator = Array("\r\n\r\n".utf8)
    let headEnd = bytes.indices.dropLast(3).first { bytes[$0..<$0 + 4].elementsEqual(separator) }
    switch piecesFailure {
    case .headTooLong:
        require(headEnd.map { $0 + 4 > UpgradeAnswerReader.maximumHeadLength } ?? true, "refused a head that ended within 16 KiB")
        require(pieces.answer == nil, "an answer after the head was refused")
    case .notHTTP(let start):
        require(wholeFailure == .notHTTP(start), "\(start) refused in pieces, \(String(describing: wholeFailure)) whole")
    case nil:
        guard let answer = pieces.answer else {
            require(held == bytes.count && headEnd == nil, "no answer though the head ended")
            return
        }
        require(wholeFailure == nil, "read in pieces, refused whole: \(String(describing: wholeFailure))")
        guard let wholeAnswer = whole.answer else {
            require(false, "no answer from the whole input")
            return
        }
        require(
            answer.status == wholeAnswer.status && answer.reason == wholeAnswer.reason && answer.headers == wholeAnswer.headers,
            "pieces and whole differ: \(answer) \(wholeAnswer)")
        require((100...599).contains(answer.status), "status \(answer.status)")
        require(!hasLineBreak(answer.reason), "a reason with a line break")
        for header in answer.headers {
            // The name ends at the first ':' character, as the reader looks for it (a ':' with a combining mark is
            // another character).
            require(header.name.firstIndex(of: ":") == nil && !hasLineBreak(header.name) && !hasLineBreak(header.value), "header \(header)")
        }
        require(answer.body.unicodeScalars.count <= UpgradeAnswerReader.maximumBodyLength, "a body of \(answer.body.unicodeScalars.count)")
        if answer.status == 101 { require(!pieces.wantsMore, "a 101 waits for a body") }
    }
}

/// Whether `text` holds CR LF, which ends a line of the head.
func hasLineBreak(_ text: String) -> Bool {
    let utf8 = Array(text.utf8)
    return utf8.indices.dropLast().contains { utf8[$0] == 13 && utf8[$0 + 1] == 10 }
}

func checkFrames(_ bytes: [UInt8], pieceSize: Int) {
    func drain(_ reader: inout ServerFrameReader, into frames: inout [ServerFrameReader.Frame]) -> ServerFrameReader.Failure? {
        do {
            while let frame = try reader.nextFrame() { frames.append(frame) }
        } catch {
            return error
        }
        return nil
    }
    var pieces = ServerFrameReader()
    var piecesFrames: [ServerFrameReader.Frame] = []
    var piecesFailure: ServerFrameReader.Failure?
    var offset = 0
    while offset < bytes.count, piecesFailure == nil {
        pieces.append(bytes[offset..<min(offset + pieceSize, bytes.count)])
        offset += pieceSize
        piecesFailure = drain(&pieces, into: &piecesFrames)
        require(pieces.pendingCount < 4 + 65_536 + pieceSize, "holds \(pieces.pendingCount) bytes")
    }
    var whole = ServerFrameReader()
    whole.append(bytes)
    var wholeFrames: [ServerFrameReader.Frame] = []
    let wholeFailure = drain(&whole, into: &wholeFrames)

    require(piecesFailure == wholeFailure, "\(String(describing: piecesFailure)) in pieces, \(String(describing: wholeFailure)) whole")
    require(piecesFrames == wholeFrames, "\(piecesFrames.count) frames in pieces, \(wholeFrames.count) whole")
    if wholeFailure == nil { require(pieces.pendingCount == whole.pendingCount, "pending \(pieces.pendingCount) and \(whole.pendingCount)") }
    var consumed = 0
    for frame in wholeFrames {
        require(frame.opcode <= 0xF && frame.payload.count < 65_536, "opcode \(frame.opcode), \(frame.payload.count) bytes")
        consumed += 2 + frame.payload.count
        if let close = frame.close {
            require((0...65_535).contains(close.code), "close code \(close.code)")
            require(frame.payload.count >= 2 || close.code == 1005, "a code from \(frame.payload.count) bytes")
        } else {
            require(frame.opcode != 0x8, "a close frame without a close")
        }
    }
    require(consumed + whole.pendingCount <= bytes.count, "read \(consumed) bytes of \(bytes.count)")
}

// SwiftPM names an executable's entry point itself, so libFuzzer's own `main` cannot be used: its driver is
// called from here instead.
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { fuzzOneInput($0, $1) })
