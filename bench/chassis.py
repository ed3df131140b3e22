"""Chassis overhead: bare vs Shoal-instrumented vs the stack users assemble today.

For FastAPI and Flask, three servers of the same ``GET /hello`` -> ``{"hello":"world"}`` app:

* **bare**: the framework alone;
* **shoal**: ``shoal.fastapi.instrument`` / ``shoal.flask.instrument`` (access log on);
* **stack**: prometheus-fastapi-instrumentator / prometheus-flask-exporter +
  opentelemetry-instrumentation-{fastapi,flask} (SDK tracer provider, no exporter) +
  a python-json-logger access log.

All run under ``python -m shoal serve`` (uvicorn + uvloop + httptools for ASGI, gunicorn with one
gthread worker for WSGI), so server and settings are identical. Run from the repository root::

    .venv/bin/python bench/chassis.py            # 5 rounds x 5 s per variant
    .venv/bin/python bench/chassis.py --quick    # smoke run

Targets (issue 2): shoal >= 0.90 x bare req/s, and faster than the stack.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h

SHOAL_LOG = '"logger":"shoal.access"'
STACK_LOG = "stack.access"


def variants(framework: str, compare_src: str | None = None) -> list[h.Variant]:
    out = [
        h.Variant(f"{framework} bare", h.shoal_serve(f"bench.apps.{framework}_bare:app")),
        h.Variant(f"{framework} + shoal", h.shoal_serve(f"bench.apps.{framework}_shoal:app"),
                  log_marker=SHOAL_LOG),
        h.Variant(f"{framework} + assembled stack",
                  h.shoal_serve(f"bench.apps.{framework}_stack:app"), log_marker=STACK_LOG),
    ]
    if compare_src:
        # Another Shoal source tree (e.g. `git archive` of the last commit) imported first.
        src = str(Path(compare_src).resolve())
        out.append(h.Variant(f"{framework} + shoal @ {compare_src}",
                             h.shoal_serve(f"bench.apps.{framework}_shoal:app"),
                             env=(("PYTHONPATH", f"{src}{os.pathsep}{h.ROOT}"),),
                             log_marker=SHOAL_LOG))
    return out


SERVER = {"fastapi": "uvicorn (uvloop, httptools), 1 process",
          "flask": "gunicorn, 1 gthread worker x 8 threads"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    h.add_arguments(parser)
    parser.add_argument("--framework", choices=["fastapi", "flask", "all"], default="all")
    parser.add_argument("--compare-src", metavar="DIR",
                        help="also measure Shoal imported from DIR (a src/ tree), e.g. before "
                             "and after an optimisation in one run")
    args = parser.parse_args(argv)
    h.apply_quick(args)
    frameworks = ["fastapi", "flask"] if args.framework == "all" else [args.framework]

    print(h.machine(["uvicorn", "uvloop", "httptools", "gunicorn", "fastapi", "starlette",
                     "flask", "prometheus-client", "prometheus-fastapi-instrumentator",
                     "prometheus-flask-exporter", "opentelemetry-sdk", "python-json-logger"]))
    print(f"command: {h.command_line()}")
    print(f"load: wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency, "
          f"{args.rounds} alternating rounds, {args.warmup:g} s warm-up\n")
    tables = []
    failed = False
    for fw in frameworks:
        print(f"{fw}: {SERVER[fw]}")
        results = h.measure(variants(fw, args.compare_src), args)
        tables.append(h.table(f"{fw} on {SERVER[fw]}", results))
        failed |= any(r.variant.log_marker and r.log_lines == 0 for r in results)
    print()
    print("\n\n".join(tables))
    if failed:
        print("\nERROR: a variant wrote no access-log lines; the comparison is not fair.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
