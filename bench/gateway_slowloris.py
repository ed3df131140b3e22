"""Normal requests' p99 through the gateway, unloaded and beside 2,000 slow-body clients.

One backend replica (``bench.gateway:backend``) behind the gateway (``python -m shoal serve
shoal.platform.gateway:app``, its spec's defaults: ``body_timeout`` 10 s, ``small_body_timeout``
30 s, ``max_connections`` from the file-descriptor limit). Each round loads the gateway with
``wrk`` twice, alone and while ``--slow`` connections each declare ``Content-Length: 100``,
send one byte and then one more every ``--trickle`` seconds (under ``body_timeout``, so only
the total for small bodies ends them; a client whose connection ends opens a new one at
once, keeping ``--slow`` held). The table gives the median p99 of each and their ratio.

    .venv/bin/python bench/gateway_slowloris.py [--rounds 5] [--duration 5] [--slow 2000]

Mind ``ulimit -n``: the slow clients hold ``--slow`` sockets in this process and as many in
the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (
    Sample,
    add_arguments,
    apply_quick,
    command_line,
    free_port,
    machine,
    run_wrk,
)
from bench.gateway import PATH, SPEC, Proc, shoal_serve

SLOW_HEAD = b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: bench\r\ncontent-length: 100\r\n\r\n"


class SlowClients:
    """``count`` slow-body connections kept open from a thread of their own (its own loop)."""

    def __init__(self, port: int, count: int, trickle: float) -> None:
        self.port = port
        self.count = count
        self.trickle = trickle
        #: Connections open and not yet answered, and answers (408s) received.
        self.held = 0
        self.answered = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError(f"only {self.held} of {self.count} slow connections opened")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks = [asyncio.create_task(self._one(i)) for i in range(self.count)]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, i: int) -> None:
        await asyncio.sleep(i * 0.0005)  # (not 2,000 SYNs at once: the accept backlog)
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            self.held += 1
            if self.held >= self.count:
                self._ready.set()
            try:
                writer.write(SLOW_HEAD + b"x")
                sent = 1
                while sent < 99:  # (never the whole body)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.trickle):
                            if await reader.read(65536) is not None:
                                self.answered += 1
                                break  # answered (408) or closed: open another
                    writer.write(b"x")
                    sent += 1
            except OSError:
                pass
            finally:
                self.held -= 1
                writer.close()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.add_argument("--slow", type=int, default=2000, help="slow-body connections (2000)")
    parser.add_argument("--trickle", type=float, default=5.0,
                        help="seconds between a slow client's bytes (5)")
    args = parser.parse_args()
    apply_quick(args)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.slow + 256:
        parser.error(f"ulimit -n is {soft}: too few for {args.slow} slow connections")
    unloaded: list[Sample] = []
    loaded: list[Sample] = []
    held: list[int] = []
    answered: list[int] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-slow-") as tmpdir:
        tmp = Path(tmpdir)
        procs: list[Proc] = []
        try:
            b1, gateway_port = free_port(), free_port()
            users = Proc("backend", shoal_serve("bench.gateway:backend", b1),
                         {"SHOAL_SERVICE": "users", "SHOAL_DRAIN_GRACE": "1"},
                         tmp / "backend.log")
            procs.append(users)
            users.wait_ready(f"http://127.0.0.1:{b1}/item")
            spec = tmp / "shoal.yaml"
            spec.write_text(SPEC.format(port=gateway_port))
            gw = Proc("gateway", shoal_serve("shoal.platform.gateway:app", gateway_port),
                      {"SHOAL_GATEWAY_SPEC": str(spec), "SHOAL_DRAIN_GRACE": "1",
                       "SHOAL_DISCOVERY": f"static:users=http://127.0.0.1:{b1}"},
                      tmp / "gateway.log")
            procs.append(gw)
            url = f"http://127.0.0.1:{gateway_port}{PATH}"
            gw.wait_ready(url)
            run_wrk(url, duration=args.warmup, connections=args.connections,
                    threads=args.threads)
            for r in range(args.rounds):
                for loaded_now in ((False, True) if r % 2 == 0 else (True, False)):
                    if not loaded_now:  # (the order alternates: neither always goes first)
                        unloaded.append(run_wrk(url, duration=args.duration,
                                                connections=args.connections,
                                                threads=args.threads))
                        continue
                    with SlowClients(gateway_port, args.slow, args.trickle) as slow:
                        time.sleep(1)  # (the gateway has read every head)
                        loaded.append(run_wrk(url, duration=args.duration,
                                              connections=args.connections,
                                              threads=args.threads))
                        held.append(slow.held)
                        answered.append(slow.answered)
                base, busy = unloaded[-1], loaded[-1]
                print(f"  round {r + 1}/{args.rounds}  unloaded p99 {base.p99_ms:6.2f} ms "
                      f"({base.rps:7.0f} req/s)  beside {held[-1]} slow: "
                      f"p99 {busy.p99_ms:6.2f} ms ({busy.rps:7.0f} req/s)", flush=True)
        finally:
            for proc in reversed(procs):
                proc.stop()
    errors = sum(s.non_2xx + s.socket_errors for s in (*unloaded, *loaded))
    ratios = [b.p99_ms / u.p99_ms for u, b in zip(unloaded, loaded, strict=True)]
    print(f"\nMachine: {machine(['uvloop', 'httptools'])}")
    print(f"Command: {command_line()}\n")
    print("| load | p99 ms (median) | req/s (median) |")
    print("|---|---:|---:|")
    print(f"| wrk alone | {_median([s.p99_ms for s in unloaded]):.2f} "
          f"| {_median([s.rps for s in unloaded]):,.0f} |")
    print(f"| wrk beside {min(held)}-{max(held)} slow-body connections "
          f"| {_median([s.p99_ms for s in loaded]):.2f} "
          f"| {_median([s.rps for s in loaded]):,.0f} |")
    print(f"\np99 loaded / unloaded, per round: median {_median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}); non-2xx or socket errors: {errors}; "
          f"slow connections answered during a round: {sum(answered)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
