"""
Latency of one sandboxed call of `print(1)`: the execution.py of an older commit (in-process
guards only) against the working tree's (bubblewrap namespaces), calls interleaved.

    python -m dev.sandbox_bench --before 0fc575d --repeats 100
    python -m dev.sandbox_bench --before 52d1c3d --without-cgroup   # also the working tree without its cgroup
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import tempfile
import time

import nanochat.execution as after
from nanochat import call_limits

parser = argparse.ArgumentParser(description="Sandbox latency before/after")
parser.add_argument("--before", type=str, default="0fc575d", help="git revision whose nanochat/execution.py is 'before'")
parser.add_argument("--repeats", type=int, default=100, help="calls per version")
parser.add_argument("--without-cgroup", action="store_true",
                    help="also time the working tree with its per-call cgroup switched off (what joining it costs)")
args = parser.parse_args()

source = subprocess.run(["git", "show", f"{args.before}:nanochat/execution.py"], capture_output=True, text=True,
                        check=True).stdout
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "execution_before.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("execution_before", path)
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)

print(after.describe_sandbox())
versions = {f"before ({args.before})": before.execute_code, "after (working tree)": after.execute_code}
if args.without_cgroup:
    def without_cgroup(code):
        real, call_limits.cgroups = call_limits.cgroups, lambda: (None, "switched off by --without-cgroup")
        try:
            return after.execute_code(code)
        finally:
            call_limits.cgroups = real
    versions["after, no cgroup"] = without_cgroup
times = {name: [] for name in versions}
for fn in versions.values():  # warm up: probe, page cache
    assert fn("print(1)").stdout == "1\n"
for _ in range(args.repeats):
    for name, fn in versions.items():
        t0 = time.perf_counter()
        result = fn("print(1)")
        times[name].append(time.perf_counter() - t0)
        assert result.success and result.stdout == "1\n", (name, result)
for name, ts in times.items():
    q = statistics.quantiles(ts, n=10)
    print(f"{name:<24} median {statistics.median(ts) * 1e3:6.1f} ms   p10 {q[0] * 1e3:6.1f}   p90 {q[-1] * 1e3:6.1f}"
          f"   ({len(ts)} calls)")
