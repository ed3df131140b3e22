"""etcd discovery: how long until a registration is in another process's endpoint table.

A real single-member etcd (``/usr/bin/etcd``, temporary data, free loopback ports) holds 1,000
registered instances of service ``bench``, each with its own lease, renewed in the background at
the rate the chassis would renew them (every TTL/3, so 1,000 / 3.3 s ≈ 300 keep-alives/s with
the default 10 s TTL). A *watcher* process runs ``EtcdResolver`` and subscribes to ``bench``;
its listener prints when an URL appears or disappears. The bench process then, N times:

1. registers one more instance exactly as ``shoal serve`` does (``EtcdRegistration.start()``:
   lease grant + put, on its thread) and measures until the watcher's table shows it;
2. deregisters it (``deregister()``: lease revoke, as on drain) and measures until it is gone.

Times are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for all processes of the machine).

    .venv/bin/python bench/etcd_watch.py [--instances 1000] [--samples 300] [--no-keepalive]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.etcd_discovery.cluster import EtcdCluster, etcd_available  # noqa: E402

from shoal.discovery import (  # noqa: E402 - after the path setup
    EtcdClient,
    EtcdRegistration,
    EtcdResolver,
    instance_key,
)
from shoal.discovery._etcd_table import encode_record  # noqa: E402

SERVICE = "bench"


# -- the watcher process -----------------------------------------------------------------------


def watcher(config: str, expect: int) -> None:
    resolver = EtcdResolver(config)
    known: set[str] = set()
    lock = threading.Lock()
    synced = threading.Event()

    def listener(endpoints) -> None:
        now = time.monotonic()
        urls = {e.url for e in endpoints}
        with lock:
            added, removed = urls - known, known - urls
            known.clear()
            known.update(urls)
        probe = "http://127.0.0.1:"  # the measured instances; not the 1,000 preloaded
        out = [f"seen {url} {now:.6f}" for url in added if url.startswith(probe)]
        out += [f"gone {url} {now:.6f}" for url in removed if url.startswith(probe)]
        if len(urls) >= expect and not synced.is_set():
            synced.set()
            out.append(f"ready {len(urls)}")
        if out:
            sys.stdout.write("\n".join(out) + "\n")
            sys.stdout.flush()

    resolver.subscribe(SERVICE, listener)
    sys.stdin.read()  # until the parent closes our stdin
    resolver.close()


# -- the bench process -------------------------------------------------------------------------


class Watcher:
    """The watcher child and the times it reported, per URL."""

    def __init__(self, config: str, expect: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--watcher", config, "--instances", str(expect)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "SHOAL_LOG_LEVEL": "WARNING"},
        )
        self.seen: dict[str, float] = {}
        self.gone: dict[str, float] = {}
        self.ready = threading.Event()
        self.table_size = 0
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if not parts:
                continue
            with self._cond:
                if parts[0] == "seen":
                    self.seen[parts[1]] = float(parts[2])
                elif parts[0] == "gone":
                    self.gone[parts[1]] = float(parts[2])
                elif parts[0] == "ready":
                    self.table_size = int(parts[1])
                    self.ready.set()
                self._cond.notify_all()

    def wait(self, table: dict[str, float], url: str, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        with self._cond:
            while url not in table:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{url} not reported within {timeout}s")
                self._cond.wait(left)
            return table[url]

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def preload(client: EtcdClient, prefix: str, count: int, ttl: int) -> list[int]:
    """``count`` instances, each under a lease of its own; their lease ids."""
    leases = []
    for i in range(count):
        lease, _ = client.grant(ttl)
        instance = f"pre-{i:04d}"
        url = f"http://10.0.{i // 250}.{i % 250 + 1}:8000"
        client.put(instance_key(prefix, SERVICE, instance),
                   encode_record(service=SERVICE, instance=instance, url=url), lease=lease)
        leases.append(lease)
    return leases


def keepalive_load(endpoints: list[str], leases: list[int], ttl: int,
                   stop: threading.Event) -> None:
    """Renew every lease once per ttl/3, evenly spread: the fleet's steady keep-alive load."""
    period = (ttl / 3) / len(leases)
    with EtcdClient(endpoints) as client:
        next_at = time.monotonic()
        while not stop.is_set():
            for lease in leases:
                if stop.is_set():
                    return
                client.keepalive(lease)
                next_at += period
                delay = next_at - time.monotonic()
                if delay > 0:
                    stop.wait(delay)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"| {name} | {len(ms)} | {pct(ms, 0.5):.2f} | {pct(ms, 0.99):.2f} | "
            f"{max(ms):.2f} | {statistics.fmean(ms):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--ttl", type=int, default=10, help="lease TTL of every instance (s)")
    parser.add_argument("--no-keepalive", action="store_true",
                        help="no background keep-alive load for the preloaded instances")
    parser.add_argument("--watcher", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.watcher:
        watcher(args.watcher, args.instances)
        return
    if not etcd_available():
        sys.exit("etcd not found (/usr/bin/etcd): apt install etcd-server")

    with tempfile.TemporaryDirectory() as tmp, EtcdCluster(1, Path(tmp)) as cluster:
        config = cluster.discovery("/bench")
        endpoints = cluster.endpoints()
        prefix = "/bench/services/"
        started = time.monotonic()
        with EtcdClient(endpoints) as client:
            leases = preload(client, prefix, args.instances, args.ttl)
        print(f"preloaded {args.instances} instances in {time.monotonic() - started:.1f}s")
        stop = threading.Event()
        if not args.no_keepalive:
            threading.Thread(target=keepalive_load, args=(endpoints, leases, args.ttl, stop),
                             daemon=True).start()
        watch = Watcher(config, args.instances)
        try:
            if not watch.ready.wait(30):
                sys.exit("watcher did not sync")
            print(f"watcher synced: {watch.table_size} instances in its table")
            register, deregister = [], []
            rng = random.Random(7)
            for i in range(args.samples):
                url = f"http://127.0.0.1:{20000 + i}"
                registration = EtcdRegistration(config, service=SERVICE, instance=f"s-{i}",
                                                url=url, ttl=args.ttl)
                t0 = time.monotonic()
                registration.start()
                register.append(watch.wait(watch.seen, url) - t0)
                t1 = time.monotonic()
                registration.close()
                deregister.append(watch.wait(watch.gone, url) - t1)
                time.sleep(rng.uniform(0, 0.02))  # decorrelate from the keep-alive rhythm
        finally:
            stop.set()
            watch.stop()
    load = "off" if args.no_keepalive else f"{args.instances * 3 / args.ttl:.0f}/s"
    print(f"\n{args.instances} registered instances, keep-alive load {load}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| propagation | samples | p50 ms | p99 ms | max ms | mean ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print(report("register → in the other process's table", register))
    print(report("deregister (drain) → gone from it", deregister))


if __name__ == "__main__":
    main()
