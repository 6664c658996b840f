#!/usr/bin/env python3
"""A gateway with a fleet-sized policy set: N devices pinned by fingerprint, each with a rule of its own. Starts it,
holds 2,000 sessions, rewrites the policy set and reloads it with SIGHUP, and reads from /metrics how late the event
loops ran what was due (portcullis_event_loop_lag_seconds) before and during the reload; then a 1,000 msg/s pubsub
run for latency. Prints the start and reload times and the lag figures.

Usage: python3 Benchmarks/reload.py [N] [--binary BINARY]     (N defaults to 100,000; a release build by default)
"""
import os, re, shutil, signal, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run
arguments = [a for a in sys.argv[1:] if not a.startswith("--binary")]
if "--binary" in sys.argv:
    run.BINARY = os.path.abspath(sys.argv[sys.argv.index("--binary") + 1])
    arguments.remove(run.BINARY if run.BINARY in arguments else sys.argv[sys.argv.index("--binary") + 1])
N = int(arguments[0]) if arguments else 100_000
if not os.access(run.BINARY, os.X_OK):
    sys.exit(f"{run.BINARY} is missing: swift build -c release --product portcullis, or give --binary")
work = tempfile.mkdtemp(prefix="portcullis-reload-")
pki, subject = run.make_pki(work)
def fp(n): return format(n, "064x")
def write_policy(extra_rule):
    lines = ["identity_mapping:"]
    lines += [f'  - {{source: fingerprint, match: "{fp(i)}", identity: device-{i}}}' for i in range(N)]
    lines += ["  - source: cn", "rules:"]
    lines += [f"  - {{name: d{i}, identities: [device-{i}], routes: [/v1/messages], allow_missing_origin: true, publish: [\"devices/{{identity}}/telemetry\"], subscribe: [\"devices/{{identity}}/commands/#\"]}}" for i in range(N)]
    lines += [f"  - {{name: bench{extra_rule}, identities: [{run.IDENTITY}], routes: [/v1/messages], origins: [\"{run.ORIGIN}\"], publish: [\"bench/#\"], subscribe: [\"bench/#\"]}}"]
    os.makedirs(f"{work}/policies", exist_ok=True)
    with open(f"{work}/policies/fleet.yaml.tmp", "w") as f: f.write("\n".join(lines) + "\n")
    os.rename(f"{work}/policies/fleet.yaml.tmp", f"{work}/policies/fleet.yaml")
write_policy("")
port, admin = run.free_port(), run.free_port()
run.write_fleet_gateway_config(f"{work}/gw.yaml", work, pki, port, admin=f"127.0.0.1:{admin}")
t0 = time.time()
p = subprocess.Popen([run.BINARY, "serve", "--config", f"{work}/gw.yaml"], stdout=open(f"{work}/gw.log", "w"), stderr=subprocess.STDOUT)
run.wait_for_port(port, p, "gw")
print(f"started with {N} devices in {time.time()-t0:.1f} s", flush=True)
def lag():
    return run.event_loop_lag(admin)
print("after start: worst lag", lag()[0], flush=True)
cert = f"{pki}/issued/{run.IDENTITY}.chain.pem"; key = f"{pki}/private/{run.IDENTITY}.key"
common = ["--url", f"wss://127.0.0.1:{port}/v1/messages", "--cert", cert, "--key", key, "--ca", f"{pki}/ca.crt", "--origin", run.ORIGIN, "--server-name", "localhost", "--server-pid", str(p.pid)]
idle = subprocess.Popen([run.BINARY, "bench", "idle", *common, "--sessions", "2000", "--concurrency", "16", "--hold", "60s", "--source-addresses", "8"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
time.sleep(15)
before = lag()
print("with 2,000 sessions open: worst lag", before[0], flush=True)
write_policy("-changed")
t1 = time.time()
p.send_signal(signal.SIGHUP)
# wait for the reload to be logged
while time.time() - t1 < 120:
    if "reloaded" in open(f"{work}/gw.log").read(): break
    time.sleep(0.2)
print(f"reload applied in {time.time()-t1:.1f} s", flush=True)
after = lag()
def over(buckets, limit):
    return buckets["+Inf"] - buckets[limit]
probes = after[1]["+Inf"] - before[1]["+Inf"]
print(f"during the reload: {probes:.0f} probes, {over(after[1], '0.005') - over(before[1], '0.005'):.0f} later than 5 ms, "
      f"{over(after[1], '0.01') - over(before[1], '0.01'):.0f} later than 10 ms; worst lag since start {after[0] * 1000:.1f} ms",
      flush=True)
pub = subprocess.run([run.BINARY, "bench", "pubsub", *common, "--duration", "5s", "--rate", "1000", "--json"], capture_output=True, text=True)
print("pubsub at 1,000 msg/s after the reload, latency in µs:", re.search(r'"latency_microseconds":(\{[^}]*\})', pub.stdout).group(1), flush=True)
print("final worst lag", lag()[0])
idle.kill(); p.terminate(); p.wait()
shutil.rmtree(work, ignore_errors=True)
