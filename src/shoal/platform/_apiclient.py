"""The CLI's client for the control API: address and token from the state dir."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from shoal.platform._state import PlatformError, StateDir


class ControlClient:
    """Talks to a running fleet's control plane (found through ``state``)."""

    def __init__(self, state: StateDir, *, timeout: float = 10.0) -> None:
        control = state.read_control()
        if control is None:
            raise PlatformError(f"no fleet is running from {state.path} (start one with "
                                "`shoal up`, or pass --state-dir)")
        self.base = f"http://{control['host']}:{control['port']}"
        self.token = state.read_token()
        self.timeout = timeout
        self.pid = int(control.get("pid", 0))

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                *, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 from our own state file
            self.base + path, data=data, method=method, headers={
                "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("detail", exc.reason)
            except ValueError:
                detail = exc.reason
            raise PlatformError(f"{method} {path}: {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise PlatformError(f"the control plane at {self.base} does not answer ({exc}); "
                                "is the fleet still running?") from None

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/status")
        return result
