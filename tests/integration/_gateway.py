"""Helpers for the gateway integration tests: a fleet of real processes and raw HTTP."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from shoal.testing import ServerProcess

BACKEND = "tests.apps.gateway_backend:app"
GATEWAY = "shoal.platform.gateway:app"


def start_all(stack: contextlib.ExitStack, servers: list[ServerProcess]) -> list[ServerProcess]:
    """Start in parallel; every server is stopped when ``stack`` closes (even if one fails)."""
    for server in servers:
        stack.callback(server.stop)
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda s: s.start(timeout=40), servers))
    return servers


def one_route_spec(directory: Path, route: str, *, gateway: str = "") -> Path:
    """``shoal.yaml`` in ``directory``: one ``users`` service and a gateway with ``route`` (a
    YAML flow mapping) and, optionally, one more line of gateway settings."""
    spec = directory / "shoal.yaml"
    settings = f"  {gateway}\n" if gateway else ""
    spec.write_text("system: s\nservices:\n  users: {app: 'x:y'}\ngateway:\n"
                    f"{settings}  routes:\n    - {route}\n")
    return spec


def backend(service: str, **env: str) -> ServerProcess:
    return ServerProcess(BACKEND, service=service, env={"SHOAL_DRAIN_GRACE": "0", **env})


def gateway(spec: Path, discovery: Mapping[str, Iterable[ServerProcess]],
            **env: str) -> ServerProcess:
    static = ";".join(f"{name}=" + ",".join(s.url for s in servers)
                      for name, servers in discovery.items())
    return ServerProcess(GATEWAY, env={
        "SHOAL_GATEWAY_SPEC": str(spec),
        "SHOAL_DISCOVERY": f"static:{static}",
        "SHOAL_DRAIN_GRACE": "0",
        **env,
    })


class Reply:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str, method: str = "GET", path: str = "/", *,
    headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
    body: bytes | Iterable[bytes] | None = None, timeout: float = 10.0,
) -> Reply:
    """One request over a fresh connection, headers exactly as given (repeats allowed)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        if not any(k.lower() == "host" for k, _ in items):
            items.insert(0, ("Host", f"{host}:{port}"))
        chunked = body is not None and not isinstance(body, bytes)
        if isinstance(body, bytes):
            items.append(("Content-Length", str(len(body))))
        if chunked:
            items.append(("Transfer-Encoding", "chunked"))
        for key, value in items:
            conn.putheader(key, value)
        conn.endheaders()
        if isinstance(body, bytes):
            conn.send(body)
        elif body is not None:
            for chunk in body:
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        return Reply(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def exchange(url: str, data: bytes, *, timeout: float = 10.0) -> Reply:
    """``data`` sent as is over a fresh connection (any head, however malformed); the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return Reply(resp.status, resp.getheaders(), resp.read())
