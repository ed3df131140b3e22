"""The control API fuzzed on a real control plane on loopback: no path, method, query
parameter, header or body, with the fleet's credentials or without, answers 5xx or leaves a
traceback in ``control.log``.

The control API has no OpenAPI document (the services do: tests/integration/shop), so the
requests are generated here with hypothesis from the API's route table and parameter names,
bounded in examples and in time. Requests that would take the fleet down or resize it with
valid credentials (shutdown, rollout/restart of its service, a real scale) are left out: their
behaviour is tested where it is specified.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import signal
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yarl
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from tests.integration.fleet.conftest import group_pids, pid_alive, shoal, write_spec

from shoal.platform._obsapi import SESSION_COOKIE, session_value
from shoal.testing import free_port

pytestmark = pytest.mark.integration

SERVICE = "ticker"
#: Seconds the fuzz may run (the example budget usually ends it first).
TIME_BUDGET = float(os.environ.get("SHOAL_FUZZ_SECONDS", "60"))
EXAMPLES = int(os.environ.get("SHOAL_FUZZ_EXAMPLES", "600"))

ROUTES = ["/", "/login", "/favicon.ico", "/dashboard/", "/dashboard/{}", "/v1/status",
          "/v1/services/{}", "/v1/services/{}/scale", "/v1/services/{}/rollout",
          "/v1/services/{}/restart", "/v1/services/{}/kill", "/v1/shutdown", "/v1/metrics",
          "/v1/logs", "/v1/events", "/v1/sd/prometheus", "/v1/chaos", "/v1/{}", "/{}"]
PARAMS = ["index", "wait", "service", "instance", "level", "trace", "grep", "since", "until",
          "after", "limit", "history", "token"]
BODY_KEYS = ["replicas", "service", "kind", "for_s", "rate", "latency_ms", "status", "instance"]
NASTY = ["", "0", "1", "-1", "00", "1.5", "nan", "-inf", "inf", "1e400", "9" * 30, "30s", "5m",
         "1d", "0001-01-01", "9999-12-31T23:59:59", "2026-01-01T00:00:00+25:00", "debug",
         "warning", "bogus", '"', "*", "a*", "\x00", "é", "\ud800", "..", "../..", "%", "%zz",
         SERVICE, f"{SERVICE}-1", "index.html", "app.js", "style.css", "x\x00.css", ".css",
         "../style.css", "true", "false", "errors", "latency", "kill"]

Request = tuple[str, str, dict[str, bytes], bytes | None]


def _encode(raw: str | bytes, safe: str) -> str:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return urllib.parse.quote(data, safe=safe)


raw_values = st.one_of(st.sampled_from(NASTY), st.text(max_size=24), st.binary(max_size=16))
encoded = st.builds(_encode, raw_values, st.sampled_from(["", "/", "/%", "%"]))
queries = st.lists(st.tuples(st.one_of(st.sampled_from(PARAMS), st.text(max_size=8)), encoded),
                   max_size=5)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-3, 103)
    | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(NASTY) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)
bodies = st.one_of(
    st.none(), st.binary(max_size=64),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.builds(lambda v: json.dumps(v).encode(),
              st.dictionaries(st.sampled_from(BODY_KEYS), json_values, max_size=6)),
    st.builds(lambda v: json.dumps(v).encode("utf-16"), json_values),
)
content_types = st.sampled_from([None, "application/json", "application/json; charset=nope",
                                 "application/json; charset=utf-16", "text/plain; charset=",
                                 "multipart/form-data; boundary=x", "\u00e9/\u00e9"])
#: Mostly the fleet's own credentials: most of the API is behind them.
auths = st.sampled_from(["bearer"] * 4 + ["session"] * 2 + [
    "none", "bearer-wrong", "bearer-nonascii", "session-wrong", "basic"])
methods = st.sampled_from(["GET"] * 4 + ["POST"] * 2 + ["HEAD", "PUT", "DELETE", "PATCH",
                                                         "OPTIONS"])


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, str | None, bytes | None]:
    # The routes with query parameters twice as often as the others.
    template = draw(st.sampled_from(
        [*ROUTES, "/v1/logs", "/v1/services/{}", "/v1/events", "/v1/chaos", "/login"]))
    segment = draw(st.one_of(st.just(SERVICE), encoded))
    path = template.replace("{}", segment)
    query = urllib.parse.urlencode(draw(queries), safe="%", quote_via=urllib.parse.quote)
    target = path + ("?" + query if query else "")
    return draw(methods), target, draw(auths), draw(content_types), draw(bodies)


def _destructive(method: str, target: str, auth: str, body: bytes | None) -> bool:
    """Would a valid token make this stop, roll or resize the fleet under test?"""
    if auth != "bearer" or method != "POST":
        return False
    try:
        path = yarl.URL(target.split("?", 1)[0], encoded=True).path
    except ValueError:
        return False
    if path == "/v1/shutdown" or re.fullmatch(rf"/v1/services/{SERVICE}/(rollout|restart)", path):
        return True
    if path == f"/v1/services/{SERVICE}/scale":
        try:
            replicas = json.loads(body or b"{}").get("replicas")
        except (ValueError, AttributeError):
            return False
        return isinstance(replicas, int) and not isinstance(replicas, bool) and replicas != 1
    return False


def _slow(target: str) -> bool:
    """A ``wait`` the server would honour for more than a moment (long polls are fine, but
    not in a fuzz's time budget)."""
    for name, value in urllib.parse.parse_qsl(target.partition("?")[2]):
        if name == "wait":
            try:
                seconds = float(value)
            except ValueError:
                continue
            if math.isfinite(seconds) and seconds > 0.2:
                return True
    return False


class Control:
    def __init__(self, port: int, state_dir: Path) -> None:
        self.port = port
        self.state_dir = state_dir
        self.token = (state_dir / "token").read_text().strip()

    def headers(self, auth: str, content_type: str | None) -> dict[str, bytes]:
        headers = {
            "none": {},
            "bearer": {"Authorization": f"Bearer {self.token}"},
            "bearer-wrong": {"Authorization": f"Bearer {self.token[:-1]}x"},
            "bearer-nonascii": {"Authorization": "Bearer \u00e9\u4e2d\ud83d\ude00"},
            "session": {"Cookie": f"{SESSION_COOKIE}={session_value(self.token)}"},
            "session-wrong": {"Cookie": f"{SESSION_COOKIE}=\u00e9; other=1"},
            "basic": {"Authorization": "Basic Zm9vOmJhcg=="},
        }[auth]
        if content_type is not None:
            headers["Content-Type"] = content_type
        return {k: v.encode("utf-8", "surrogatepass") for k, v in headers.items()}

    def send(self, method: str, target: str, headers: dict[str, bytes],
             body: bytes | None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def tracebacks(self) -> list[str]:
        """Errors the control plane logged while handling a request."""
        found = []
        for line in (self.state_dir / "control.log").read_text().splitlines():
            with_traceback = "Traceback" in line or "Error handling request" in line
            if with_traceback or ('"logger":"aiohttp' in line and '"level":"error"' in line):
                found.append(line)
        return found


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    tmp = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    spec = write_spec(tmp, f"""
services:
  {SERVICE}:
    command: ["{sys.executable}", "-m", "tests.apps.ticker"]
    drain_grace: 1
""", port)
    state = tmp / ".shoal"
    result = shoal("up", str(spec), "--detach", "--state-dir", str(state))
    assert result.returncode == 0, result.stdout + result.stderr
    control_pid = int(json.loads((state / "control.json").read_text())["pid"])
    try:
        yield Control(port, state)
    finally:
        replicas = [i["pid"] for i in json.loads((state / "instances.json").read_text())
                    if i.get("pid")] if (state / "instances.json").exists() else []
        shoal("down", "--state-dir", str(state))
        if pid_alive(control_pid):
            os.kill(control_pid, signal.SIGKILL)
        for pid in replicas:
            for child in group_pids(int(pid)):
                os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("auth", ["none", "session", "bearer"])
def test_a_dashboard_path_with_a_nul_byte_is_404_without_a_traceback(
        control: Control, auth: str) -> None:
    for target in ("/dashboard/x%00.css", "/dashboard/%00", "/dashboard/%ff.css",
                   "/dashboard/%ED%A0%80.js", "/dashboard/..%2Fapp.js", "/dashboard/.css"):
        assert control.send("GET", target, control.headers(auth, None), None) == 404, target
    assert control.send("GET", "/dashboard/style.css", {}, None) == 200
    assert control.tracebacks() == []


def test_credentials_with_any_characters_are_refused_not_crashed(control: Control) -> None:
    for auth in ("bearer-nonascii", "session-wrong"):
        assert control.send("GET", "/v1/status", control.headers(auth, None), None) == 401
    assert control.send("GET", "/login?token=%C3%A9%00", {}, None) == 401
    assert control.tracebacks() == []


def test_no_path_parameter_or_body_gets_a_server_error(control: Control) -> None:
    deadline = time.monotonic() + TIME_BUDGET
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(request=requests())
    # Each of these answered 500 before the hardening.
    @example(request=("GET", "/dashboard/x%00.css", "none", None, None))
    @example(request=("GET", "/v1/status", "bearer-nonascii", None, None))
    @example(request=("GET", "/login?token=%C3%A9", "none", None, None))
    @example(request=("GET", "/v1/logs?after=99999999999999999999999", "bearer", None, None))
    @example(request=("POST", "/v1/services/nope/scale", "bearer",
                      "application/json; charset=nope", b'{"replicas": 1}'))
    @example(request=("POST", "/v1/chaos", "bearer", "application/json",
                      b'{"service": "ticker", "kind": "errors", "status": 1e400}'))
    def check(request: tuple[str, str, str, str | None, bytes | None]) -> None:
        method, target, auth, content_type, body = request
        if time.monotonic() > deadline:
            return  # out of time: the remaining examples pass without a request
        assume(not _destructive(method, target, auth, body) and not _slow(target))
        status = control.send(method, target, control.headers(auth, content_type), body)
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, (method, target, auth, content_type, body)

    check()
    assert control.tracebacks() == []
    # The fuzz reached past the auth check: some requests were answered by handlers.
    assert {200, 400, 401, 404} <= set(seen), seen
