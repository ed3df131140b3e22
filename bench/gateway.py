"""Gateway benchmark: the Shoal gateway vs nginx in front of the same two backend replicas.

Two backend replicas (a raw ASGI app on uvicorn + uvloop + httptools answering a small JSON
body) sit behind both proxies at once:

* **nginx** (the Debian package, ``/usr/sbin/nginx``): one worker, an ``upstream`` block with
  both replicas and keep-alive connections, ``X-Forwarded-*`` set, an access log written;
  started as our own non-daemon child (``-p TMP -c nginx.conf -g 'daemon off;'``);
* **shoal gateway**: ``python -m shoal serve shoal.platform.gateway:app`` with a spec written
  to the temp dir (route ``/api/users`` → ``users``, rewrite to ``/``), discovery
  ``static:users=B1,B2``, its JSON access log on.

``wrk`` loads one proxy at a time, rounds alternate (order rotated), and the table reports
medians and the median of per-round ratios (gateway / nginx in the same round).

    .venv/bin/python bench/gateway.py [--rounds 7] [--duration 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench._harness import (
    ROOT,
    Sample,
    add_arguments,
    apply_quick,
    command_line,
    free_port,
    machine,
    run_wrk,
    stop_group,
)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PAYLOAD = b'{"id":42,"name":"Ada Lovelace","email":"ada@example.com","active":true}'
PATH = "/api/users/item"


async def backend(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The backend replica: a raw ASGI app (as cheap as Python serving gets)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(PAYLOAD)).encode())]})
    await send({"type": "http.response.body", "body": PAYLOAD})


NGINX_CONF = """
worker_processes {workers};
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream users {{
        server 127.0.0.1:{b1};
        server 127.0.0.1:{b2};
        keepalive {keepalive};
    }}
    server {{
        listen 127.0.0.1:{port};
        location /api/users/ {{
            proxy_pass http://users/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_read_timeout 10s;
        }}
    }}
}}
"""

SPEC = """
system: bench
services:
  users: {{app: "bench.gateway:backend"}}
gateway:
  port: {port}
  routes:
    - {{prefix: /api/users, service: users, rewrite: /}}
"""


class Proc:
    """A child process we started in its own session; stopped by its PID (group) only."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_ready(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_group(self.proc)

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its children (nginx's worker) so far."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the process and its children so far."""
        user = system = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    user += t.user
                    system += t.system
        except psutil.Error:
            pass
        return user, system


class _Group:
    """Several processes measured together."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.procs)

    def cpu_split(self) -> tuple[float, float]:
        splits = [p.cpu_split() for p in self.procs]
        return sum(u for u, _ in splits), sum(s for _, s in splits)


def shoal_serve(target: str, port: int) -> list[str]:
    return [sys.executable, "-m", "shoal", "serve", target, "--port", str(port)]


@contextlib.contextmanager
def fleet(
    tmp: Path, gateway_target: str, gateway_env: dict[str, str], workers: int = 1,
    connections: int = 32,
) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """Two backends, nginx and the gateway (``workers`` nginx workers and as many gateway
    replicas sharing its port with ``SO_REUSEPORT``, as ``shoal up`` runs them); yields
    (name → URL, name → process or group). Always stops all of them."""
    procs: list[Proc] = []
    try:
        b1, b2 = free_port(), free_port()
        env = {"SHOAL_SERVICE": "users", "SHOAL_DRAIN_GRACE": "1"}
        for port in (b1, b2):
            proc = Proc(f"backend:{port}", shoal_serve("bench.gateway:backend", port),
                        env, tmp / f"backend-{port}.log")
            procs.append(proc)
            proc.wait_ready(f"http://127.0.0.1:{port}/item")
        nginx_port, gateway_port = free_port(), free_port()
        conf = tmp / "nginx.conf"
        # (upstream keep-alive connections at least as many as wrk's, so nginx never has to
        # open a new upstream connection per request, as the gateway's pool never does)
        conf.write_text(NGINX_CONF.format(tmp=tmp, b1=b1, b2=b2, port=nginx_port,
                                          workers=workers, keepalive=max(64, connections)))
        nginx = Proc("nginx", [NGINX, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"],
                     {}, tmp / "nginx.out")
        procs.append(nginx)
        spec = tmp / "shoal.yaml"
        spec.write_text(SPEC.format(port=gateway_port))
        replicas = []
        for i in range(workers):
            own = gateway_port if workers == 1 else free_port()
            replica = Proc(
                f"gateway-{i}", shoal_serve(gateway_target, own),
                {"SHOAL_GATEWAY_SPEC": str(spec), "SHOAL_DRAIN_GRACE": "1",
                 "SHOAL_DISCOVERY": f"static:users=http://127.0.0.1:{b1},http://127.0.0.1:{b2}",
                 **({} if workers == 1 else {"SHOAL_SHARED_PORT": str(gateway_port)}),
                 **gateway_env},
                tmp / f"gateway-{i}.log",
            )
            procs.append(replica)
            replicas.append(replica)
            replica.wait_ready(f"http://127.0.0.1:{own}/readyz")
        urls = {"nginx": f"http://127.0.0.1:{nginx_port}{PATH}",
                "shoal gateway": f"http://127.0.0.1:{gateway_port}{PATH}"}
        nginx.wait_ready(urls["nginx"])
        replicas[0].wait_ready(urls["shoal gateway"])
        yield urls, {"nginx": nginx, "shoal gateway": _Group(replicas),
                     "backends": _Group(procs[:2])}
    finally:
        for proc in reversed(procs):
            proc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--gateway", default="shoal.platform.gateway:app",
                        help="the gateway app to serve (module:attribute)")
    parser.add_argument("--workers", type=int, default=1,
                        help="nginx worker processes, and gateway replicas sharing the port "
                             "(SO_REUSEPORT), default 1")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the gateway process (repeatable)")
    args = parser.parse_args()
    apply_quick(args)
    gateway_env = dict(item.split("=", 1) for item in args.gateway_env)
    names = ["nginx", "shoal gateway"]
    samples: dict[str, list[Sample]] = {n: [] for n in names}
    # CPU microseconds per request, per round: the proxy's own, and the two backends'.
    cpu: dict[str, list[float]] = {n: [] for n in names}
    kernel: dict[str, list[float]] = {n: [] for n in names}
    backend_cpu: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-gw-") as tmpdir:
        tmp = Path(tmpdir)
        with fleet(tmp, args.gateway, gateway_env, args.workers,
                   args.connections) as (urls, procs):
            for name in names:
                run_wrk(urls[name], duration=args.warmup, connections=args.connections,
                        threads=args.threads)
            for r in range(args.rounds):
                order = names if r % 2 == 0 else names[::-1]
                for name in order:
                    split = procs[name].cpu_split()
                    before = procs[name].cpu_seconds(), procs["backends"].cpu_seconds()
                    s = run_wrk(urls[name], duration=args.duration,
                                connections=args.connections, threads=args.threads)
                    after = procs[name].cpu_seconds(), procs["backends"].cpu_seconds()
                    requests = max(1.0, s.rps * args.duration)
                    cpu[name].append((after[0] - before[0]) / requests * 1e6)
                    kernel[name].append((procs[name].cpu_split()[1] - split[1]) / requests * 1e6)
                    backend_cpu[name].append((after[1] - before[1]) / requests * 1e6)
                    samples[name].append(s)
                    print(f"  round {r + 1}/{args.rounds}  {name:<14} {s.rps:9.0f} req/s  "
                          f"p99 {s.p99_ms:7.2f} ms  proxy CPU {cpu[name][-1]:6.1f} us/req  "
                          f"errors {s.non_2xx + s.socket_errors}", flush=True)
            gateway_lines = sum(1 for i in range(args.workers)
                                for line in (tmp / f"gateway-{i}.log").open("rb")
                                if b'"shoal.access"' in line)
    base = samples["nginx"]
    print()
    print(f"Machine: {machine(['uvicorn', 'uvloop', 'httptools', 'aiohttp'])}")
    print(f"Command: {command_line()}")
    print(f"Processes per proxy: {args.workers} (nginx workers / gateway replicas)")
    print(f"Gateway access-log lines written: {gateway_lines}")
    print()
    print("| proxy | req/s (median) | p99 ms (median) | x nginx req/s (median, min-max) "
          "| proxy CPU us/req (median) | of which kernel | backends CPU us/req (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        ratios = [s.rps / b.rps for s, b in zip(samples[name], base, strict=True)]
        errors = sum(s.non_2xx + s.socket_errors for s in samples[name])
        print(f"| {name}{f' ({errors} errors)' if errors else ''} "
              f"| {statistics.median(s.rps for s in samples[name]):,.0f} "
              f"| {statistics.median(s.p99_ms for s in samples[name]):.2f} "
              f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
              f"| {statistics.median(cpu[name]):.1f} "
              f"| {statistics.median(kernel[name]):.1f} "
              f"| {statistics.median(backend_cpu[name]):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
