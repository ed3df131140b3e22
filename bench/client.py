"""A → B benchmark: plain aiohttp ``ClientSession`` vs Shoal's ``AsyncClient`` in service A.

Service B (2 instances) answers a small JSON document. Service A exists twice, identical but
for the client: ``/call`` makes one GET to B per request - through a plain ``ClientSession``
(round-robin over B's two URLs with ``itertools.cycle``) or through ``shoal.client.AsyncClient``
(P2C balancing, outlier detection, breaker, bulkhead, retry budget and context propagation all
on). All four are uvicorn processes (uvloop, httptools); load comes from ``wrk`` (or, without
it, an aiohttp load loop in a separate process), alternating the two A's round by round.

    .venv/bin/python bench/client.py [--rounds 7] [--duration 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
from fastapi import FastAPI
from fastapi.responses import Response

from shoal.client import AsyncClient
from shoal.discovery import StaticResolver

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b'{"id":42,"name":"Ada Lovelace","email":"ada@example.com","active":true}'

# ---------------------------------------------------------------------------- the apps


def _b_urls() -> list[str]:
    return os.environ["BENCH_B"].split(",")


def make_b() -> FastAPI:

    app = FastAPI()

    @app.get("/item")
    async def item() -> Response:
        return Response(PAYLOAD, media_type="application/json")

    @app.get("/livez")
    async def livez() -> Response:
        return Response(b"ok")

    return app


def make_a_plain() -> FastAPI:

    urls = itertools.cycle([u + "/item" for u in _b_urls()])
    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["session"] = aiohttp.ClientSession()
        yield
        await state["session"].close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/call")
    async def call() -> Response:
        async with state["session"].get(next(urls)) as resp:
            body = await resp.read()
        return Response(body, media_type="application/json")

    @app.get("/livez")
    async def livez() -> Response:
        return Response(b"ok")

    return app


def make_a_shoal() -> FastAPI:

    client = AsyncClient(service="bench-a", resolver=StaticResolver({"b": _b_urls()}))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/call")
    async def call() -> Response:
        resp = await client.get("http://b/item")
        return Response(resp.content, media_type="application/json")

    @app.get("/livez")
    async def livez() -> Response:
        return Response(b"ok")

    return app


_ROLE = os.environ.get("BENCH_ROLE")
if _ROLE == "b":
    app = make_b()
elif _ROLE == "plain":
    app = make_a_plain()
elif _ROLE == "shoal":
    app = make_a_shoal()

# ---------------------------------------------------------------------------- the harness


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, role: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "uvicorn", "client:app", "--app-dir", str(ROOT / "bench"),
            "--host", "127.0.0.1", "--port", str(self.port), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning",
        ]
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **env, "BENCH_ROLE": role}, cwd=ROOT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server on {self.port} exited with {self.proc.returncode}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/livez", timeout=1) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"server on {self.port} not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def run_wrk(url: str, duration: float, connections: int) -> tuple[float, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx responses")
    return rps, float(p50.group(1)) * scale


_LOADER = """
import asyncio, sys, time, aiohttp
async def main(url, duration, connections):
    done = 0; lat = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        end = time.perf_counter() + duration
        async def worker():
            nonlocal done
            while time.perf_counter() < end:
                t = time.perf_counter()
                async with s.get(url) as r:
                    await r.read(); assert r.status == 200
                lat.append(time.perf_counter() - t); done += 1
        await asyncio.gather(*(worker() for _ in range(connections)))
    lat.sort(); print(done / duration, lat[len(lat) // 2] * 1000)
asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
"""


def run_loader(url: str, duration: float, connections: int) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", _LOADER, url, str(duration), str(connections)],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--loader", choices=["wrk", "aiohttp"], default=None)
    args = parser.parse_args()
    loader = args.loader or ("wrk" if shutil.which("wrk") else "aiohttp")
    load = run_wrk if loader == "wrk" else run_loader

    servers: list[Server] = []
    try:
        bs = [Server("b", {}) for _ in range(2)]
        servers += bs
        env = {"BENCH_B": ",".join(b.url for b in bs)}
        plain, shoal = Server("plain", env), Server("shoal", env)
        servers += [plain, shoal]
        for server in servers:
            server.wait_ready()
        for a in (plain, shoal):  # warm-up: pools, caches, JIT-free but branch-warm
            load(a.url + "/call", 2.0, args.connections)

        print(f"A→B, {loader}, {args.connections} connections, {args.duration:g}s rounds, "
              f"{os.cpu_count()} cores")
        print(f"{'round':>5} {'plain req/s':>12} {'shoal req/s':>12} {'ratio':>6} "
              f"{'plain p50 ms':>13} {'shoal p50 ms':>13}")
        rows = []
        for i in range(args.rounds):
            order = [(plain, "plain"), (shoal, "shoal")]
            if i % 2:
                order.reverse()  # alternate who goes first, so drift hits both equally
            result = {name: load(a.url + "/call", args.duration, args.connections)
                      for a, name in order}
            (p_rps, p_lat), (s_rps, s_lat) = result["plain"], result["shoal"]
            rows.append((p_rps, s_rps, s_rps / p_rps, p_lat, s_lat))
            print(f"{i + 1:>5} {p_rps:>12.0f} {s_rps:>12.0f} {s_rps / p_rps:>6.2f} "
                  f"{p_lat:>13.2f} {s_lat:>13.2f}")
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        print(f"{'med':>5} {med[0]:>12.0f} {med[1]:>12.0f} {med[2]:>6.2f} "
              f"{med[3]:>13.2f} {med[4]:>13.2f}")
        print(f"ratio of medians (shoal/plain req/s): {med[1] / med[0]:.2f}")
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
