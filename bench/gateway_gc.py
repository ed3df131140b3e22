"""The garbage collector's work in the gateway under load: collections per generation, the
objects they freed per request, and the longest pause during the load.

The gateway of ``bench/gateway.py``'s fleet runs with a ``sitecustomize`` (written to a temp
directory, put first on its ``PYTHONPATH``) that times every collection through
``gc.callbacks`` and writes the totals to a file ten times a second. ``wrk`` loads the gateway
(one warm-up, then the measured load); the totals before and after the load give the table.

    .venv/bin/python bench/gateway_gc.py [--duration 5] [--connections 32] [--close] [--src DIR]

``--close`` sends ``Connection: close`` (one connection per request). Reference cycles on the
request path show up as objects freed per request well above zero; full (gen-2) collections
that walk a large heap show up as a long longest pause.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import ROOT, machine, run_wrk
from bench.gateway import fleet

PROBE = '''\
import gc, json, os, threading, time
_OUT = os.environ["SHOAL_BENCH_GC_OUT"]
_stats = {g: {"collections": 0, "collected": 0, "seconds": 0.0, "longest": 0.0}
          for g in (0, 1, 2)}
_start = [0.0]
def _on_gc(phase, info):
    if phase == "start":
        _start[0] = time.perf_counter()
        return
    took = time.perf_counter() - _start[0]
    s = _stats[info["generation"]]
    s["collections"] += 1
    s["collected"] += info["collected"]
    s["seconds"] += took
    s["longest"] = max(s["longest"], took)
gc.callbacks.append(_on_gc)
def _dump():
    while True:
        time.sleep(0.1)
        if os.path.exists(_OUT + ".mark"):  # the load starts: longest pauses from now on
            for s in _stats.values():
                s["longest"] = 0.0
            os.remove(_OUT + ".mark")
        tmp = _OUT + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"stats": _stats, "frozen": gc.get_freeze_count()}, f)
        os.replace(tmp, _OUT)
threading.Thread(target=_dump, daemon=True).start()
'''


def read_stats(path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway wrote no GC statistics")
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load (5)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--close", action="store_true",
                        help="one connection per request (Connection: close)")
    parser.add_argument("--src", metavar="DIR",
                        help="serve the gateway from this source tree instead (e.g. a copy of "
                             "an older src/ without extensions)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-gc-") as tmpdir:
        tmp = Path(tmpdir)
        probe_dir = tmp / "probe"
        probe_dir.mkdir()
        (probe_dir / "sitecustomize.py").write_text(PROBE)
        out = tmp / "gc.json"
        path = ":".join(str(p) for p in (probe_dir, args.src, ROOT) if p)
        env = {"PYTHONPATH": path, "SHOAL_BENCH_GC_OUT": str(out)}
        with fleet(tmp, "shoal.platform.gateway:app", env) as (urls, _):
            url = urls["shoal gateway"]
            headers = ["Connection: close"] if args.close else []
            run_wrk(url, duration=1, connections=args.connections, threads=1,
                    headers=headers)  # warm-up
            mark = out.with_name(out.name + ".mark")
            mark.touch()
            deadline = time.monotonic() + 5
            while mark.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.2)  # (the probe writes its totals ten times a second)
            before = read_stats(out)
            requests = run_wrk(url, duration=args.duration, connections=args.connections,
                               threads=1, headers=headers).requests
            time.sleep(0.2)
            after = read_stats(out)
    print(f"Machine: {machine(['uvloop', 'httptools'])}")
    print(f"Command: {' '.join(['bench/gateway_gc.py', *sys.argv[1:]])}")
    print(f"Requests: {requests:,} in {args.duration:g} s; objects frozen at startup: "
          f"{after['frozen']:,}\n")
    print("| generation | collections | objects freed | freed per request | total ms | "
          "longest ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for gen in ("0", "1", "2"):
        a, b = after["stats"][gen], before["stats"][gen]
        collected = a["collected"] - b["collected"]
        longest = a["longest"] * 1000
        print(f"| {gen} | {a['collections'] - b['collections']:,} | {collected:,} | "
              f"{collected / requests:.3f} | {(a['seconds'] - b['seconds']) * 1000:.1f} | "
              f"{longest:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
