"""Fleets started with the real ``shoal`` CLI from spec files the tests write."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.testing import (
    free_port,
    wait_until,  # noqa: F401 - re-exported to the tests here
)

ROOT = Path(__file__).resolve().parents[3]


def shoal(*args: str, timeout: float = 120, cwd: Path = ROOT,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args], capture_output=True, text=True,
        timeout=timeout, cwd=cwd, check=False, env=env,
    )


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def proc_environ(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started with (``/proc/PID/environ``)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (entry.split(b"=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    return {key.decode(): value.decode(errors="replace") for key, value in pairs}


def group_pids(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (a replica and any worker it forked)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().split(")")[-1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
    return pids



class Fleet:
    def __init__(self, spec_path: Path, state_dir: Path, port: int) -> None:
        self.spec_path = spec_path
        self.state_dir = state_dir
        self.port = port
        self.seen_pids: set[int] = set()

    @property
    def token(self) -> str:
        return (self.state_dir / "token").read_text().strip()

    def api(self, method: str, path: str, body: Any = None, token: str | None = None,
            timeout: float = 60) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method=method)
        if token is not False:
            req.add_header("Authorization", f"Bearer {token or self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def status(self) -> dict[str, Any]:
        code, body = self.api("GET", "/v1/status")
        assert code == 200, body
        for svc in body["services"]:
            self.seen_pids.update(i["pid"] for i in svc["instances"] if i["pid"])
        return body

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["services"] if s["service"] == name)

    def control_pid(self) -> int:
        return int(json.loads((self.state_dir / "control.json").read_text())["pid"])


def write_spec(tmp: Path, body: str, port: int) -> Path:
    path = tmp / "shoal.yaml"
    path.write_text(f"system: test\ncontrol:\n  port: {port}\n{body}")
    return path


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    fleets: list[Fleet] = []

    def start(body: str, env: dict[str, str] | None = None) -> Fleet:
        """``shoal up --detach`` of ``body``; ``env``: the environment it runs in."""
        port = free_port()
        spec = write_spec(tmp_path, body, port)
        state = tmp_path / ".shoal"
        result = shoal("up", str(spec), "--detach", "--state-dir", str(state), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        fleet = Fleet(spec, state, port)
        fleets.append(fleet)
        fleet.status()
        return fleet

    yield start
    for fleet in fleets:
        if (fleet.state_dir / "control.json").exists():
            pid = fleet.control_pid()
            shoal("down", "--state-dir", str(fleet.state_dir))
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        for pid in fleet.seen_pids:
            for child in group_pids(pid):
                os.kill(child, signal.SIGKILL)
