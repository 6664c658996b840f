#!/usr/bin/env python3
"""Measures the audit log: records written per second through the gateway's writer (each fsync policy), and
how long `portcullis audit query`, `stats` and `verify` take over the log that leaves (1,000,000 records).

Usage: python3 Benchmarks/audit.py [--records N] [--no-build] [--json results.json]

Needs a release build (it runs `swift build -c release` unless --no-build). The logs live in a temporary
directory on the same file system as /tmp; run it on an otherwise idle machine.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, ".build", "release", "portcullis")


def write(directory, records, fsync):
    output = subprocess.run([BINARY, "bench", "audit", "--audit-dir", directory, "--records", str(records),
                             "--fsync", fsync, "--json"], check=True, text=True, capture_output=True).stdout
    return json.loads(output)


def timed(args, repeat=3):
    """Best wall time of `repeat` runs (the first also warms the page cache), and the last run's output size."""
    best, size = None, 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run([BINARY, *args], check=True, capture_output=True)
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
        size = len(result.stdout)
    return {"seconds": best, "output_bytes": size, "output": result.stdout.decode()[:400]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000, help="records in the log that is queried")
    parser.add_argument("--no-build", action="store_true", help="use the existing release build")
    parser.add_argument("--json", help="also write every result to this file")
    options = parser.parse_args()
    if not options.no_build:
        subprocess.run(["swift", "build", "-c", "release", "--product", "portcullis"], cwd=ROOT, check=True)

    work = tempfile.mkdtemp(prefix="portcullis-audit-bench-")
    try:
        results = {"write": {}, "read": {}}
        for fsync in ["batch", "always", "never"]:
            records = options.records if fsync == "batch" else options.records // 4
            results["write"][fsync] = write(os.path.join(work, fsync), records, fsync)
        log = os.path.join(work, "batch")
        common = ["--audit-dir", log]
        results["read"] = {
            "query one identity's refusals": timed(["audit", "query", *common, "--identity", "device-00049", "--decision", "deny"]),
            "query one serial, --jsonl": timed(["audit", "query", *common, "--serial", f"{49:032x}", "--jsonl"]),
            "query a reason in the last hour": timed(["audit", "query", *common, "--since", "1h", "--reason", "certificate_revoked", "--jsonl"]),
            "stats": timed(["audit", "stats", *common]),
            "verify": timed(["audit", "verify", *common], repeat=2),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'writer (one producing thread)':<44}  {'records':>9}  {'records/s':>10}  {'per CPU-s':>10}  {'dropped':>7}  segments")
    for fsync, r in results["write"].items():
        print(f"{'fsync ' + fsync:<44}  {r['records']:>9,}  {r['records_per_second']:>10,.0f}  "
              f"{r['records_per_cpu_second']:>10,.0f}  {r['dropped']:>7}  {r['segments']}")
    batch = results["write"]["batch"]
    print()
    print(f"{'over ' + format(batch['records'], ',') + ' records (' + str(batch['bytes'] // 1048576) + ' MiB, ' + str(batch['segments']) + ' segments)':<44}  {'seconds':>8}")
    for name, r in results["read"].items():
        print(f"{name:<44}  {r['seconds']:>8.2f}")
    if options.json:
        with open(options.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
