"""Server choice: the same Shoal-instrumented app on each candidate server, alternating rounds.

* ASGI (FastAPI + Shoal): uvicorn with uvloop + httptools (what ``shoal serve`` runs) vs granian.
* WSGI (Flask + Shoal): gunicorn with one gthread worker (what ``shoal serve`` runs) vs granian
  and waitress, each one process with 8 worker threads.

Every server runs one process (one replica; scale by replicas) and keeps Shoal's access log on.
Run from the repository root::

    .venv/bin/python bench/servers.py            # 5 rounds x 5 s per server
    .venv/bin/python bench/servers.py --quick

The first row of each table is the current ``shoal serve`` choice; ratios are relative to it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

SHOAL_LOG = '"logger":"shoal.access"'
BIN = h.VENV_BIN
FASTAPI = "bench.apps.fastapi_shoal:app"
FLASK = "bench.apps.flask_shoal:app"


def granian(interface: str, target: str, *extra: str) -> tuple[str, ...]:
    return (str(BIN / "granian"), "--interface", interface, "--host", "127.0.0.1",
            "--port", "{port}", "--workers", "1", "--no-ws", "--log-level", "warning",
            *extra, target)


ASGI = [
    h.Variant("uvicorn (uvloop, httptools)", h.shoal_serve(FASTAPI), log_marker=SHOAL_LOG),
    h.Variant("granian asgi (uvloop, 1 runtime thread)",
              granian("asgi", FASTAPI, "--loop", "uvloop"), log_marker=SHOAL_LOG),
]
WSGI = [
    h.Variant("gunicorn gthread (1 worker x 8 threads)", h.shoal_serve(FLASK),
              log_marker=SHOAL_LOG),
    h.Variant("granian wsgi (8 blocking threads)",
              granian("wsgi", FLASK, "--blocking-threads", "8"), log_marker=SHOAL_LOG),
    h.Variant("waitress (8 threads)",
              (str(BIN / "waitress-serve"), "--host=127.0.0.1", "--port={port}", "--threads=8",
               FLASK), log_marker=SHOAL_LOG),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_arguments(parser)
    parser.add_argument("--interface", choices=["asgi", "wsgi", "all"], default="all")
    args = parser.parse_args(argv)
    h.apply_quick(args)
    groups = {"asgi": ASGI, "wsgi": WSGI}
    chosen = ["asgi", "wsgi"] if args.interface == "all" else [args.interface]

    print(h.machine(["uvicorn", "uvloop", "httptools", "granian", "gunicorn", "waitress",
                     "fastapi", "flask"]))
    print(f"command: {h.command_line()}")
    print(f"load: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency, "
          f"{args.rounds} alternating rounds, {args.warmup:g} s warm-up\n")
    tables = []
    for kind in chosen:
        print(f"{kind}:")
        results = h.measure(groups[kind], args)
        app = "FastAPI + Shoal" if kind == "asgi" else "Flask + Shoal"
        tables.append(h.table(f"{app} ({kind.upper()})", results))
    print()
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
