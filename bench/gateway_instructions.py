"""Instructions per proxied request of the Shoal gateway, counted by valgrind's callgrind.

Wall-clock CPU on this shared 2-core VM moves +-10 % between runs; instruction counts of one
process do not (the same figure to 0.1 % run after run, whatever the neighbours do), so
this is how changes to the gateway's request path are compared. User space only: the
kernel's share (about a third of the gateway's CPU, see ``bench/gateway.py``) is not counted.

The gateway runs under callgrind in front of two backend replicas (the ``bench.gateway``
raw ASGI app); after a warm-up the counters are zeroed, ``wrk -c8`` loads it for
``--duration`` seconds, the counters are dumped and divided by the requests wrk completed.
``--src DIR`` runs the gateway from another source tree (e.g. an older commit's
``git archive <rev> src | tar x -C DIR``) for a before/after in one sitting.

    .venv/bin/python bench/gateway_instructions.py [--duration 8] [--src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import ROOT, WRK, free_port, stop_group
from bench.gateway import PATH, SPEC, Proc, shoal_serve

VALGRIND = shutil.which("valgrind") or "/usr/bin/valgrind"
CALLGRIND_CONTROL = shutil.which("callgrind_control") or "/usr/bin/callgrind_control"


def wait_ok(url: str, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited: {proc.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready: {proc.log.read_text()[-2000:]}")


def wrk(url: str, seconds: float) -> int:
    out = subprocess.run([WRK, "-t1", "-c8", f"-d{seconds:g}s", url], capture_output=True,
                         text=True, check=True, timeout=seconds + 60).stdout
    match = re.search(r"(\d+) requests in", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output: {out}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds (8)")
    parser.add_argument("--src", help="run the gateway from this source tree instead")
    parser.add_argument("--keep", metavar="FILE",
                        help="copy the callgrind dump here (read it with callgrind_annotate; "
                             "compiled modules show as C functions named after their source)")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the gateway process (repeatable)")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.gateway_env)
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-ir-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            b1, b2 = free_port(), free_port()
            for port in (b1, b2):
                proc = Proc(f"backend:{port}", shoal_serve("bench.gateway:backend", port),
                            {"SHOAL_SERVICE": "users", "SHOAL_LOG_LEVEL": "WARNING"},
                            tmp / f"backend-{port}.log")
                procs.append(proc)
                proc.wait_ready(f"http://127.0.0.1:{port}/item")
            port = free_port()
            (tmp / "shoal.yaml").write_text(SPEC.format(port=port))
            out = tmp / "callgrind.out"
            env = {"SHOAL_GATEWAY_SPEC": str(tmp / "shoal.yaml"), "SHOAL_DRAIN_GRACE": "1",
                   "SHOAL_DISCOVERY": f"static:users=http://127.0.0.1:{b1},http://127.0.0.1:{b2}",
                   **extra}
            if args.src:
                env["PYTHONPATH"] = f"{args.src}:{ROOT}"
            gateway = Proc("gateway", [VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}",
                                       "--dump-instr=no", *shoal_serve(
                                           "shoal.platform.gateway:app", port)],
                           env, tmp / "gateway.log")
            procs.append(gateway)
            url = f"http://127.0.0.1:{port}{PATH}"
            wait_ok(url, gateway, timeout=120)
            wrk(url, 3)  # warm-up: imports, first connections, caches
            subprocess.run([CALLGRIND_CONTROL, "-z", str(gateway.proc.pid)], check=True,
                           capture_output=True)
            requests = wrk(url, args.duration)
            subprocess.run([CALLGRIND_CONTROL, "-d", str(gateway.proc.pid)], check=True,
                           capture_output=True)
            dumps = sorted(tmp.glob("callgrind.out.*"), key=lambda p: p.stat().st_mtime)
            text = dumps[-1].read_text(errors="replace")
            if args.keep:
                shutil.copyfile(dumps[-1], args.keep)
            match = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
            if match is None:
                raise RuntimeError("no totals in the callgrind dump")
            instructions = int(match.group(1))
        finally:
            for proc in reversed(procs):
                stop_group(proc.proc)
    print(f"requests {requests}, instructions {instructions:,}, "
          f"per request {instructions / requests:,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
