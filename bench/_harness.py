"""Shared benchmark machinery: server processes, ``wrk`` rounds, alternation and the table.

Every variant runs as its own server process on a free loopback port with stdout going to a
file (logs are really written, as in production). ``wrk`` loads one variant at a time; rounds
alternate between the variants (the order rotates each round) so that a noisy neighbour hits
them all alike. We report medians, and each variant's ratio to the baseline as the median of
per-round paired ratios (baseline and variant measured in the same round).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
WRK = shutil.which("wrk") or "/usr/bin/wrk"
PATH = "/hello"


@dataclass(frozen=True, slots=True)
class Variant:
    """One server to measure: a name for the table and the command that serves it on $PORT."""

    name: str
    argv: tuple[str, ...]  # "{port}" is replaced by the port
    env: tuple[tuple[str, str], ...] = ()
    #: A substring every access-log line contains; checked after the run (logs really on).
    log_marker: str | None = None


@dataclass(slots=True)
class Sample:
    rps: float
    p99_ms: float
    non_2xx: int = 0
    socket_errors: int = 0
    requests: int = 0


@dataclass(slots=True)
class Result:
    variant: Variant
    samples: list[Sample] = field(default_factory=list)
    log_lines: int = 0


def shoal_serve(module: str) -> tuple[str, ...]:
    """The documented way: ``python -m shoal serve MODULE:app`` (uvicorn or gunicorn gthread)."""
    return (sys.executable, "-m", "shoal", "serve", module, "--port", "{port}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the servers drain, which is quick when idle), then SIGKILL the group: workers
    (gunicorn's, granian's) share the session/process group we created."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


class Server:
    """A server process we started (its own session, so we stop exactly what we started)."""

    def __init__(self, variant: Variant, workdir: Path) -> None:
        self.variant = variant
        self.port = free_port()
        self.log_path = workdir / f"{re.sub(r'[^a-z0-9]+', '-', variant.name.lower())}.log"
        argv = [a.replace("{port}", str(self.port)) for a in variant.argv]
        env = {**os.environ, "PORT": str(self.port), "SHOAL_SERVICE": "bench",
               "SHOAL_DRAIN_GRACE": "1", "PYTHONPATH": str(ROOT), **dict(variant.env)}
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.variant.name} exited with {self.proc.returncode}; "
                                   f"see {self.log_path}:\n{self.tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url, timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.variant.name} not serving after {timeout}s:\n{self.tail()}")

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        return ""

    def stop(self) -> None:
        stop_group(self.proc)

    def count_log_lines(self, marker: str) -> int:
        count = 0
        with self.log_path.open("rb") as f:
            needle = marker.encode()
            for line in f:
                if needle in line:
                    count += 1
        return count


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _duration_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"unparsable wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> Sample:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if not rps or not p99:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    requests = re.search(r"(\d+) requests in", output)
    return Sample(
        rps=float(rps.group(1)),
        p99_ms=_duration_ms(p99.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        requests=int(requests.group(1)) if requests else 0,
    )


def run_wrk(url: str, *, duration: float, connections: int, threads: int,
            headers: Sequence[str] = ()) -> Sample:
    """One ``wrk`` load of ``url``; ``headers`` as ``"Name: value"`` strings."""
    out = subprocess.run(
        [WRK, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
         "--timeout", "5s", *(arg for header in headers for arg in ("-H", header)), url],
        capture_output=True, text=True, check=True, timeout=duration + 30,
    )
    return parse_wrk(out.stdout)


@contextlib.contextmanager
def servers(variants: Sequence[Variant]) -> Iterator[list[Server]]:
    """Start every variant (each on its own port) and always stop them all."""
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        started: list[Server] = []
        try:
            for v in variants:
                # One at a time, so a failed start still stops the ones before it.
                started.append(Server(v, Path(tmp)))  # noqa: PERF401
            for s in started:
                s.wait_ready()
            yield started
        finally:
            for s in started:
                s.stop()


def measure(variants: Sequence[Variant], args: argparse.Namespace) -> list[Result]:
    """Warm every server up, then ``args.rounds`` rounds, each loading every variant once."""
    results = [Result(v) for v in variants]
    with servers(variants) as running:
        for s in running:
            run_wrk(s.url, duration=args.warmup, connections=args.connections,
                    threads=args.threads)
        n = len(running)
        for r in range(args.rounds):
            order = [(r + i) % n for i in range(n)]  # rotate: nobody always goes first
            for i in order:
                sample = run_wrk(running[i].url, duration=args.duration,
                                 connections=args.connections, threads=args.threads)
                results[i].samples.append(sample)
                print(f"  round {r + 1}/{args.rounds}  {variants[i].name:<34} "
                      f"{sample.rps:9.0f} req/s  p99 {sample.p99_ms:7.2f} ms", flush=True)
        for s, res in zip(running, results, strict=True):
            if s.variant.log_marker:
                res.log_lines = s.count_log_lines(s.variant.log_marker)
    return results


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(title: str, results: list[Result], baseline: int = 0) -> str:
    """A Markdown table: median req/s, median p99, paired ratio (median, min-max) to baseline."""
    base = results[baseline].samples
    lines = [
        f"### {title}",
        "",
        "| variant | req/s (median) | p99 ms (median) | x baseline req/s (median, min-max) "
        "| access-log lines |",
        "|---|---:|---:|---:|---:|",
    ]
    for res in results:
        ratios = [s.rps / b.rps for s, b in zip(res.samples, base, strict=True)]
        errors = sum(s.non_2xx + s.socket_errors for s in res.samples)
        ratio = (f"{_median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                 if ratios else "-")
        logs = str(res.log_lines) if res.variant.log_marker else "-"
        lines.append(
            f"| {res.variant.name}{' ⚠ ' + str(errors) + ' errors' if errors else ''} "
            f"| {_median([s.rps for s in res.samples]):,.0f} "
            f"| {_median([s.p99_ms for s in res.samples]):.2f} | {ratio} | {logs} |"
        )
    return "\n".join(lines)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def machine(dists: Sequence[str]) -> str:
    wrk = subprocess.run([WRK, "--version"], capture_output=True, text=True,
                         check=False).stdout.split("\n")[0].strip()
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(f"{d} {_version(d)}" for d in dists)
    return (f"{os.cpu_count()} cores (nproc), {cpu}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; {wrk}; {versions}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant (default 5)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of load per round (default 5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per server")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=1,
                        help="wrk threads (default 1: one core for wrk, one for the server)")
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds x 2 s, 1 s warm-up: a smoke run, not for the docs")


def apply_quick(args: argparse.Namespace) -> None:
    if args.quick:
        args.rounds, args.duration, args.warmup = 3, 2.0, 1.0


def command_line() -> str:
    return " ".join([".venv/bin/python", *[str(Path(a).relative_to(ROOT))
                                           if a.startswith(str(ROOT)) else a
                                           for a in sys.argv]])
