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

    @Test("A closing session ends all its subscriptions at once: none matches afterwards, cached topics retired, counts released")
    func unsubscribeAllAtOnce() {
        let loop = EmbeddedEventLoop()
        let broker = Broker()
        let usage = IdentityUsage()
        let device = Inbox(id: 1, loop: loop)
        let other = Inbox(id: 2, loop: loop)
        let filters: Set = ["devices/d1/commands/#", "devices/d1/commands/1/#", "devices/+/config"]
        for filter in filters {
            broker.subscribe(filter, device.subscriber)
            #expect(usage.reserveSubscription("d1", limit: 3))
        }
        #expect(!usage.reserveSubscription("d1", limit: 3), "the identity is at its limit of 3")
        broker.subscribe("devices/d2/commands/#", other.subscriber)
        var console = Broker.Publisher()
        #expect(broker.publish(Self.frame("before"), to: "devices/d1/commands/1/reboot", from: &console) == 1)
        let cached = console.recipients

        broker.unsubscribe(filters, device.subscriber)
        usage.releaseSubscription("d1", count: filters.count)
        #expect(cached?.isCurrent == false)
        #expect(broker.publish(Self.frame("after"), to: "devices/d1/commands/1/reboot", from: &console) == 0)
        #expect(broker.publish(Self.frame("config"), to: "devices/d1/config", from: &console) == 0)
        #expect(broker.publish(Self.frame("d2"), to: "devices/d2/commands/x", from: &console) == 1)
        #expect(usage.reserveSubscription("d1", limit: 3), "the three released")
        loop.run()
        #expect(device.payloads == ["before"])
        #expect(other.payloads == ["d2"])
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
