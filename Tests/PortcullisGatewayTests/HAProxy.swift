import Foundation
import Testing

/// HAProxy (Debian's `haproxy`) in TCP mode on a free loopback port, in front of gateways on 127.0.0.1, sending
/// them PROXY protocol v2 headers from `source` (the address the gateways trust); stopped with ``stop()``.
struct HAProxy {
    let process: Process
    let port: Int

    static func start(in directory: String, source: String, gateways: [Int]) async throws -> HAProxy {
        let executable = FileManager.default.isExecutableFile(atPath: "/usr/sbin/haproxy")
            ? "/usr/sbin/haproxy" : try ExternalTool("haproxy").path
        for _ in 1...3 {
            let port = try await Stunnel.freeLoopbackPort()
            let servers = gateways.enumerated().map { index, gateway in
                "    server gateway\(index) 127.0.0.1:\(gateway) send-proxy-v2"
            }
            let configuration = "\(directory)/haproxy.cfg"
            try """
                global
                    maxconn 2000
                defaults
                    mode tcp
                    timeout connect 10s
                    timeout client 600s
                    timeout server 600s
                frontend devices
                    bind 127.0.0.1:\(port)
                    default_backend gateways
                backend gateways
                    source \(source)
                \(servers.joined(separator: "\n"))

                """.write(toFile: configuration, atomically: true, encoding: .utf8)
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            // -db: in the foreground, not as a daemon: the process started is the one listening.
            process.arguments = ["-db", "-f", configuration]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            let deadline = Date().addingTimeInterval(60)
            while process.isRunning && Date() < deadline {
                if Stunnel.listens(pid: process.processIdentifier, port: port) {
                    return HAProxy(process: process, port: port)
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            if process.isRunning { stopProcess(process) }
        }
        throw Stunnel.StartFailure(description: "haproxy did not start")
    }

    func stop() {
        stopProcess(process)
    }
}
