"""``shoal logs`` and ``shoal config prometheus|grafana``.

``shoal logs`` asks the running fleet's control API (``GET /v1/logs``; ``-f`` long-polls with
the returned cursor); when no fleet runs from the state dir it reads ``.shoal/logs.db``
directly, so the logs of a fleet that stopped or crashed stay readable.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from shoal.platform._apiclient import ControlClient
from shoal.platform._logstore import LEVELS, parse_since, query_file
from shoal.platform._observe import LOG_FILE
from shoal.platform._state import PlatformError, StateDir
from shoal.platform.spec import SpecError, load_spec

console = Console(highlight=False)
err = Console(stderr=True)
StateOpt = Annotated[Path, typer.Option("--state-dir", help="fleet state directory",
                                        envvar="SHOAL_STATE_DIR")]
DEFAULT_STATE = Path(".shoal")
FOLLOW_WAIT = 10.0
_COLORS = {"debug": "dim", "info": "green", "warning": "yellow", "error": "red",
           "critical": "bold red"}

config_app = typer.Typer(no_args_is_help=True, add_completion=False,
                         help="Write Prometheus and Grafana configuration for the fleet.")


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


class _Source:
    """The control API when a fleet runs from ``state_dir``, else the store file."""

    def __init__(self, state_dir: Path) -> None:
        state = StateDir(state_dir)
        self.path = state.path / LOG_FILE
        self.client: ControlClient | None = None
        if state.read_control() is not None:
            try:
                self.client = ControlClient(state, timeout=FOLLOW_WAIT + 10)
            except PlatformError:
                self.client = None
        if self.client is None and not self.path.exists():
            raise _fail(f"no fleet runs from {state.path} and it has no {LOG_FILE}: "
                        "start one with `shoal up`, or pass --state-dir")

    def fetch(self, filters: dict[str, Any], wait: float = 0.0) -> dict[str, Any]:
        if self.client is None:
            page = query_file(self.path, **filters)
            return {"entries": [e.as_dict() for e in page.entries], "cursor": page.cursor}
        params = {("trace" if k == "trace_id" else k): _wire(k, v) for k, v in filters.items()
                  if v is not None}
        if wait:
            params["wait"] = wait
        result: dict[str, Any] = self.client.request(
            "GET", "/v1/logs?" + urllib.parse.urlencode(params))
        return result


def _wire(name: str, value: Any) -> Any:
    # The API reads a bare number as "seconds ago": send times as ISO 8601 (UTC, to the
    # microsecond), which every reader takes as that instant.
    if name in {"since", "until"}:
        return datetime.fromtimestamp(value, UTC).isoformat()
    return value


def _print_entry(entry: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(entry, separators=(",", ":")))
        return
    millis = int(entry["ts"] * 1000) % 1000
    stamp = time.strftime("%H:%M:%S", time.localtime(entry["ts"])) + f".{millis:03d}"
    color = _COLORS.get(entry["level"], "white")
    trace = f" [dim]{entry['trace_id'][:8]}[/]" if entry.get("trace_id") else ""
    console.print(f"[dim]{stamp}[/] [cyan]{escape(entry['instance'])}[/] "
                  f"[{color}]{entry['level'][:4].upper():4}[/]{trace} "
                  f"{escape(entry['message'])}", soft_wrap=True)


def logs(  # noqa: PLR0917 - typer: one parameter per option
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines")
                      ] = False,
    service: Annotated[str | None, typer.Option(help="only this service")] = None,
    instance: Annotated[str | None, typer.Option(help="only this instance (e.g. users-2)")
                        ] = None,
    level: Annotated[str | None, typer.Option(help="at least this level (info, warning ...)")
                     ] = None,
    trace: Annotated[str | None, typer.Option(help="only this trace id, across services")
                     ] = None,
    since: Annotated[str | None, typer.Option(
        help="only lines from this time on: 30s, 5m, 2h, 1d ago, or an ISO 8601 time")] = None,
    until: Annotated[str | None, typer.Option(
        help="only lines up to this time: 30s, 5m, 2h, 1d ago, or an ISO 8601 time")] = None,
    grep: Annotated[str | None, typer.Option(help="words in the message (FTS5; end with *)")
                    ] = None,
    limit: Annotated[int, typer.Option(help="how many of the newest lines first")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    state_dir: StateOpt = DEFAULT_STATE,
) -> None:
    """Print the fleet's logs (every replica's stdout), oldest first; -f follows."""
    if level and level.lower() not in LEVELS:
        raise _fail(f"unknown level {level!r}: use debug, info, warning, error or critical", 2)
    now = time.time()  # one instant for both bounds, and for every page of -f
    bounds: dict[str, float | None] = {}
    for option, text in (("since", since), ("until", until)):
        try:
            bounds[option] = parse_since(text, now) if text else None
            if bounds[option] is not None:
                _wire(option, bounds[option])  # a time the API can be sent
        except (ValueError, OverflowError, OSError):
            raise _fail(f"--{option} {text!r}: use 30s, 5m, 2h, 1d or an ISO 8601 time",
                        2) from None
    source = _Source(state_dir)
    filters: dict[str, Any] = {"service": service, "instance": instance, "level": level,
                               "trace_id": trace, "since": bounds["since"],
                               "until": bounds["until"], "grep": grep, "limit": limit}
    try:
        page = source.fetch(filters)
        for entry in page["entries"]:
            _print_entry(entry, as_json)
        while follow:
            filters["after"] = page["cursor"]
            if source.client is None:
                time.sleep(0.5)  # no fleet to long-poll: re-read the file
                page = source.fetch(filters)
            else:
                page = source.fetch(filters, wait=FOLLOW_WAIT)
            for entry in page["entries"]:
                _print_entry(entry, as_json)
    except PlatformError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        return


def _control_address(state_dir: Path, spec: Path) -> tuple[str, str]:
    control = StateDir(state_dir).read_control()
    if control is not None:
        return f"http://{control['host']}:{control['port']}", str(control.get("system", "shoal"))
    try:
        loaded = load_spec(spec)
    except SpecError as exc:
        raise _fail(f"no fleet runs from {state_dir} and {exc}", 2) from None
    return f"http://{loaded.control.host}:{loaded.control.port}", loaded.system


@config_app.command("prometheus")
def config_prometheus(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="file (default: stdout)")
                   ] = None,
    spec: Annotated[Path, typer.Option("--spec", "-f", help="the fleet spec")
                    ] = Path("shoal.yaml"),
    interval: Annotated[str, typer.Option(help="scrape and discovery interval")] = "5s",
    state_dir: StateOpt = DEFAULT_STATE,
) -> None:
    """A prometheus.yml that discovers every ready replica through the control plane."""
    from shoal.platform._grafana import prometheus_config  # noqa: PLC0415

    url, system = _control_address(state_dir, spec)
    text = prometheus_config(control_url=url, token_file=StateDir(state_dir).token_path,
                             system=system, scrape_interval=interval)
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {out} (discovery: {url}/v1/sd/prometheus)")


@config_app.command("grafana")
def config_grafana(
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")],
    prometheus_url: Annotated[str, typer.Option(help="the Grafana datasource's URL")
                              ] = "http://127.0.0.1:9090",
    dashboards_path: Annotated[str | None, typer.Option(
        help="where Grafana will find the dashboards directory (default: its path here)")
    ] = None,
    spec: Annotated[Path, typer.Option("--spec", "-f", help="the fleet spec")
                    ] = Path("shoal.yaml"),
    state_dir: StateOpt = DEFAULT_STATE,
) -> None:
    """The fleet's Grafana dashboard and its provisioning files, under OUT."""
    from shoal.platform._grafana import write_grafana  # noqa: PLC0415

    control = StateDir(state_dir).read_control()
    system = str(control.get("system")) if control else None
    if system is None:
        try:
            system = load_spec(spec).system
        except SpecError:
            system = "shoal"
    written = write_grafana(out, system=system, prometheus_url=prometheus_url,
                            dashboards_path=dashboards_path)
    for path in written:
        console.print(f"wrote {path}")


def dashboard_url(status: dict[str, Any]) -> str | None:
    """The URL that logs a browser into the dashboard (``shoal up`` prints it)."""
    try:
        token = (Path(status["control"]["state_dir"]) / "token").read_text().strip()
    except (KeyError, OSError):
        return None
    return f"{status['control']['url']}/login?token={token}"
