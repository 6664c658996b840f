#!/usr/bin/env python3
"""Runs the same load against Portcullis and against nats-server configured for the same job, and prints one
table: each figure for both servers and the ratio, per wall-clock second and per server CPU-second, plus the
bound that `openssl speed` sets on full handshakes.

Publishers send as devices do, one publish per TLS record and per write, and again with the publishes due at once
coalesced into one write (as `portcullis bench` did before: far cheaper for the server, and not what a fleet sends).

Usage: python3 Benchmarks/run.py [--quick] [--no-build] [--binary BINARY] [--baseline BINARY] [--json results.json]

With --baseline, a second Portcullis binary (say, a release build of an earlier commit) runs beside the two with
the same configuration, and a second table compares this build with it: "before and after" in one run.

Needs a release build (it runs `swift build -c release` unless --no-build), nats-server (Debian package
`nats-server`) and openssl. Client and servers share this machine's cores, so run it on an otherwise idle
machine. Everything it makes (PKI, configuration, audit log) lives in a temporary directory.
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, ".build", "release", "portcullis")
ORIGIN = "https://bench.example"
IDENTITY = "bench-device"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args, **kwargs):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs).stdout


def wait_for_port(port, process, name, exit_on_failure=True):
    deadline = time.time() + 30
    while time.time() < deadline:
        if process.poll() is not None:
            if not exit_on_failure:
                return False
            sys.exit(f"{name} exited with {process.returncode}; see its log in the work directory")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{name} did not listen on {port} within 30 s")


def make_pki(work):
    pki, audit = os.path.join(work, "pki"), os.path.join(work, "audit")
    common = ["--pki", pki, "--audit-dir", audit]
    run([BINARY, "pki", "init", *common])
    run([BINARY, "pki", "issue", *common, "server", "localhost", "--dns", "localhost", "--ip", "127.0.0.1"])
    run([BINARY, "pki", "issue", *common, "client", IDENTITY])
    subject = run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253",
                   "-in", os.path.join(pki, "issued", f"{IDENTITY}.crt")]).strip().removeprefix("subject=")
    return pki, subject


def write_fleet_gateway_config(path, work, pki, port, admin='"off"', max_connections="15000", extra=""):
    """A broker gateway on /v1/messages with the policies of work/policies and its audit log in work/audit, for the
    fleet-sized scripts: every client connects from loopback, so the per-address limits are off."""
    with open(path, "w") as f:
        f.write(f"""listen: 127.0.0.1:{port}
tls:
  certificate: {pki}/issued/localhost.chain.pem
  key: {pki}/private/localhost.key
  client_ca: {pki}/ca.crt
allowed_origins: ["{ORIGIN}"]
routes:
  - path: /v1/messages
    kind: broker
policies: {work}/policies
audit_dir: {work}/audit
admin:
  listen: {admin}
limits:
  max_connections: {max_connections}
  per_address: {{connections: off, new_per_second: off}}
{extra}""")


def event_loop_lag(admin_port):
    """The gateway's worst event-loop lag since it started, in seconds, and its lag histogram's cumulative
    buckets (le -> count), read from /metrics."""
    import urllib.request
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=30).read().decode()
    worst = float(re.search(r"^portcullis_event_loop_lag_max_seconds ([\d.e+-]+)", metrics, re.M).group(1))
    buckets = {le: float(v) for le, v in
               re.findall(r'portcullis_event_loop_lag_seconds_bucket\{le="([^"]+)"\} ([\d.e+]+)', metrics)}
    return worst, buckets


# The load generator opens every connection from 127.0.0.1, thousands a second, and the idle scenario holds
# 10,000 sessions: the production defaults of `limits` would refuse them.
LIMITS = """limits:
  max_connections: 15000
  per_address: {connections: off, new_per_second: off}
"""


def start_portcullis(work, pki, port, binary=BINARY, name="portcullis", limits=LIMITS):
    policies = os.path.join(work, "policies")
    os.makedirs(policies, exist_ok=True)
    with open(os.path.join(policies, "bench.yaml"), "w") as f:
        f.write(f"""identity_mapping:
  - source: cn
rules:
  - name: bench
    identities: [{IDENTITY}]
    routes: [/v1/messages]
    origins: ["{ORIGIN}"]
    publish: ["bench/#"]
    subscribe: ["bench/#"]
""")
    config = os.path.join(work, f"{name}.yaml")
    with open(config, "w") as f:
        f.write(f"""listen: 127.0.0.1:{port}
tls:
  certificate: {pki}/issued/localhost.chain.pem
  key: {pki}/private/localhost.key
  client_ca: {pki}/ca.crt
  min_version: "1.2"
  # nats-server 2.9 (Go 1.19) has no post-quantum key exchange: both servers do the same X25519 work.
  key_exchange: [x25519, p256]
allowed_origins: ["{ORIGIN}"]
routes:
  - path: /v1/messages
    kind: broker
policies: {policies}
audit_dir: {work}/audit-{name}
# Two builds may run side by side (--baseline): neither needs the admin listener's fixed port.
admin:
  listen: "off"
{limits}""")
    log_path = os.path.join(work, f"{name}.log")
    process = subprocess.Popen([binary, "serve", "--config", config], stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    if not wait_for_port(port, process, name, exit_on_failure=not limits):
        # A build from before connection limits (a --baseline) refuses the unknown section: it has no limits.
        with open(log_path) as log:
            if "unknown key 'limits'" not in log.read():
                sys.exit(f"{name} exited with {process.returncode}; see {log_path}")
        return start_portcullis(work, pki, port, binary, name, limits="")
    return process


def start_nats(work, pki, subject, port):
    config = os.path.join(work, "nats.conf")
    with open(config, "w") as f:
        f.write(f"""listen: "127.0.0.1:{free_port()}"
websocket {{
  listen: "127.0.0.1:{port}"
  tls {{
    cert_file: "{pki}/issued/localhost.chain.pem"
    key_file: "{pki}/private/localhost.key"
    ca_file: "{pki}/ca.crt"
    verify_and_map: true
  }}
  allowed_origins: ["{ORIGIN}"]
  compression: false
}}
authorization {{
  users: [
    {{ user: "{subject}", permissions: {{ publish: "bench.>", subscribe: "bench.>" }} }}
  ]
}}
""")
    log = open(os.path.join(work, "nats.log"), "w")
    process = subprocess.Popen(["nats-server", "-c", config], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(port, process, "nats-server")
    return process


def bench(server, scenario, *extra):
    args = [BINARY, "bench", scenario, "--url", f"wss://127.0.0.1:{server['port']}/v1/messages",
            "--cert", server["cert"], "--key", server["key"], "--ca", server["ca"], "--origin", ORIGIN,
            "--server-name", "localhost", "--protocol", server["protocol"], "--server-pid", str(server["pid"]),
            "--json", *extra]
    print(f"  {server['name']}: bench {scenario} {' '.join(extra)}", file=sys.stderr, flush=True)
    out = subprocess.run(args, text=True, capture_output=True)
    if out.returncode != 0:
        sys.exit(f"bench {scenario} against {server['name']} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result.get("first_error"):
        print(f"    note: {result['first_error']}", file=sys.stderr)
    if result.get("resumed_sessions") is not None and result["resumed_sessions"] < 0.9 * result["sessions"]:
        print(f"    warning: only {result['resumed_sessions']} of {result['sessions']} sessions resumed", file=sys.stderr)
    return result


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def s_time(server, seconds):
    """TLS-only full handshakes with openssl s_time (no upgrade, no admission): what the TLS layer alone allows."""
    before = cpu_seconds(server["pid"])
    out = run(["openssl", "s_time", "-connect", f"127.0.0.1:{server['port']}", "-cert", server["cert"],
               "-key", server["key"], "-CAfile", server["ca"], "-time", str(seconds), "-new"])
    cpu = cpu_seconds(server["pid"]) - before
    match = re.search(r"(\d+) connections in ([\d.]+)s", out)
    count, wall = int(match.group(1)), float(match.group(2))
    return {"per_second": count / seconds, "per_server_cpu_second": count / cpu if cpu else None}


def openssl_bound():
    """Full handshakes per core that the server's public-key operations allow: one ECDSA P-256 signature, two
    verifications (the client's certificate and its CertificateVerify) and one X25519 exchange."""
    out = subprocess.run(["openssl", "speed", "-seconds", "2", "ecdsap256", "ecdhx25519"], check=True, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout
    sign_verify = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", out)
    x25519 = re.search(r"253 bits ecdh \(X25519\)\s+\S+s\s+([\d.]+)", out)
    sign, verify, exchange = float(sign_verify.group(1)), float(sign_verify.group(2)), float(x25519.group(1))
    bound = 1 / (1 / sign + 2 / verify + 1 / exchange)
    return {"ecdsa_p256_sign_per_s": sign, "ecdsa_p256_verify_per_s": verify, "x25519_per_s": exchange,
            "full_handshakes_per_core_second": bound}


def scenarios(quick):
    """Each scenario as (key, function of a server). They run scenario by scenario, each on every server in turn,
    so that the machine's drift over the run (this VM's speed moves by tens of percent from minute to minute)
    falls on all servers alike."""
    d = "3s" if quick else "10s"
    return [
        ("connect", lambda server: bench(server, "connect", "--duration", d, "--concurrency", "8")),
        ("connect_resumed", lambda server: bench(server, "connect", "--resume", "--duration", d, "--concurrency", "8")),
        ("tls_full", lambda server: s_time(server, 3 if quick else 10)),
        # Device-like publishing (one publish per TLS record and per write) first; then the same with the
        # publishes due at once coalesced into one write, as a batching client sends.
        ("pubsub_1_1", lambda server: bench(server, "pubsub", "--duration", d)),
        ("pubsub_1_10", lambda server: bench(server, "pubsub", "--duration", d, "--subscribers", "10")),
        ("ingest_1000_1", lambda server: bench(server, "pubsub", "--duration", d, "--publishers", "1000", "--ingest",
                                               "--source-addresses", "16", "--concurrency", "16")),
        ("pubsub_1_1_coalesced", lambda server: bench(server, "pubsub", "--duration", d, "--publish-mode", "coalesced")),
        ("pubsub_1_10_coalesced", lambda server: bench(server, "pubsub", "--duration", d, "--subscribers", "10",
                                                       "--publish-mode", "coalesced")),
        ("pubsub_1000", lambda server: bench(server, "pubsub", "--duration", d, "--rate", "1000")),
        ("idle", lambda server: bench(server, "idle", "--sessions", "1000" if quick else "10000", "--concurrency", "16",
                                      "--source-addresses", "16")),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs and 1,000 idle sessions (a smoke test)")
    parser.add_argument("--no-build", action="store_true", help="use the existing release build")
    parser.add_argument("--json", help="also write every result to this file")
    parser.add_argument("--baseline", help="another portcullis binary to measure beside this build (before/after)")
    parser.add_argument("--binary", help="the portcullis binary to measure (default: this checkout's release build)")
    options = parser.parse_args()
    global BINARY
    if options.binary:
        BINARY = os.path.abspath(options.binary)
        options.no_build = True
    if options.baseline and not os.access(options.baseline, os.X_OK):
        sys.exit(f"--baseline {options.baseline} is not an executable")
    for tool in ["nats-server", "openssl"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install -y {'nats-server' if tool == 'nats-server' else 'openssl'})")
    if not options.no_build:
        print("building the release binary ...", file=sys.stderr, flush=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "portcullis"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp(prefix="portcullis-bench-")
    pki, subject = make_pki(work)
    processes = []
    try:
        cert = os.path.join(pki, "issued", f"{IDENTITY}.chain.pem")
        key = os.path.join(pki, "private", f"{IDENTITY}.key")
        ca = os.path.join(pki, "ca.crt")
        servers = []
        candidates = [("portcullis", "portcullis", BINARY), ("nats-server", "nats", None)]
        if options.baseline:
            candidates.insert(1, ("baseline", "portcullis", options.baseline))
        for name, protocol, binary in candidates:
            port = free_port()
            process = (start_portcullis(work, pki, port, binary, name) if protocol == "portcullis"
                       else start_nats(work, pki, subject, port))
            processes.append(process)
            servers.append({"name": name, "protocol": protocol, "port": port, "pid": process.pid,
                            "cert": cert, "key": key, "ca": ca})
        results = {server["name"]: {} for server in servers}
        print(" ".join(f"{server['name']} (pid {server['pid']})" for server in servers), file=sys.stderr, flush=True)
        # A server's first sessions pay for what it sets up lazily (caches, the audit segment, page faults):
        # measured, they made whichever server came first look up to a quarter slower. Warm each up first.
        for server in servers:
            bench(server, "connect", "--duration", "2s", "--concurrency", "8")
            bench(server, "pubsub", "--duration", "2s")
        for key, run_scenario in scenarios(options.quick):
            for server in servers:
                results[server["name"]][key] = run_scenario(server)
        # Latency at half the lower of the two maximum 1→1 rates, the same rate for both.
        half = min(results[s["name"]]["pubsub_1_1"]["delivered_per_second"] for s in servers) / 2
        for server in servers:
            results[server["name"]]["pubsub_half"] = bench(
                server, "pubsub", "--duration", "3s" if options.quick else "10s", "--rate", str(int(half)))
        bound = openssl_bound()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)
    print_table(results["portcullis"], results["nats-server"], "nats-server", bound, half)
    if options.baseline:
        print_table(results["portcullis"], results["baseline"], "baseline", bound, half)
    if options.json:
        with open(options.json, "w") as f:
            json.dump({"results": results, "openssl_bound": bound, "half_rate": half, "machine": machine()}, f, indent=2)
    shutil.rmtree(work, ignore_errors=True)


def machine():
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    nats = run(["nats-server", "--version"]).strip()
    return {"cpu": model, "cores": os.cpu_count(), "kernel": os.uname().release, "nats": nats,
            "openssl": run(["openssl", "version"]).strip()}


def print_table(p, n, other, bound, half):
    """One table: this build (p) against another server (n), with the ratio."""
    rows = []

    def row(label, a, b, unit="", lower_is_better=False, digits=0):
        if a is None or b is None:
            rows.append((label, fmt(a, digits) + unit, fmt(b, digits) + unit, "n/a"))
            return
        ratio = (b / a if lower_is_better else a / b) if (a and b) else float("nan")
        rows.append((label, fmt(a, digits) + unit, fmt(b, digits) + unit, f"{ratio:.2f}x"))

    row("sessions/s (TLS 1.3 mTLS + upgrade + admission)", p["connect"]["sessions_per_second"], n["connect"]["sessions_per_second"])
    row("  per server CPU-second", p["connect"]["sessions_per_server_cpu_second"], n["connect"]["sessions_per_server_cpu_second"])
    row("  % of the openssl speed bound (per CPU-second)",
        100 * p["connect"]["sessions_per_server_cpu_second"] / bound["full_handshakes_per_core_second"],
        100 * n["connect"]["sessions_per_server_cpu_second"] / bound["full_handshakes_per_core_second"], " %", digits=1)
    row("resumed sessions/s (--resume, same checks)", p["connect_resumed"]["sessions_per_second"],
        n["connect_resumed"]["sessions_per_second"])
    row("  per server CPU-second", p["connect_resumed"]["sessions_per_server_cpu_second"],
        n["connect_resumed"]["sessions_per_server_cpu_second"])
    row("  resumed / full, per server CPU-second",
        p["connect_resumed"]["sessions_per_server_cpu_second"] / p["connect"]["sessions_per_server_cpu_second"],
        n["connect_resumed"]["sessions_per_server_cpu_second"] / n["connect"]["sessions_per_server_cpu_second"], digits=2)
    row("TLS-only full handshakes/s (openssl s_time)", p["tls_full"]["per_second"], n["tls_full"]["per_second"])
    row("  per server CPU-second", p["tls_full"]["per_server_cpu_second"], n["tls_full"]["per_server_cpu_second"])
    for key, label in [("pubsub_1_1", "1→1 delivered msg/s, 64 B, one per frame and TLS record"),
                       ("pubsub_1_10", "1→10 delivered msg/s, one per record"),
                       ("ingest_1000_1", "1,000→1 ingest delivered msg/s, one per record"),
                       ("pubsub_1_1_coalesced", "1→1 delivered msg/s, publishes coalesced"),
                       ("pubsub_1_10_coalesced", "1→10 delivered msg/s, publishes coalesced")]:
        row(label, p[key]["delivered_per_second"], n[key]["delivered_per_second"])
        row("  per server CPU-second", p[key]["delivered_per_server_cpu_second"], n[key]["delivered_per_server_cpu_second"])
    for key, label in [("pubsub_1000", "latency at 1,000 msg/s, one per record"),
                       ("pubsub_half", f"latency at {half:,.0f} msg/s (half max)")]:
        for pct in ["p50", "p99", "p99_9"]:
            row(f"{label} {pct.replace('_', '.')}", p[key]["latency_microseconds"][pct], n[key]["latency_microseconds"][pct],
                " µs", lower_is_better=True)
    row(f"server KiB per idle session ({p['idle']['sessions']:,} sessions)", p["idle"]["server_ki_b_per_session"],
        n["idle"]["server_ki_b_per_session"], lower_is_better=True, digits=1)
    row("  seconds to open them", p["idle"]["open_seconds"], n["idle"]["open_seconds"], lower_is_better=True, digits=1)

    header = ("", "Portcullis", other, "ratio")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    print()
    print(f"{header[0]:<{widths[0]}}  {header[1]:>{widths[1]}}  {header[2]:>{widths[2]}}  {header[3]:>{widths[3]}}")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}")
    print()
    print(f"openssl speed bound: {bound['full_handshakes_per_core_second']:,.0f} full handshakes per core-second "
          f"(ECDSA P-256 sign {bound['ecdsa_p256_sign_per_s']:,.0f}/s, verify {bound['ecdsa_p256_verify_per_s']:,.0f}/s, "
          f"X25519 {bound['x25519_per_s']:,.0f}/s)")
    print(f"ratio: Portcullis / {other} (for latency and memory, {other} / Portcullis): above 1 favours Portcullis")


def fmt(value, digits=0):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


if __name__ == "__main__":
    main()
