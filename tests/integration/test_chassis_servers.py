"""The chassis behaviour against real server processes, for both frameworks."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal.testing import run_server, wait_until

pytestmark = pytest.mark.integration

APPS = {
    "fastapi": "tests.apps.chassis_fastapi:app",
    "flask": "tests.apps.chassis_flask:app",
}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def call(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
         body: Any = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


@pytest.fixture(scope="module", params=sorted(APPS))
def server(request, tmp_path_factory):
    """One server per framework, shared by the tests that leave it as they found it."""
    marker = tmp_path_factory.mktemp(request.param) / "not-ready"
    with run_server(APPS[request.param], service=f"svc-{request.param}",
                    env={"TEST_NOT_READY_FILE": str(marker)}) as srv:
        srv.framework = request.param
        srv.not_ready_marker = marker
        yield srv


@pytest.fixture(params=sorted(APPS))
def fresh_server(request, shoal_server):
    srv = shoal_server(APPS[request.param], service=f"drain-{request.param}",
                       env={"SHOAL_DRAIN_GRACE": "5"})
    srv.framework = request.param
    return srv


def request_counts(server) -> dict[tuple[str, str], float]:
    _, _, body = call(server.url + "/metrics")
    service = f"svc-{server.framework}"
    return {
        (s.labels["route"], s.labels["status"]): s.value
        for f in text_string_to_metric_families(body.decode()) if f.name == "http_requests"
        for s in f.samples
        if s.name == "http_requests_total" and s.labels["service"] == service
    }


def test_livez_and_readyz_report_each_check(server):
    status, _, body = call(server.url + "/livez")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    status, _headers, body = call(server.url + "/readyz")
    assert status == 200
    data = json.loads(body)
    assert data["status"] == "ready"
    assert data["checks"]["marker"]["status"] == "ok"
    assert "duration_ms" in data["checks"]["marker"]


def test_failing_readiness_check_turns_readyz_503_naming_it(server):
    server.not_ready_marker.write_text("x")
    status, _, body = call(server.url + "/readyz")
    assert status == 503
    data = json.loads(body)
    assert data["status"] == "not ready"
    assert data["checks"]["marker"] == {"status": "fail", "duration_ms": pytest.approx(
        data["checks"]["marker"]["duration_ms"]), "error": "returned False"}
    server.not_ready_marker.unlink()
    assert call(server.url + "/readyz")[0] == 200


def test_metrics_count_requests_by_route_template_never_raw_path(server):
    template = "/items/{item_id}" if server.framework == "fastapi" else "/items/<int:item_id>"
    before = request_counts(server)
    for item in (1, 2, 3):
        assert call(server.url + f"/items/{item}")[0] == 200
    assert call(server.url + "/no/such/path")[0] == 404
    status, headers, body = call(server.url + "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    after = request_counts(server)
    assert after[(template, "200")] - before.get((template, "200"), 0) == 3
    assert after[("<unmatched>", "404")] - before.get(("<unmatched>", "404"), 0) == 1
    assert not any(route.startswith("/items/1") for route, _ in after)
    hist = [s for s in families["http_request_duration_seconds"].samples
            if s.name.endswith("_count") and s.labels["route"] == template
            and s.labels["status_class"] == "2xx"]
    assert hist[0].value == after[(template, "200")]
    assert "http_requests_in_flight" in families
    assert "process_resident_memory_bytes" in families


def test_access_log_lines_are_json_carrying_the_callers_trace(server):
    status, headers, _ = call(server.url + "/items/7",
                              headers={"traceparent": TRACEPARENT, "x-request-id": "req-abc"})
    assert status == 200
    assert headers["x-request-id"] == "req-abc"
    app_line = server.wait_for_log(
        lambda ln: ln.get("event") == "item.read" and ln.get("request_id") == "req-abc")
    access = server.wait_for_log(
        lambda ln: ln.get("event") == "request" and ln.get("request_id") == "req-abc")
    for line in (app_line, access):
        assert line["trace_id"] == TRACE_ID
        assert line["request_id"] == "req-abc"
        assert line["service"] == f"svc-{server.framework}"
        assert line["span_id"]
        assert line["span_id"] != "00f067aa0ba902b7"
        assert {"ts", "level", "instance"} <= set(line)
    assert access["status"] == 200
    assert app_line["item_id"] == 7


def test_context_is_visible_to_handlers_and_malformed_trace_starts_a_new_one(server):
    _, headers, body = call(server.url + "/ctx", headers={"traceparent": "nonsense",
                                                         "x-shoal-deadline-ms": "5000"})
    data = json.loads(body)
    assert len(data["trace_id"]) == 32
    assert data["parent_span_id"] is None
    assert data["request_id"] == headers["x-request-id"]
    assert 0 < data["remaining"] <= 5.0
    _, _, body = call(server.url + "/ctx", headers={"traceparent": TRACEPARENT})
    assert json.loads(body)["trace_id"] == TRACE_ID


def test_errors_are_problem_json(server):
    status, headers, body = call(server.url + "/missing")
    assert (status, headers["content-type"]) == (404, "application/problem+json")
    assert json.loads(body)["title"] == "Not Found"

    status, headers, body = call(server.url + "/items/3", method="DELETE")
    assert status == 405
    assert headers["content-type"] == "application/problem+json"
    assert "GET" in headers["allow"]

    status, headers, body = call(server.url + "/users", method="POST", body={"name": ""})
    assert status == 422
    assert headers["content-type"] == "application/problem+json"
    fields = {e["field"].split(".")[-1] for e in json.loads(body)["errors"]}
    assert fields == {"name", "email"}

    status, headers, body = call(server.url + "/problem")
    assert status == 409
    assert headers["retry-after"] == "3"
    assert json.loads(body)["detail"] == "Already exists"


def test_500_never_leaks_the_exception_and_is_logged_with_the_trace_id(server):
    status, headers, body = call(server.url + "/boom", headers={"traceparent": TRACEPARENT})
    assert status == 500
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["trace_id"] == TRACE_ID
    assert "hunter2" not in body.decode()
    assert "Traceback" not in body.decode()
    logged = server.wait_for_log(
        lambda ln: ln.get("event") == "request.failed" and ln.get("trace_id") == TRACE_ID)
    assert logged["trace_id"] == TRACE_ID
    assert "hunter2" in logged["exception"]
    assert logged["level"] == "error"


def test_a_client_that_leaves_mid_body_is_no_server_error(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /raw HTTP/1.1\r\nhost: t\r\ncontent-type: text/plain\r\n"
                     b"content-length: 100\r\n\r\nfour")
    wait_until(lambda: any(route == "/raw" for route, _ in request_counts(server)),
               timeout=10, what="the abandoned request counted")
    statuses = {status for route, status in request_counts(server) if route == "/raw"}
    if server.framework == "fastapi":  # Starlette raised ClientDisconnect in the handler
        assert statuses == {"499"}  # nginx's "client closed request"
    else:  # (gunicorn hands Flask the short body; Flask answers it, to nobody)
        assert not any(status.startswith("5") for status in statuses)
    assert not [ln for ln in server.log_lines() if ln.get("event") == "request.failed"
                and ln.get("path") == "/raw"]


@pytest.fixture
def aborting_control_plane() -> Iterator[str]:
    """A stand-in control plane whose fault board aborts every request (``shoal chaos abort``)."""
    board = json.dumps({"rules": [{"kind": "abort", "rate": 1, "expires_in": 120}]}).encode()

    class Board(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(board)))
            self.end_headers()
            self.wfile.write(board)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Board)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def raw_get(url: str, path: str) -> bytes:
    """Everything the server sends for one ``GET`` until it closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".encode())
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("framework", sorted(APPS))
def test_an_injected_abort_drops_the_connection_without_an_answer(
    framework, shoal_server, aborting_control_plane
):
    srv = shoal_server(APPS[framework], service=f"chaos-{framework}",
                       env={"SHOAL_CHAOS": "1", "SHOAL_CONTROL_URL": aborting_control_plane})
    # (until the replica's first poll of the fault board, requests are answered)
    wait_until(lambda: b"200 OK" not in raw_get(srv.url, "/hello"), timeout=20,
               what="the abort rule applied")
    for _ in range(3):
        received = raw_get(srv.url, "/hello")
        head, _, body = received.partition(b"\r\n\r\n")
        # Nothing, or headers promising 64 bytes that never come: never a complete answer.
        if received:
            assert b"shoal-chaos: abort" in head.lower()
            assert b"content-length: 64" in head.lower()
            assert len(body) < 64
    assert not [ln for ln in srv.log_lines() if ln.get("event") == "request.failed"]
    assert call(srv.url + "/livez")[0] == 200  # (probes are never faulted)


def test_spent_deadline_is_refused_with_504(server):
    status, headers, _body = call(server.url + "/hello", headers={"x-shoal-deadline-ms": "0"})
    assert status == 504
    assert headers["content-type"] == "application/problem+json"


def test_the_heap_alive_at_startup_is_frozen_out_of_the_cyclic_gc(server):
    # (a full collection walks every tracked object: frozen, the startup heap is never
    # walked again, so full collections under load stop setting the p99)
    status, _, body = call(f"{server.url}/gc/frozen")
    assert status == 200
    assert json.loads(body)["frozen"] > 10_000


def test_sigterm_drains_in_flight_request_while_readyz_fails_then_exits_0(fresh_server):
    server = fresh_server
    result: dict[str, Any] = {}

    def slow_call() -> None:
        result["slow"] = call(server.url + "/slow?seconds=1.5", timeout=20)

    worker = threading.Thread(target=slow_call)
    worker.start()
    deadline = time.monotonic() + 10
    while not server.log_lines() or not any(
        ln.get("event") == "request" for ln in server.log_lines()
    ):
        # wait until the server is handling requests: the slow one is in flight once it
        # shows in the in-flight gauge
        _, _, body = call(server.url + "/metrics")
        if any(
            line.startswith("http_requests_in_flight{") and not line.endswith(" 0.0")
            for line in body.decode().splitlines()
        ):
            break
        assert time.monotonic() < deadline, "slow request never became in-flight"
        time.sleep(0.02)
    server.terminate()
    # readiness fails at once while the slow request is still being served
    deadline = time.monotonic() + 5
    while True:
        status, _, body = call(server.url + "/readyz")
        if status == 503:
            assert json.loads(body)["status"] == "draining"
            break
        assert time.monotonic() < deadline, "readyz never turned 503 after SIGTERM"
        time.sleep(0.02)
    assert worker.is_alive(), "the slow request finished before readiness was checked"
    worker.join(20)
    assert result["slow"][0] == 200
    assert json.loads(result["slow"][2]) == {"slept": 1.5}
    assert server.wait(20) == 0
    drained = [ln for ln in server.log_lines() if ln.get("event") == "drain.started"]
    assert drained
    assert drained[0]["in_flight"] >= 1


def test_serve_exits_2_naming_the_bad_variable():
    proc = subprocess.run(
        [sys.executable, "-m", "shoal", "serve", "tests.apps.chassis_fastapi:app"],
        env={"PATH": "/usr/bin:/bin", "SHOAL_DRAIN_GRACE": "forever", "PORT": "1"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert "SHOAL_DRAIN_GRACE" in proc.stderr


def test_serve_exits_2_for_an_app_that_does_not_import():
    proc = subprocess.run(
        [sys.executable, "-m", "shoal", "serve", "tests.apps.nope:app"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert "cannot import module 'tests.apps.nope'" in proc.stderr
