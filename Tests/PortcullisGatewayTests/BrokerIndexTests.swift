import NIOCore
import NIOEmbedded
import Testing

@testable import PortcullisGateway

@Suite("Broker: the subscription index and targeted invalidation")
struct BrokerIndexTests {
    /// A subscriber on an embedded loop that records the payloads it is handed.
    final class Inbox {
        var payloads: [String] = []
        let subscriber: Subscriber

        init(id: UInt64, loop: EmbeddedEventLoop) {
            var box: Inbox?
            subscriber = Subscriber(id: id, eventLoop: loop) { frame in
                box?.payloads.append(String(buffer: frame.buffer))
            }
            box = self
        }
    }

    static func frame(_ text: String) -> OutboundFrame {
        OutboundFrame(binary: false, buffer: ByteBuffer(string: text))
    }

    @Test("A subscription change retires only the topics its filter matches; a publisher's cache of others stays")
    func targetedInvalidation() {
        let loop = EmbeddedEventLoop()
        let broker = Broker()
        let operatorInbox = Inbox(id: 1, loop: loop)
        broker.subscribe("devices/+/telemetry", operatorInbox.subscriber)
        var device = Broker.Publisher()
        #expect(broker.publish(Self.frame("t1"), to: "devices/7/telemetry", from: &device) == 1)
        let cached = device.recipients
        #expect(cached?.isCurrent == true)

        // A fleet subscribing to its own command topics does not touch the telemetry topic.
        var fleet: [Inbox] = []
        for id in 100..<1_100 {
            let inbox = Inbox(id: UInt64(id), loop: loop)
            broker.subscribe("devices/\(id)/commands/#", inbox.subscriber)
            fleet.append(inbox)
        }
        #expect(cached?.isCurrent == true)
        #expect(broker.publish(Self.frame("t2"), to: "devices/7/telemetry", from: &device) == 1)
        #expect(device.recipients === cached)

        // A matching subscription retires it, and the next publish reaches the new subscriber too.
        let auditor = Inbox(id: 2, loop: loop)
        broker.subscribe("devices/#", auditor.subscriber)
        #expect(cached?.isCurrent == false)
        #expect(broker.publish(Self.frame("t3"), to: "devices/7/telemetry", from: &device) == 2)
        broker.unsubscribe("devices/+/telemetry", operatorInbox.subscriber)
        #expect(broker.publish(Self.frame("t4"), to: "devices/7/telemetry", from: &device) == 1)

        var console = Broker.Publisher()
        #expect(broker.publish(Self.frame("c1"), to: "devices/150/commands/reboot", from: &console) == 2)
        loop.run()
        #expect(operatorInbox.payloads == ["t1", "t2", "t3"])
        #expect(auditor.payloads == ["t3", "t4", "c1"])
        #expect(fleet[50].payloads == ["c1"])
        #expect(fleet[51].payloads.isEmpty)
    }

    @Test("A session subscribed through two matching filters receives a message once")
    func oncePerSession() {
        let loop = EmbeddedEventLoop()
        let broker = Broker()
        let inbox = Inbox(id: 1, loop: loop)
        broker.subscribe("a/#", inbox.subscriber)
        broker.subscribe("a/+", inbox.subscriber)
        broker.subscribe("a/b", inbox.subscriber)
        var publisher = Broker.Publisher()
        #expect(broker.publish(Self.frame("x"), to: "a/b", from: &publisher) == 1)
        loop.run()
        #expect(inbox.payloads == ["x"])
    }
}
