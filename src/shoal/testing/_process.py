"""Run an app in a real server process on a free loopback port, and always stop it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns something truthy (and return that), or raise
    ``AssertionError`` after ``timeout`` seconds saying ``what`` did not happen.

    The way to synchronise a test with real processes: a deadline, never a fixed sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A ``shoal serve`` child process: its URL, PID, captured output and lifecycle."""

    def __init__(
        self,
        target: str,
        *,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        interface: str = "auto",
        cwd: str | None = None,
        service: str | None = None,
    ) -> None:
        self.target = target
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ)
        full_env.update({"PORT": str(self.port), "SHOAL_HOST": "127.0.0.1",
                         "PYTHONUNBUFFERED": "1"})
        if service:
            full_env["SHOAL_SERVICE"] = service
        if env:
            full_env.update(env)
        self._cmd = [sys.executable, "-m", "shoal", "serve", target, "--interface", interface]
        self._env = full_env
        self._cwd = cwd or os.getcwd()
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, *, ready_path: str = "/livez", timeout: float = 20.0) -> ServerProcess:
        """Start the process and poll ``ready_path`` until it answers 200 (or raise)."""
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, our own module
            self._cmd,
            env=self._env,
            cwd=self._cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches gunicorn's worker
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.target} exited with {self.process.returncode} before it was ready:\n"
                    + self.output()[-4000:]
                )
            if self.get_status(ready_path) == 200:
                return self
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"{self.target} not ready within {timeout}s:\n{self.output()[-4000:]}")

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._lock:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def get_status(self, path: str, timeout: float = 2.0) -> int | None:
        """Status of ``GET path``, or ``None`` when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:  # noqa: S310
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, urllib.error.URLError):
            return None

    def output(self) -> str:
        with self._lock:
            return "\n".join(self._lines)

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON object the process printed so far (other lines are skipped)."""
        with self._lock:
            lines = list(self._lines)
        out = []
        for line in lines:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first JSON log line matching ``predicate``, polling until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines():
                if predicate(line):
                    return line
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching log line in {timeout}s:\n{self.output()[-3000:]}")
            time.sleep(0.02)

    def terminate(self) -> None:
        """Send SIGTERM (the drain starts); see :meth:`wait`."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        self._close_output()
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group (the server and any worker it forked)."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._close_output()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the group. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Reap anything left in the group (a gunicorn worker whose arbiter died first).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.kill()
        self._close_output()
        return self.process.returncode

    def _close_output(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


@contextlib.contextmanager
def run_server(
    target: str,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    interface: str = "auto",
    service: str | None = None,
    ready_path: str = "/livez",
    timeout: float = 20.0,
) -> Iterator[ServerProcess]:
    """Start ``target`` under ``shoal serve`` on a free loopback port; always stop it after.

    ::

        with run_server("myapp:app", service="orders") as server:
            urllib.request.urlopen(server.url + "/livez")
    """
    server = ServerProcess(target, env=env, port=port, interface=interface, service=service)
    try:
        server.start(ready_path=ready_path, timeout=timeout)
        yield server
    finally:
        server.stop()
