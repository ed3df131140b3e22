"""``shoal chaos ...`` and ``shoal load``: fault injection and load for a local fleet.

Registered on the main ``shoal`` app by :mod:`shoal.platform.cli`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from shoal._errors import ConfigurationError
from shoal.platform._state import PlatformError

chaos_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Inject faults into a running fleet (only where control.chaos is "
                             "on; every fault is time-bounded).")
console = Console()
StateOpt = Annotated[Path, typer.Option("--state-dir", help="fleet state directory",
                                        envvar="SHOAL_STATE_DIR")]
ForOpt = Annotated[float, typer.Option("--for", help="seconds the fault lasts (max 3600)")]
InstanceOpt = Annotated[str | None, typer.Option("--instance", help="one replica only")]
DEFAULT_STATE = Path(".shoal")


def _request(state_dir: Path, method: str, path: str, body: dict[str, Any] | None = None
             ) -> Any:
    from shoal.platform.cli import _client, fail  # noqa: PLC0415 - cli imports this module

    try:
        return _client(state_dir).request(method, path, body)
    except PlatformError as exc:
        raise fail(str(exc)) from None


def _add(state_dir: Path, body: dict[str, Any]) -> None:
    fault = _request(state_dir, "POST", "/v1/chaos", body)
    where = fault["service"] + (f" ({fault['instance']})" if fault.get("instance") else "")
    what = {"latency": f"+{fault['latency_ms']:g} ms",
            "errors": f"{fault['rate']:.0%} answered {fault['status']}",
            "abort": f"{fault['rate']:.0%} of connections aborted"}[fault["kind"]]
    console.print(f"fault #{fault['id']}: {where}: {what} for {fault['expires_in']:g}s")


@chaos_app.command()
def kill(service: str, instance: InstanceOpt = None,
         state_dir: StateOpt = DEFAULT_STATE) -> None:
    """SIGKILL one replica of SERVICE (its process group); the supervisor restarts it."""
    query = f"?instance={instance}" if instance else ""
    result = _request(state_dir, "POST", f"/v1/services/{service}/kill{query}")
    console.print(f"killed {result['instance']} (pid {result['pid']})")


@chaos_app.command()
def latency(  # noqa: PLR0917 - typer: one parameter per option
    service: str,
    ms: Annotated[float, typer.Option("--ms", help="milliseconds added to each request")],
    duration: ForOpt = 60.0,
    rate: Annotated[float, typer.Option(help="share of requests delayed (0..1)")] = 1.0,
    instance: InstanceOpt = None,
    state_dir: StateOpt = DEFAULT_STATE,
) -> None:
    """Add MS milliseconds of latency to SERVICE's requests for --for seconds."""
    _add(state_dir, {"service": service, "kind": "latency", "latency_ms": ms, "rate": rate,
                     "for_s": duration, "instance": instance})


@chaos_app.command()
def errors(  # noqa: PLR0917 - typer: one parameter per option
    service: str,
    rate: Annotated[float, typer.Option("--rate", help="share of requests failed (0..1)")],
    status: Annotated[int, typer.Option(help="the HTTP status they get")] = 503,
    duration: ForOpt = 60.0,
    instance: InstanceOpt = None,
    state_dir: StateOpt = DEFAULT_STATE,
) -> None:
    """Answer a share (--rate) of SERVICE's requests with --status, for --for seconds."""
    _add(state_dir, {"service": service, "kind": "errors", "rate": rate, "status": status,
                     "for_s": duration, "instance": instance})


@chaos_app.command()
def abort(
    service: str,
    rate: Annotated[float, typer.Option("--rate", help="share of connections dropped (0..1)")],
    duration: ForOpt = 60.0,
    instance: InstanceOpt = None,
    state_dir: StateOpt = DEFAULT_STATE,
) -> None:
    """Drop a share (--rate) of SERVICE's connections without an answer, for --for seconds."""
    _add(state_dir, {"service": service, "kind": "abort", "rate": rate, "for_s": duration,
                     "instance": instance})


@chaos_app.command("list")
def list_faults(state_dir: StateOpt = DEFAULT_STATE) -> None:
    """The active faults."""
    result = _request(state_dir, "GET", "/v1/chaos")
    table = Table(title="faults" + ("" if result["enabled"] else " (chaos is off)"))
    for col in ("ID", "SERVICE", "INSTANCE", "KIND", "RATE", "LATENCY", "STATUS", "LEFT"):
        table.add_column(col)
    for f in result["rules"]:
        table.add_row(str(f["id"]), f["service"], f.get("instance") or "*", f["kind"],
                      f"{f['rate']:g}", f"{f['latency_ms']:g} ms", str(f["status"]),
                      f"{f['expires_in']:.0f}s")
    console.print(table)


@chaos_app.command()
def clear(service: Annotated[str | None, typer.Argument(help="only this service")] = None,
          state_dir: StateOpt = DEFAULT_STATE) -> None:
    """Remove every active fault (or SERVICE's)."""
    query = f"?service={service}" if service else ""
    result = _request(state_dir, "DELETE", f"/v1/chaos{query}")
    console.print(f"cleared {result['removed']} fault(s)")


def load(  # noqa: PLR0917 - typer: one parameter per option
    url: Annotated[str, typer.Argument(help="http://127.0.0.1:PORT/path (loopback only)")],
    rate: Annotated[float, typer.Option(help="requests per second (open loop)")] = 50.0,
    duration: Annotated[float, typer.Option(help="seconds (max 600)")] = 10.0,
    method: Annotated[str, typer.Option(help="HTTP method")] = "GET",
    body: Annotated[str | None, typer.Option(help="request body (JSON)")] = None,
    header: Annotated[list[str] | None, typer.Option("--header", "-H",
                                                     help="'Name: value' (repeatable)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 10.0,
    concurrency: Annotated[int, typer.Option(help="most requests in flight")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="JSON report")] = False,
) -> None:
    """Send RATE req/s to URL for DURATION seconds; report req/s, errors by kind, p50/p99."""
    from shoal.platform._load import LoadPlan, format_table, run_load  # noqa: PLC0415
    from shoal.platform.cli import fail  # noqa: PLC0415

    headers = {}
    for h in header or []:
        name, sep, value = h.partition(":")
        if not sep:
            raise fail(f"--header wants 'Name: value', got {h!r}", 2)
        headers[name.strip()] = value.strip()
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    try:
        plan = LoadPlan(url=url, rate=rate, duration=duration, method=method.upper(),
                        body=None if body is None else body.encode(), headers=headers,
                        timeout=timeout, max_in_flight=concurrency)
    except ConfigurationError as exc:
        raise fail(str(exc), 2) from None
    report = asyncio.run(run_load(plan)).as_dict()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title="shoal load", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for label, value in format_table(report):
        table.add_row(label, value)
    console.print(table)


def autoscale_lines(services: list[dict[str, Any]]) -> list[str]:
    """One line per autoscaled service for ``shoal ps``: policy, metric now, last decision."""
    lines = []
    for svc in services:
        auto = svc.get("autoscale")
        if not auto:
            continue
        metric = auto["current_metric"]
        line = (f"autoscale {svc['service']}: {auto['min']}..{auto['max']} replicas, "
                f"{auto['metric']} target {auto['target']:g}/replica, now "
                f"{'-' if metric is None else f'{metric:g}'}, desired "
                f"{auto['desired'] if auto['desired'] is not None else '-'}")
        last = auto.get("last_decision")
        if last:
            line += (f"; last: {last['action']} {last['current']}->{last['desired']} "
                     f"({last['reason']})")
        lines.append(line)
    return lines
