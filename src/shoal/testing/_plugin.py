"""pytest plugin: ``shoal_server`` starts apps in real server processes, stopped after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shoal.testing._process import ServerProcess


@pytest.fixture
def shoal_server() -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``shoal_server("pkg.app:app", service="orders", env={...})`` → started server.

    Every server started through it is stopped (SIGTERM, then SIGKILL of its process group)
    when the test ends, pass or fail.
    """
    started: list[ServerProcess] = []

    def start(target: str, *, ready_path: str = "/livez", timeout: float = 20.0,
              **kwargs: Any) -> ServerProcess:
        server = ServerProcess(target, **kwargs)
        started.append(server)
        return server.start(ready_path=ready_path, timeout=timeout)

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()
