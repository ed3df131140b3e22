"""Observability costs: log ingest, a ``--trace`` query over 1,000,000 lines, scraping 50 instances.

1. **Ingest.** Chassis-shaped JSON lines (one in ten a plain, non-JSON line) are handed to
   ``LogStore.add`` as the supervisor's ``on_line`` does, as fast as one thread can; the clock
   stops when ``flush()`` says every line is committed. Reports lines/s end to end and the cost
   of the call the event loop makes per line.
2. **Query.** The store is filled to ``--lines`` (default 1,000,000; a trace is five lines from
   three services), then ``query(trace_id=...)`` runs for random traces: median and worst.
3. **Scrape.** A helper process serves a realistic ``/metrics`` exposition (the chassis'
   registry with 12 routes and two upstreams: ~600 lines) on 50 loopback ports; the
   :class:`Scraper` scrapes all 50 every ``--interval`` seconds for ``--seconds``. Reports this
   process's CPU time over wall time (percent of one core).

    .venv/bin/python bench/logs.py [--lines 1000000] [--interval 2] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from shoal.platform._logstore import LogStore  # noqa: E402
from shoal.platform._registry import READY, InstanceRecord, Registry  # noqa: E402
from shoal.platform._scraper import Scraper  # noqa: E402

SERVICES = ("gateway", "orders", "users")


def make_lines(n: int, start: float) -> list[tuple[str, str, str]]:
    out = []
    for i in range(n):
        trace = f"{i // 5:032x}"
        service = SERVICES[i % 3]
        if i % 10 == 9:
            out.append((service, f"{service}-1", f"plain line {i} from a library"))
            continue
        ts = start + i * 0.0001
        millis = int(ts * 1000) % 1000
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{millis:03d}Z"
        out.append((service, f"{service}-{i % 2 + 1}", json.dumps({
            "ts": stamp, "level": "info", "service": service, "instance": f"{service}-1",
            "trace_id": trace, "span_id": f"{i:016x}", "request_id": f"{i:032x}",
            "event": "request", "logger": "shoal.access", "method": "GET",
            "path": f"/users/{i}", "route": "/users/{id}", "status": 200,
            "duration_ms": 1.234})))
    return out


def bench_ingest(path: Path, n: int) -> tuple[float, float]:
    lines = make_lines(n, time.time() - 3600)
    store = LogStore(path)
    started = time.perf_counter()
    for service, instance, line in lines:
        store.add(service, instance, line)
    added = time.perf_counter()
    assert store.flush(300)
    elapsed = time.perf_counter() - started
    store.close()
    return n / elapsed, (added - started) / n * 1e6


def fill(path: Path, total: int) -> None:
    store = LogStore(path, max_bytes=1 << 40)  # keep every line: the point is a full store
    chunk = 100_000
    have = 0
    # Continue the trace numbering so every trace id is unique.
    import sqlite3  # noqa: PLC0415

    db = sqlite3.connect(path)
    (have,) = db.execute("SELECT count(*) FROM logs").fetchone()
    db.close()
    base = time.time() - 3600
    while have < total:
        n = min(chunk, total - have)
        for service, instance, line in make_lines(have + n, base)[have:]:
            store.add(service, instance, line)
        assert store.flush(600)
        have += n
    store.close()


def bench_query(path: Path, total: int, samples: int = 50) -> tuple[float, float, int]:
    store = LogStore(path, max_bytes=1 << 40)
    times = []
    found = 0
    traces = total // 5
    for _ in range(samples):
        trace = f"{random.randrange(traces):032x}"
        started = time.perf_counter()
        page = store.query(trace_id=trace)
        times.append((time.perf_counter() - started) * 1000)
        found += len(page.entries)
    store.close()
    return statistics.median(times), max(times), found // samples


SERVE = """
import asyncio, sys
from aiohttp import web
from shoal import _metrics as m
for i in range(12):
    for status in ("200", "404", "500"):
        m.HTTP_REQUESTS.labels("users", "GET", f"/route{i}", status).inc(1000)
        m.HTTP_DURATION.labels("users", "GET", f"/route{i}", status[0] + "xx").observe(0.01)
for up in ("orders", "users"):
    m.CLIENT_CALLS.labels("users", up, "success").inc()
    m.CLIENT_CALL_DURATION.labels("users", up).observe(0.01)
    m.CLIENT_BREAKER_STATE.labels("users", up).set(0)
    m.CLIENT_RETRIES.labels("users", up, "status_503").inc()
    m.CLIENT_EJECTIONS.labels("users", up).inc()
async def metrics(_):
    m.HTTP_REQUESTS.labels("users", "GET", "/route0", "200").inc()
    return web.Response(body=m.render(), content_type="text/plain")
async def main():
    app = web.Application(); app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None); await runner.setup()
    for port in sys.argv[1:]:
        await web.TCPSite(runner, "127.0.0.1", int(port)).start()
    print("ready", len(m.render().splitlines()), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def free_ports(n: int) -> list[int]:
    import socket  # noqa: PLC0415

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def bench_scrape(instances: int, interval: float,
                 seconds: float) -> tuple[float, int, float, int]:
    ports = free_ports(instances)
    proc = subprocess.Popen([sys.executable, "-c", SERVE, *map(str, ports)],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        lines = int(ready[1])
        registry = Registry()
        for i, port in enumerate(ports):
            asyncio.run(registry.upsert(InstanceRecord(id=f"users-{i}", service="users",
                                                       port=port, state=READY, pid=1)))
        scraper = Scraper(registry, interval=interval)

        async def run() -> None:
            task = asyncio.create_task(scraper.run())
            await asyncio.sleep(interval * 1.5)  # warm: connections open
            before = resource.getrusage(resource.RUSAGE_SELF)
            wall = time.perf_counter()
            await asyncio.sleep(seconds)
            after = resource.getrusage(resource.RUSAGE_SELF)
            elapsed = time.perf_counter() - wall
            task.cancel()
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            run.result = (cpu / elapsed * 100, scraper.scrape_errors)  # type: ignore[attr-defined]

        asyncio.run(run())
        percent, errors = run.result  # type: ignore[attr-defined]
        stats = scraper.service_stats("users")
        assert stats is not None, errors
        return percent, lines, scraper.last_scrape_seconds, errors
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--ingest", type=int, default=200_000)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rate, per_add = bench_ingest(Path(tmp) / "ingest.db", args.ingest)
        print(f"ingest: {rate:,.0f} lines/s committed ({args.ingest:,} lines; "
              f"on_line costs {per_add:.2f} µs/line on the event loop)  [target >= 20,000]")
        db = Path(tmp) / "big.db"
        started = time.perf_counter()
        fill(db, args.lines)
        fill_rate = args.lines / (time.perf_counter() - started)
        median, worst, per = bench_query(db, args.lines)
        size = db.stat().st_size / 1e6
        print(f"--trace query over {args.lines:,} lines ({size:,.0f} MB, filled at "
              f"{fill_rate:,.0f} lines/s): median {median:.2f} ms, worst {worst:.2f} ms, "
              f"{per} lines per trace  [target < 200 ms]")
    percent, lines, last, errors = bench_scrape(args.instances, args.interval, args.seconds)
    print(f"scrape: {args.instances} instances x {lines} exposition lines every "
          f"{args.interval:g}s: {percent:.2f}% of one core (one round {last * 1000:.0f} ms, "
          f"{errors} failed scrapes)  [target < 5%]")


if __name__ == "__main__":
    main()
