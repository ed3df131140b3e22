"""The state directory (``.shoal/``): lock, bearer token, control-plane address, data."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shoal._errors import ShoalError

TOKEN_FILE = "token"  # noqa: S105 - a file name, not a secret
CONTROL_FILE = "control.json"
INSTANCES_FILE = "instances.json"
LOCK_FILE = "lock"


class PlatformError(ShoalError):
    """The platform cannot do what was asked; the message says why and what to do."""


@dataclass
class StateDir:
    path: Path

    @property
    def token_path(self) -> Path:
        return self.path / TOKEN_FILE

    @property
    def control_path(self) -> Path:
        return self.path / CONTROL_FILE

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "data").mkdir(exist_ok=True)

    def lock(self) -> IO[str]:
        """Hold the state dir for this fleet; :class:`PlatformError` if another fleet has it."""
        self.ensure()
        handle = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 - held for the fleet's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            running = self.read_control() or {}
            raise PlatformError(
                f"a fleet is already running from {self.path} (control plane pid "
                f"{running.get('pid', '?')} on {running.get('host', '?')}:"
                f"{running.get('port', '?')}); run `shoal down` first, or use another "
                "--state-dir"
            ) from None
        return handle

    def new_token(self) -> str:
        token = secrets.token_urlsafe(32)
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token)
        os.chmod(self.token_path, 0o600)
        return token

    def read_token(self) -> str:
        try:
            return self.token_path.read_text().strip()
        except FileNotFoundError:
            raise PlatformError(
                f"no fleet token in {self.path}: is a fleet running here (`shoal up`)?"
            ) from None

    def write_control(self, info: dict[str, Any]) -> None:
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(self.control_path)

    def read_control(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.control_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def clear_control(self) -> None:
        for path in (self.control_path, self.path / INSTANCES_FILE):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def write_instances(self, instances: list[dict[str, Any]]) -> None:
        """Record every replica's pid and port, so a fleet whose control plane died can still
        be stopped by ``shoal down`` (by these PIDs, never by process name)."""
        path = self.path / INSTANCES_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(instances, indent=2))
        tmp.replace(path)

    def read_instances(self) -> list[dict[str, Any]]:
        try:
            data = json.loads((self.path / INSTANCES_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [i for i in data if isinstance(i, dict)] if isinstance(data, list) else []
