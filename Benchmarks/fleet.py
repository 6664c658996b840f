#!/usr/bin/env python3
"""A fleet on one gateway: N devices, each with a certificate and identity of its own (CN fleet-<n>) and allowed to
subscribe only to its own devices/fleet-<n>/commands/#, connect and subscribe, are held for a while (the gateway
pings each every 20 s and they answer), while `portcullis bench fleet` samples the gateway's memory, descriptors and
CPU time and an operator session sends commands to random devices; then every device drops its connection (TCP
reset) and all reconnect at once, resuming their TLS sessions. Afterwards the audit log must verify.

The gateway's process may hold N sessions only if its open-file limit leaves room for them beside 128 kept back
(19,000 under the 20,000 these machines allow); the load generator holds as many, so it needs the same limit.

Usage: python3 Benchmarks/fleet.py [N] [--hold 10m] [--ping-interval 20s] [--ping-timeout 20s] [--binary BINARY]
                                  [--json results.json] [--keep]
       (N defaults to 19,000; a release build by default: swift build -c release --product portcullis)
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the shared PKI, port and process helpers)

parser = argparse.ArgumentParser()
parser.add_argument("devices", nargs="?", type=int, default=19_000)
parser.add_argument("--hold", default="10m")
parser.add_argument("--commands-per-second", default="20")
parser.add_argument("--subscriptions-per-device", default="1",
                    help="filters each device holds: its commands/#, then commands/<k>/# under it")
parser.add_argument("--ping-interval", help="the gateway's ping_interval (default 20s)")
parser.add_argument("--ping-timeout", help="the gateway's ping_timeout (default 20s)")
parser.add_argument("--binary", default=run.BINARY)
parser.add_argument("--json")
parser.add_argument("--keep", action="store_true", help="keep the work directory (PKI, configuration, audit log)")
arguments = parser.parse_args()
run.BINARY = os.path.abspath(arguments.binary)
if not os.access(run.BINARY, os.X_OK):
    sys.exit(f"{run.BINARY} is missing: swift build -c release --product portcullis, or give --binary")

class PhaseLag:
    """Reads the gateway's event-loop lag from /metrics every half second and charges what grew to the phase the
    load generator's progress says it is in (issuing certificates, ramp, hold, storm), so a stall has a phase."""

    def __init__(self, admin):
        self.admin, self.phase, self.stopped, self.lock = admin, "start", threading.Event(), threading.Lock()
        self.per_phase = {}  # phase -> {"probes", "later_than_10ms", "later_than_100ms", "worst_seconds"}
        self.last = self.read()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def read(self):
        """The lag figures now, or None when /metrics did not answer (that half second is charged with the next)."""
        try:
            worst, buckets = run.event_loop_lag(self.admin)
        except (OSError, ValueError, KeyError, AttributeError):
            return None
        return worst, buckets["+Inf"], buckets["+Inf"] - buckets["0.01"], buckets["+Inf"] - buckets["0.1"]

    def progress(self, line):
        for marker, phase in (("certificates issued", "issuing certificates"), ("fleet ramp:", "ramp"),
                              ("connected; server RSS", "hold"), ("fleet storm:", "storm")):
            if marker in line and phase != self.phase:
                with self.lock:
                    self.charge_locked()  # what happened so far belongs to the phase that is ending
                    self.phase = phase

    def charge(self):
        with self.lock:  # the poller and the progress reader both charge
            self.charge_locked()

    def charge_locked(self):
        now = self.read()
        if now is None or self.last is None:
            self.last = now or self.last
            return
        entry = self.per_phase.setdefault(self.phase, {"probes": 0, "later_than_10ms": 0, "later_than_100ms": 0,
                                                       "worst_seconds": 0.0})
        entry["probes"] += now[1] - self.last[1]
        entry["later_than_10ms"] += now[2] - self.last[2]
        entry["later_than_100ms"] += now[3] - self.last[3]
        if now[0] > self.last[0]:  # the gauge is the worst since start: it names a phase only when it grows
            entry["worst_seconds"] = max(entry["worst_seconds"], now[0])
        self.last = now

    def poll(self):
        while not self.stopped.wait(0.5):
            self.charge()

    def stop(self):
        self.stopped.set()
        self.thread.join()
        self.charge()

    def summary(self):
        return self.per_phase


work = tempfile.mkdtemp(prefix="portcullis-fleet-")
pki, _ = run.make_pki(work)
os.makedirs(f"{work}/policies")
with open(f"{work}/policies/fleet.yaml", "w") as f:
    f.write(f"""identity_mapping:
  - {{source: cn, match: "fleet-*", identity: "{{value}}", groups: [fleet]}}
  - source: cn
rules:
  - name: fleet
    groups: [fleet]
    routes: [/v1/messages]
    allow_missing_origin: true
    publish: ["devices/{{identity}}/telemetry"]
    subscribe: ["devices/{{identity}}/commands/#"]
  - name: operator
    identities: [{run.IDENTITY}]
    routes: [/v1/messages]
    allow_missing_origin: true
    publish: ["devices/+/commands/#"]
""")
port, admin = run.free_port(), run.free_port()
pings = "".join(f"{key}: {value}\n" for key, value in
                [("ping_interval", arguments.ping_interval), ("ping_timeout", arguments.ping_timeout)] if value)
run.write_fleet_gateway_config(
    f"{work}/gateway.yaml", work, pki, port, admin=f"127.0.0.1:{admin}", max_connections="off", extra=pings)
log = open(f"{work}/gateway.log", "w")
gateway = subprocess.Popen([run.BINARY, "serve", "--config", f"{work}/gateway.yaml"], stdout=log, stderr=subprocess.STDOUT)
bench = None
try:
    run.wait_for_port(port, gateway, "the gateway")
    bench = subprocess.Popen([
        run.BINARY, "bench", "fleet", "--url", f"wss://localhost:{port}/v1/messages",
        "--cert", f"{pki}/issued/{run.IDENTITY}.chain.pem", "--key", f"{pki}/private/{run.IDENTITY}.key",
        "--ca", f"{pki}/ca.crt", "--device-ca", pki, "--server-pid", str(gateway.pid),
        "--devices", str(arguments.devices), "--hold", arguments.hold,
        "--commands-per-second", arguments.commands_per_second,
        "--subscriptions-per-device", arguments.subscriptions_per_device,
        # 16 addresses: each reaches the port from some 28,000 ephemeral ports, and a reconnect storm needs fresh ones.
        "--source-addresses", "16", "--concurrency", "16", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    phases = PhaseLag(admin)
    stderr_lines = []
    def follow_progress():
        for line in bench.stderr:
            stderr_lines.append(line)
            phases.progress(line)
    reader = threading.Thread(target=follow_progress, daemon=True)
    reader.start()
    stdout = bench.stdout.read()
    bench.wait()
    reader.join()
    phases.stop()
    if bench.returncode not in (0, 1) or not stdout.strip():
        sys.exit(f"bench fleet failed ({bench.returncode}): {''.join(stderr_lines)[-2000:]}")
    result = json.loads(stdout)
    outcome = bench.returncode
    worst, buckets = run.event_loop_lag(admin)
    result["event_loop_lag"] = {"worst_seconds": worst, "probes": buckets["+Inf"],
                                "later_than_10ms": buckets["+Inf"] - buckets["0.01"], "phases": phases.summary()}
finally:
    if bench is not None and bench.poll() is None:
        bench.kill()
    gateway.terminate()
    gateway.wait(timeout=120)
verify = subprocess.run([run.BINARY, "audit", "verify", "--audit-dir", f"{work}/audit"], capture_output=True, text=True)
result["audit_verify"] = (verify.stdout + verify.stderr).strip()
result["audit_verified"] = verify.returncode == 0

samples = result["samples"]
after_ramp, end = samples[0], samples[-1]
def per_session_ms(cpu, sessions):
    return f"{cpu * 1000 / sessions:.2f} ms of server CPU per session" if cpu is not None and sessions else "server CPU unknown"


print(f"{result['devices']} devices connected and subscribed ({result['devices'] * int(arguments.subscriptions_per_device)} "
      f"subscriptions) in {result['ramp_seconds']:.1f} s, {result['failures']} failed "
      f"({per_session_ms(result.get('ramp_server_cpu_seconds'), result['devices'])})")
print(f"server: {result['server_ki_b_per_device']:.1f} KiB per device; over the {result['hold_seconds']:.0f} s hold "
      f"RSS {after_ramp['resident_ki_b']} -> {end['resident_ki_b']} KiB (max {max(s['resident_ki_b'] for s in samples)}), "
      f"descriptors {after_ramp['open_files']} -> {end['open_files']}")
print(f"server CPU while idle: {result['server_cpu_milliseconds_per_device_hour']:.2f} ms per device-hour")
commands, latency = result["commands"], result["commands"]["latency_microseconds"]
print(f"commands: {commands['delivered']} of {commands['sent']} delivered; latency µs p50 {latency['p50']:.0f} "
      f"p99 {latency['p99']:.0f} p99.9 {latency['p99_9']:.0f} max {latency['max']:.0f}")
print(f"closed by the gateway during the hold: {result['closed_by_server']}")
lag = result["event_loop_lag"]
print(f"event-loop lag over the whole run (ramp and storm included): worst {lag['worst_seconds'] * 1000:.1f} ms, "
      f"{lag['later_than_10ms']:.0f} of {lag['probes']:.0f} probes later than 10 ms")
for phase, entry in lag["phases"].items():
    print(f"  {phase}: {entry['later_than_10ms']:.0f} of {entry['probes']:.0f} probes later than 10 ms, "
          f"{entry['later_than_100ms']:.0f} later than 100 ms"
          + (f", worst {entry['worst_seconds'] * 1000:.1f} ms" if entry["worst_seconds"] else ""))
if result.get("storm"):
    storm = result["storm"]
    print(f"storm: {storm['reconnected']} reconnected ({storm['resumed']} resumed) in {storm['seconds']:.1f} s, "
          f"{storm['failures']} failed ({per_session_ms(storm.get('server_cpu_seconds'), storm['reconnected'])}); then {storm['commands_after']['delivered']} of {storm['commands_after']['sent']} commands delivered")
print(f"audit verify: {'ok' if result['audit_verified'] else 'FAILED'}: {result['audit_verify'].splitlines()[-1] if result['audit_verify'] else ''}")
if result.get("first_error"):
    print(f"first error: {result['first_error']}")
if arguments.json:
    with open(arguments.json, "w") as f:
        json.dump(result, f, indent=2)
if arguments.keep:
    print(f"work directory: {work}")
else:
    shutil.rmtree(work, ignore_errors=True)
sys.exit(0 if outcome == 0 and result["audit_verified"] else 1)
