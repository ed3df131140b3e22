"""Local platform benchmark: `shoal up` time, control-plane memory, watch propagation.

    .venv/bin/python bench/fleet.py [--runs 5] [--samples 30]

1. `shoal up --detach examples/shop/shoal.yaml` until every replica is ready (`--runs` times,
   fresh state dir each time): median and max seconds. Target < 10 s.
2. The control plane's RSS with the shop running (psutil). Target < 150 MB.
3. Watch propagation: a separate fleet of a small test service is scaled up and down; for each
   new replica, the time from the registry marking it ready (`ready_since`) to a client's
   LocalResolver table containing it. p50/p99. Target p99 < 200 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from shoal.discovery._local import LocalResolver  # noqa: E402
from shoal.testing import free_port  # noqa: E402


def shoal(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


def up_times(runs: int) -> tuple[list[float], list[float]]:
    times, rss = [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            state = str(Path(tmp) / ".shoal")
            start = time.monotonic()
            result = shoal("up", "examples/shop/shoal.yaml", "--detach", "--state-dir", state)
            elapsed = time.monotonic() - start
            if result.returncode != 0:
                raise SystemExit(result.stderr)
            times.append(elapsed)
            pid = json.loads((Path(state) / "control.json").read_text())["pid"]
            time.sleep(3)  # let it settle: probes running, nothing starting
            rss.append(psutil.Process(pid).memory_info().rss / 2**20)
            down = shoal("down", "--state-dir", state)
            if down.returncode != 0:
                raise SystemExit(down.stderr)
    return times, rss


def propagation(samples: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        spec = Path(tmp) / "shoal.yaml"
        spec.write_text(f"system: bench\ncontrol: {{port: {port}}}\nservices:\n"
                        "  api: {app: 'tests.apps.chassis_fastapi:app', replicas: 1}\n")
        state = Path(tmp) / ".shoal"
        result = shoal("up", str(spec), "--detach", "--state-dir", str(state))
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        token = (state / "token").read_text().strip()
        resolver = LocalResolver(f"http://127.0.0.1:{port}", token)
        seen: dict[str, float] = {}
        lock = threading.Lock()

        def listener(table: object) -> None:
            now = time.time()
            with lock:
                for endpoint in table:  # type: ignore[attr-defined]
                    seen.setdefault(endpoint.url, now)

        resolver.subscribe("api", listener)
        delays = []
        try:
            for _ in range(samples):
                shoal("scale", "api", "2", "--state-dir", str(state))
                deadline = time.monotonic() + 30
                while True:
                    ps = json.loads(shoal("ps", "--json", "--state-dir", str(state)).stdout)
                    new = max(ps["services"][0]["instances"], key=lambda i: i["started_at"])
                    if new["ready_since"] or time.monotonic() > deadline:
                        break
                deadline = time.monotonic() + 5
                while new["url"] not in seen and time.monotonic() < deadline:
                    time.sleep(0.005)
                with lock:
                    delays.append((seen.pop(new["url"]) - new["ready_since"]) * 1000)
                shoal("scale", "api", "1", "--state-dir", str(state))
        finally:
            resolver.close()
            shoal("down", "--state-dir", str(state))
    return delays


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    times, rss = up_times(args.runs)
    delays = propagation(args.samples)
    print(f"{'measure':<44} {'median':>9} {'p99/max':>9} {'target':>9}")
    print(f"{'shoal up (shop, until all ready), s':<44} {statistics.median(times):>9.2f} "
          f"{max(times):>9.2f} {'< 10':>9}")
    print(f"{'control plane RSS with the shop, MB':<44} {statistics.median(rss):>9.1f} "
          f"{max(rss):>9.1f} {'< 150':>9}")
    print(f"{'watch propagation (ready -> client), ms':<44} {statistics.median(delays):>9.1f} "
          f"{pct(delays, 0.99):>9.1f} {'< 200':>9}")
    print(f"(runs={args.runs}, propagation samples={len(delays)})")


if __name__ == "__main__":
    main()
