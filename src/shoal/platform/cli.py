"""The ``shoal`` command: run a fleet locally, operate it, serve one service.

``--json`` output (``shoal ps --json``) is stable: see docs/platform.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from shoal._errors import ConfigurationError
from shoal.platform._apiclient import ControlClient
from shoal.platform._cli_observe import config_app, dashboard_url, logs
from shoal.platform._cli_resilience import autoscale_lines, chaos_app, load
from shoal.platform._state import PlatformError, StateDir
from shoal.platform.spec import SpecError, load_spec

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Shoal: run a system of Python microservices on one machine.")
console = Console()
err = Console(stderr=True)

StateOpt = Annotated[Path, typer.Option("--state-dir", help="fleet state directory",
                                        envvar="SHOAL_STATE_DIR")]
DEFAULT_STATE = Path(".shoal")
DEFAULT_SPEC = Path("shoal.yaml")


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _client(state_dir: Path, timeout: float = 10.0) -> ControlClient:
    try:
        return ControlClient(StateDir(state_dir), timeout=timeout)
    except PlatformError as exc:
        raise fail(str(exc)) from None


def _print_event(kind: str, data: dict[str, Any]) -> None:
    if kind == "control_started":
        console.print(f"control plane on {data['url']}")
    elif kind == "starting":
        console.print(f"starting [bold]{data['service']}[/] x{data['replicas']} ...")
    elif kind == "ready":
        console.print(f"  [green]ready[/] {data['service']}: {', '.join(data['endpoints'])}")
    elif kind == "failed":
        err.print(f"[bold red]{data['instance']} {data['reason']}[/]; its last lines:")
        for line in data["last_lines"]:
            err.print(f"  | {line}", highlight=False, markup=False)
    elif kind == "running":
        _print_urls(data)
        console.print("Ctrl-C (or `shoal down`) stops everything.")
    elif kind == "stopping":
        console.print("stopping the fleet ...")


def _print_urls(status: dict[str, Any]) -> None:
    console.print(f"[bold green]{status['system']} is up[/]")
    if status.get("gateway"):
        console.print(f"  gateway:       {status['gateway']}")
    console.print(f"  control plane: {status['control']['url']}")
    if (dashboard := dashboard_url(status)) is not None:
        console.print(f"  dashboard:     {dashboard}", highlight=False, soft_wrap=True)
    for svc in status["services"]:
        console.print(f"  {svc['service']}: {', '.join(svc['endpoints'])}")


@app.command()
def up(
    spec: Annotated[Path, typer.Argument(help="the fleet spec")] = DEFAULT_SPEC,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="run in the background")] = False,
    state_dir: StateOpt = DEFAULT_STATE,
    timeout: Annotated[float, typer.Option(help="seconds to wait for --detach")] = 120.0,
) -> None:
    """Start every service of SPEC (dependencies first) and keep them running."""
    try:
        loaded = load_spec(spec)
    except SpecError as exc:
        raise fail(str(exc), 2) from None
    from shoal.platform.controlplane import PortInUse, check_ports, run_foreground  # noqa: PLC0415

    if not detach:
        try:
            code = run_foreground(spec, state_dir, on_event=_print_event)
        except (PlatformError, ConfigurationError, SpecError) as exc:
            raise fail(str(exc), 2 if isinstance(exc, PortInUse | SpecError) else 1) from None
        raise typer.Exit(code)
    state = StateDir(state_dir)
    try:
        state.lock().close()  # a fleet already running here is named before its ports are
        check_ports(loaded)
    except PortInUse as exc:
        raise fail(str(exc), 2) from None
    except PlatformError as exc:
        raise fail(str(exc)) from None
    _up_detached(spec, state, timeout)


def _up_detached(spec: Path, state: StateDir, timeout: float) -> None:
    previous = state.read_control()
    log_path = state.path / "control.log"
    out_path = state.path / "control.out"
    # control.out keeps every run's output; on failure show this run's only.
    with open(out_path, "ab") as out:
        start = out.tell()
        proc = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "shoal.platform.controlplane", str(spec), str(state.path)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            with open(out_path, "rb") as fh:
                fh.seek(start)
                tail = fh.read().decode(errors="replace").splitlines()[-15:]
            raise fail(f"the fleet did not start (exit {code}); from {out_path}:\n"
                       + "\n".join(tail), 2 if code == 2 else 1)
        control = state.read_control()
        if control and control.get("pid") == proc.pid and control != previous:
            try:
                status = ControlClient(state).status()
            except PlatformError:
                status = None
            if status and status["phase"] == "running":
                _print_urls(status)
                console.print(f"running in the background (pid {proc.pid}); `shoal down` "
                              "stops it.")
                return
            if status and status["phase"] == "failed":
                raise fail(f"{status['error']} (see {log_path}); stopping")
        time.sleep(0.1)
    raise fail(f"the fleet was not ready within {timeout:g}s; see {log_path}")


@app.command()
def down(state_dir: StateOpt = DEFAULT_STATE,
         timeout: Annotated[float, typer.Option(help="seconds to wait")] = 60.0) -> None:
    """Stop the fleet: drain and stop every replica, then the control plane."""
    client = _client(state_dir)
    try:
        client.request("POST", "/v1/shutdown")
    except PlatformError as exc:
        if _alive(client.pid):
            raise fail(str(exc)) from None
        _reap(StateDir(state_dir))
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if StateDir(state_dir).read_control() is None and not _alive(client.pid):
            console.print("fleet stopped")
            return
        time.sleep(0.1)
    raise fail(f"the control plane (pid {client.pid}) did not stop within {timeout:g}s")


def _reap(state: StateDir) -> None:
    """The control plane is gone: stop the replicas it recorded (by PID, checking each is
    still that replica), then clear the state files."""
    recorded = [i for i in state.read_instances() if i.get("pid")]
    mine = [i for i in recorded if _is_replica(int(i["pid"]), str(i["id"]))]
    for inst in mine:
        _signal_group(int(inst["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(int(i["pid"])) for i in mine):
        time.sleep(0.1)
    for inst in mine:
        _signal_group(int(inst["pid"]), signal.SIGKILL)
    state.clear_control()
    console.print(f"the control plane was gone; stopped {len(mine)} leftover replica(s)")


def _is_replica(pid: int, instance: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return f"SHOAL_INSTANCE={instance}".encode() in fh.read().split(b"\0")
    except OSError:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours (a test's Popen) is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@app.command()
def ps(state_dir: StateOpt = DEFAULT_STATE,
       as_json: Annotated[bool, typer.Option("--json", help="stable JSON output")] = False) -> None:
    """List services and their replicas with state, pid, port, uptime and restarts."""
    status = _client(state_dir).status()
    if as_json:
        typer.echo(json.dumps(status, indent=2))
        return
    table = Table(title=f"{status['system']} ({status['phase']})")
    for col in ("SERVICE", "INSTANCE", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "VERSION"):
        table.add_column(col)
    for svc in status["services"]:
        for inst in svc["instances"]:
            color = {"ready": "green", "crash-loop": "red", "failed": "red"}.get(inst["state"],
                                                                                "yellow")
            table.add_row(svc["service"], inst["id"], f"[{color}]{inst['state']}[/]",
                          str(inst["pid"] or "-"), str(inst["port"]),
                          f"{inst['uptime_s']:.0f}s", str(inst["restarts"]),
                          str(inst["version"]))
        if not svc["instances"]:
            table.add_row(svc["service"], "-", "no replicas", "", "", "", "", "")
    console.print(table)
    for line in autoscale_lines(status["services"]):
        console.print(line, highlight=False)


@app.command()
def scale(service: str, replicas: int, state_dir: StateOpt = DEFAULT_STATE) -> None:
    """Run REPLICAS replicas of SERVICE (new ones start; the newest stop first)."""
    try:
        view = _client(state_dir, timeout=120).request(
            "POST", f"/v1/services/{service}/scale", {"replicas": replicas})
    except PlatformError as exc:
        raise fail(str(exc)) from None
    console.print(f"{service}: {len(view['instances'])} replicas")


def _rolling(service: str, state_dir: Path, action: str) -> None:
    try:
        view = _client(state_dir, timeout=600).request("POST", f"/v1/services/{service}/{action}")
    except PlatformError as exc:
        raise fail(str(exc)) from None
    console.print(f"{service}: version {view['version']} on "
                  f"{', '.join(i['id'] for i in view['instances'])}")


@app.command()
def rollout(service: str, state_dir: StateOpt = DEFAULT_STATE) -> None:
    """Roll SERVICE to the spec file's current definition: surge 1, unavailable 0."""
    _rolling(service, state_dir, "rollout")


@app.command()
def restart(service: str, state_dir: StateOpt = DEFAULT_STATE) -> None:
    """Restart SERVICE's replicas one at a time (a rolling restart: no downtime)."""
    _rolling(service, state_dir, "restart")


@app.command()
def deploy(
    target: Annotated[str, typer.Argument(help="docker, compose, k8s, ci or all")],
    spec: Annotated[Path, typer.Option("--spec", "-f", help="the fleet spec")] = DEFAULT_SPEC,
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("deploy"),
) -> None:
    """Generate deployment artefacts for TARGET from the spec (see docs/deploy.md)."""
    from shoal.platform.deploy import generate  # noqa: PLC0415

    if target not in ("docker", "compose", "k8s", "ci", "all"):
        raise fail(f"unknown target {target!r}: use docker, compose, k8s, ci or all", 2)
    try:
        loaded = load_spec(spec)
    except SpecError as exc:
        raise fail(str(exc), 2) from None
    written = generate(loaded, target, out, str(spec))  # type: ignore[arg-type]
    console.print(f"wrote {len(written)} files under {out}/")


@app.command()
def token(  # noqa: PLR0917 - typer: one parameter per option
    subject: Annotated[str, typer.Option(help="the token's sub claim")] = "dev",
    scopes: Annotated[list[str] | None, typer.Option("--scope", help="a scope (repeatable)")
                      ] = None,
    ttl: Annotated[float, typer.Option(help="seconds until it expires")] = 3600.0,
    secret_env: Annotated[str, typer.Option(help="env var holding the HS256 secret")
                          ] = "SHOAL_JWT_SECRET",  # noqa: S107 - a variable name
    algorithm: Annotated[str, typer.Option(help="HS256 or RS256")] = "HS256",
    private_key: Annotated[Path | None, typer.Option(help="PEM private key for RS256")] = None,
    audience: Annotated[str | None, typer.Option()] = None,
    issuer: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Mint a development JWT the gateway's route auth accepts."""
    from shoal.platform.gateway import mint_token  # noqa: PLC0415

    key = private_key.read_text() if private_key else None
    secret = os.environ.get(secret_env, "")
    if algorithm == "HS256" and not secret:
        raise fail(f"set {secret_env} to the HS256 secret the gateway route uses", 2)
    try:
        typer.echo(mint_token(secret or (key or ""), subject=subject, scopes=scopes or [],
                              ttl=ttl, algorithm=algorithm, private_key=key,
                              audience=audience, issuer=issuer))
    except ConfigurationError as exc:
        raise fail(str(exc), 2) from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(ctx: typer.Context) -> None:
    """Serve one app: ``shoal serve MODULE:APP [--port N]`` (see ``shoal serve --help``)."""
    from shoal._cli import serve_main  # noqa: PLC0415

    raise typer.Exit(serve_main(["serve", *ctx.args]))


app.add_typer(chaos_app, name="chaos")
app.command("load")(load)

app.add_typer(config_app, name="config")
app.command("logs")(logs)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
