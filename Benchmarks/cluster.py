#!/usr/bin/env python3
"""The shared broker, measured: one publisher and 20 subscribers on one topic, one publish per TLS record, first
with everything on one gateway, then across three gateways sharing one nats-server (the publisher on the first
gateway, the subscribers spread over the other two, so every delivery crosses NATS). Figures per wall-clock
second and per CPU-second of every server process (all gateways and nats-server), and the latency at 1,000 msg/s
(p50/p99), which for the cluster is the cross-gateway latency.

Usage: python3 Benchmarks/cluster.py [--quick] [--no-build] [--binary BINARY]

Needs a release build (it runs `swift build -c release` unless --no-build) and nats-server. Client and servers
share this machine's cores: run it on an otherwise idle machine. Everything lives in a temporary directory.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the shared PKI, port and process helpers)

SUBSCRIBERS = 20
NATS_PASSWORD = "bench-gateway"


def start_nats_core(work):
    """nats-server for the gateways (plain TCP on loopback), the gateway user granted the prefix only."""
    port = run.free_port()
    config = os.path.join(work, "nats-core.conf")
    with open(config, "w") as f:
        f.write(f"""listen: "127.0.0.1:{port}"
authorization {{
  users: [ {{ user: gateway, password: "{NATS_PASSWORD}", permissions: {{ publish: "portcullis.>", subscribe: "portcullis.>" }} }} ]
}}
""")
    process = subprocess.Popen(["nats-server", "-c", config], stdout=open(os.path.join(work, "nats-core.log"), "w"),
                               stderr=subprocess.STDOUT)
    run.wait_for_port(port, process, "nats-server")
    return process, port


def pubsub(publisher_port, pids, subscriber_ports, credentials, *extra):
    args = [run.BINARY, "bench", "pubsub", "--url", f"wss://127.0.0.1:{publisher_port}/v1/messages",
            "--cert", credentials["cert"], "--key", credentials["key"], "--ca", credentials["ca"],
            "--origin", run.ORIGIN, "--server-name", "localhost", "--server-pid", str(pids[0]),
            "--subscribers", str(SUBSCRIBERS), "--json", *extra]
    for pid in pids[1:]:
        args += ["--also-server-pid", str(pid)]
    for port in subscriber_ports:
        args += ["--subscriber-port", str(port)]
    print(f"  bench pubsub {' '.join(args[args.index('--subscribers'):])}", file=sys.stderr, flush=True)
    out = subprocess.run(args, text=True, capture_output=True)
    if out.returncode != 0:
        sys.exit(f"bench pubsub failed:\n{out.stderr}")
    result = run.json.loads(out.stdout.strip().splitlines()[-1])
    if result.get("lost"):
        print(f"    warning: {result['lost']} deliveries never arrived", file=sys.stderr)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--no-build", action="store_true", help="use the existing release build")
    parser.add_argument("--binary", help="the portcullis binary to measure (default: this checkout's release build)")
    options = parser.parse_args()
    if options.binary:
        run.BINARY = os.path.abspath(options.binary)
        options.no_build = True
    if not shutil.which("nats-server"):
        sys.exit("nats-server is not installed (apt-get install -y nats-server)")
    if not options.no_build:
        print("building the release binary ...", file=sys.stderr, flush=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "portcullis"], cwd=run.ROOT, check=True)

    work = tempfile.mkdtemp(prefix="portcullis-cluster-bench-")
    processes = []
    try:
        pki, _ = run.make_pki(work)
        credentials = {"cert": os.path.join(pki, "issued", f"{run.IDENTITY}.chain.pem"),
                       "key": os.path.join(pki, "private", f"{run.IDENTITY}.key"), "ca": os.path.join(pki, "ca.crt")}
        with open(os.path.join(work, "nats-password"), "w") as f:
            f.write(NATS_PASSWORD + "\n")
        duration = "3s" if options.quick else "10s"

        single_port = run.free_port()
        single = run.start_portcullis(work, pki, single_port, run.BINARY, "single")
        processes.append(single)
        pubsub(single_port, [single.pid], [], credentials, "--duration", "2s")  # warm-up
        alone = {"full": pubsub(single_port, [single.pid], [], credentials, "--duration", duration),
                 "rate": pubsub(single_port, [single.pid], [], credentials, "--duration", duration, "--rate", "1000")}
        single.terminate()
        single.wait()
        processes.remove(single)

        nats, nats_port = start_nats_core(work)
        processes.append(nats)
        shared = f"""nats:
  url: nats://127.0.0.1:{nats_port}
  user: gateway
  password_file: {os.path.join(work, "nats-password")}
"""
        gateways = []
        for index in range(1, 4):
            port = run.free_port()
            process = run.start_portcullis(work, pki, port, run.BINARY, f"gw{index}", limits=run.LIMITS + shared)
            processes.append(process)
            gateways.append((port, process))
        pids = [process.pid for _, process in gateways] + [nats.pid]
        subscriber_ports = [port for port, _ in gateways[1:]]
        pubsub(gateways[0][0], pids, subscriber_ports, credentials, "--duration", "2s")  # warm-up
        cpu_before = [run.cpu_seconds(pid) for pid in pids]
        cluster = {"full": pubsub(gateways[0][0], pids, subscriber_ports, credentials, "--duration", duration)}
        cpu_share = [run.cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before)]
        cluster["rate"] = pubsub(gateways[0][0], pids, subscriber_ports, credentials, "--duration", duration, "--rate", "1000")

        print(f"\n1 publisher -> {SUBSCRIBERS} subscribers, 64-byte payloads, one publish per TLS record\n")
        print(f"| | one gateway | 3 gateways + nats-server |\n| --- | ---: | ---: |")
        print(f"| delivered/s | {run.fmt(alone['full']['delivered_per_second'])} | {run.fmt(cluster['full']['delivered_per_second'])} |")
        a, c = alone["full"]["delivered_per_server_cpu_second"], cluster["full"]["delivered_per_server_cpu_second"]
        print(f"| per server CPU-second (every gateway and nats-server) | {run.fmt(a)} | {run.fmt(c)} ({c / a:.2f}x) |")
        for label, key in [("p50", "p50"), ("p99", "p99")]:
            print(f"| {label} latency at 1,000 msg/s | {run.fmt(alone['rate']['latency_microseconds'][key])} µs "
                  f"| {run.fmt(cluster['rate']['latency_microseconds'][key])} µs |")
        names = ["gw1 (publisher)", "gw2", "gw3", "nats-server"]
        print("\nCPU seconds during the cluster's full-speed run: "
              + ", ".join(f"{name} {seconds:.1f}" for name, seconds in zip(names, cpu_share)))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
