"""The gateway in front of real backend processes: routing, hygiene, limits, auth, failures.

One module-scoped fleet: ``users`` (2 replicas), ``orders`` and ``flaky`` (1 each), the
gateway served by ``shoal serve shoal.platform.gateway:app`` with a spec written to a temp
directory. Tests that kill or load things start their own fleet.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import psutil
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families
from tests.integration._gateway import (
    backend,
    exchange,
    gateway,
    one_route_spec,
    request,
    start_all,
)

from shoal.platform.gateway import mint_token
from shoal.testing import ServerProcess, free_port, wait_until

pytestmark = pytest.mark.integration

SECRET = "test-secret-of-at-least-32-bytes-length!"
MAX_BODY = 300 * 1024 * 1024

SPEC = """
system: shop
services:
  users: {{app: "tests.apps.gateway_backend:app", replicas: 2}}
  orders: {{app: "tests.apps.gateway_backend:app"}}
  flaky: {{app: "tests.apps.gateway_backend:app"}}
gateway:
  max_body_bytes: {max_body}
  routes:
    - {{prefix: /api/users, service: users, rewrite: /users}}
    - {{prefix: /api/orders, service: orders}}
    - {{prefix: /files, service: users, rewrite: /, timeout: 60}}
    - {{prefix: /slow, service: users, rewrite: /, timeout: 0.5}}
    - {{prefix: /flaky, service: flaky, rewrite: /}}
    - {{prefix: /readonly, service: users, rewrite: /, methods: [GET]}}
    - prefix: /secure
      service: users
      rewrite: /
      auth: {{secret_env: GW_TEST_SECRET, scopes: ["orders:read"]}}
    - prefix: /rsa
      service: users
      rewrite: /
      auth: {{algorithm: RS256, public_key_file: public.pem, issuer: shoal-test}}
"""


class Fleet:
    def __init__(self, gw: ServerProcess, users: list[ServerProcess], orders: ServerProcess,
                 private_pem: str) -> None:
        self.gw = gw
        self.users = users
        self.orders = orders
        self.private_pem = private_pem


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("gateway")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    (tmp / "public.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    spec = tmp / "shoal.yaml"
    spec.write_text(SPEC.format(max_body=MAX_BODY))
    with contextlib.ExitStack() as stack:
        users = [backend("users"), backend("users")]
        orders, flaky = backend("orders"), backend("flaky")
        start_all(stack, [*users, orders, flaky])
        gw = gateway(spec, {"users": users, "orders": [orders], "flaky": [flaky]},
                     GW_TEST_SECRET=SECRET)
        start_all(stack, [gw])
        yield Fleet(gw, users, orders, private_pem)


def test_routes_by_longest_prefix_and_rewrites_the_prefix(fleet: Fleet) -> None:
    users = request(fleet.gw.url, "GET", "/api/users/7?expand=orders&x=%2F")
    assert users.status == 200
    assert users.json()["path"] == "/users/7"
    assert users.json()["query"] == "expand=orders&x=%2F"
    assert users.json()["port"] in {str(s.port) for s in fleet.users}
    orders = request(fleet.gw.url, "POST", "/api/orders/3", body=b'{"n": 1}',
                     headers={"Content-Type": "application/json"})
    assert orders.status == 200
    assert orders.json()["path"] == "/api/orders/3"
    assert orders.json()["port"] == str(fleet.orders.port)
    assert orders.json()["body"] == '{"n": 1}'


def test_unknown_path_is_a_404_problem(fleet: Fleet) -> None:
    for path in ("/nope", "/api/usersx/1", "/"):
        reply = request(fleet.gw.url, "GET", path)
        assert reply.status == 404
        assert reply.header("content-type") == "application/problem+json"
        assert reply.json()["status"] == 404
        assert reply.json()["request_id"] == reply.header("x-request-id")


def test_method_outside_the_route_is_a_405_naming_allowed_methods(fleet: Fleet) -> None:
    reply = request(fleet.gw.url, "DELETE", "/readonly/x")
    assert reply.status == 405
    assert reply.header("allow") == "GET"


def test_request_headers_are_cleaned_and_forwarded_headers_set(fleet: Fleet) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    reply = request(fleet.gw.url, "GET", "/api/users/h", headers=[
        ("Host", "shop.example"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Upgrade", "h2c"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("traceparent", f"00-{trace}-00f067aa0ba902b7-01"),
        ("x-request-id", "rid-123"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("X-Custom", "kept"),
    ])
    assert reply.status == 200
    seen = reply.json()["headers"]
    for hop in ("x-hop", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert hop not in seen, hop
    assert seen.get("connection", "keep-alive") == "keep-alive"  # the gateway's own hop only
    # The client is the connection's peer (a header cannot choose its rate-limit bucket); it
    # is appended to the caller's chain, as nginx's $proxy_add_x_forwarded_for does.
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    plain = request(fleet.gw.url, "GET", "/api/users/h").json()["headers"]
    assert plain["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "shop.example"
    assert seen["host"] != "shop.example"
    assert seen["x-custom"] == "kept"
    assert seen["cookie"] == "a=1; b=2"
    # The trace continues (same trace id, the gateway's span as parent); the id is kept.
    assert seen["traceparent"].split("-")[1] == trace
    assert seen["traceparent"].split("-")[2] != "00f067aa0ba902b7"
    assert seen["x-request-id"] == "rid-123" == reply.header("x-request-id")
    assert 0 < int(seen["x-shoal-deadline-ms"]) <= 10_000


def test_response_headers_drop_hop_by_hop_and_keep_repeats(fleet: Fleet) -> None:
    reply = request(fleet.gw.url, "GET", "/files/cookies")
    assert reply.status == 200
    assert sorted(c.split(";")[0] for c in reply.all("set-cookie")) == ["a=1", "b=2"]
    assert reply.header("x-secret-hop") is None
    assert len(reply.all("x-request-id")) == 1
    assert len(reply.all("date")) == 1


def test_upstream_server_and_x_powered_by_headers_are_not_passed_on(fleet: Fleet) -> None:
    reply = request(fleet.gw.url, "GET", "/files/cookies")
    assert reply.status == 200
    assert reply.header("server") is None  # (uvicorn's)
    assert reply.header("x-powered-by") is None


def test_streams_a_large_download(fleet: Fleet) -> None:
    reply = request(fleet.gw.url, "GET", "/files/download?chunks=64&size=65536")
    assert reply.status == 200
    assert len(reply.body) == 64 * 65536


def test_streams_a_200_mb_upload_with_bounded_gateway_memory(fleet: Fleet) -> None:
    size, chunk = 200 * 1024 * 1024, b"z" * (256 * 1024)
    proc = psutil.Process(fleet.gw.pid)
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        reply = request(fleet.gw.url, "POST", "/files/upload",
                        body=(chunk for _ in range(size // len(chunk))), timeout=60)
    finally:
        done.set()
        watcher.join()
    assert reply.status == 200, reply.body
    assert reply.json()["bytes"] == size
    assert reply.json()["transfer_encoding"] == "chunked"
    growth = peak[0] - before
    assert growth < 40 * 1024 * 1024, f"gateway RSS grew by {growth / 2**20:.1f} MiB"


def test_declared_body_over_the_limit_is_a_413_without_reading_it(fleet: Fleet) -> None:
    reply = request(fleet.gw.url, "POST", "/files/upload",
                    headers={"Content-Length": str(MAX_BODY + 1)})
    assert reply.status == 413
    assert reply.header("content-type") == "application/problem+json"


def test_spent_route_timeout_is_a_504_problem(fleet: Fleet) -> None:
    started = time.monotonic()
    reply = request(fleet.gw.url, "GET", "/slow/slow?seconds=5")
    assert reply.status == 504
    assert reply.header("content-type") == "application/problem+json"
    assert time.monotonic() - started < 3.0


def test_open_breaker_is_a_503_problem_with_retry_after(fleet: Fleet) -> None:
    statuses = []
    for _ in range(60):
        reply = request(fleet.gw.url, "GET", "/flaky/fail")
        statuses.append(reply.status)
        if reply.status == 503:
            break
    assert statuses[0] == 500  # the upstream's own error passes through until the breaker opens
    assert reply.status == 503, statuses
    assert reply.header("content-type") == "application/problem+json"
    assert int(reply.header("retry-after") or 0) >= 1
    assert "circuit" in reply.json()["detail"]


def _token(**overrides: object) -> str:
    args: dict[str, object] = {"subject": "ada", "scopes": ["orders:read"], "ttl": 60}
    args.update(overrides)
    return mint_token(SECRET, **args)  # type: ignore[arg-type]


def test_bearer_auth_answers_401_and_403_problems(fleet: Fleet) -> None:
    url = fleet.gw.url
    missing = request(url, "GET", "/secure/x")
    assert missing.status == 401
    assert (missing.header("www-authenticate") or "").startswith("Bearer")
    assert missing.header("content-type") == "application/problem+json"
    wrong = mint_token("another-secret-that-is-32-bytes-long!!", subject="ada",
                       scopes=["orders:read"], ttl=60)
    expired = jwt.encode({"sub": "ada", "scope": "orders:read", "exp": int(time.time()) - 60},
                         SECRET, algorithm="HS256")
    for token in (wrong, "not-a-jwt", expired):
        reply = request(url, "GET", "/secure/x", headers={"Authorization": f"Bearer {token}"})
        assert reply.status == 401, token
    forbidden = request(url, "GET", "/secure/x",
                        headers={"Authorization": f"Bearer {_token(scopes=['users:read'])}"})
    assert forbidden.status == 403
    assert "insufficient_scope" in (forbidden.header("www-authenticate") or "")
    ok = request(url, "GET", "/secure/x", headers={"Authorization": f"Bearer {_token()}"})
    assert ok.status == 200
    assert ok.json()["headers"]["authorization"].startswith("Bearer ")


def test_more_than_one_authorization_header_is_a_400_on_every_route(fleet: Fleet) -> None:
    good = mint_token(SECRET, subject="ada", scopes=["orders:read"], ttl=60)
    forged = jwt.encode({"sub": "root", "scope": "orders:read", "exp": time.time() + 60},
                        None, algorithm="none")
    for path in ("/secure/x", "/api/users/1", "/nope"):
        reply = request(fleet.gw.url, "GET", path, headers=[
            ("Authorization", f"Bearer {forged}"), ("Authorization", f"Bearer {good}")])
        assert reply.status == 400, path
        assert reply.header("content-type") == "application/problem+json"
        assert "Authorization" in reply.json()["detail"]
    one = request(fleet.gw.url, "GET", "/secure/x", headers={"Authorization": f"Bearer {good}"})
    assert one.status == 200
    assert one.json()["headers"]["authorization"] == f"Bearer {good}"  # exactly what was checked


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /api/users/1 HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET /api/users/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /api/users/1 HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET /api/users/1 HTTP/1.2\r\nHost: a\r\n\r\n", 505),
    (b"CONNECT /api/users HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    (b"CONNECT users:80 HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    (b"GET /api/users/1#x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"POST /api/users/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"POST /api/users/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
     b"0\r\n\r\n", 501),
    (b"POST /api/users/1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\nzz-not-hex\r\n", 400),  # a malformed chunked body
])
def test_requests_rfc_9112_refuses_are_problems_never_forwarded(
    fleet: Fleet, head: bytes, status: int,
) -> None:
    reply = exchange(fleet.gw.url, head)
    assert reply.status == status
    assert reply.header("content-type") == "application/problem+json"
    assert reply.json()["status"] == status


def status_counts(url: str, route: str) -> dict[str, float]:
    metrics = request(url, "GET", "/metrics").body.decode()
    return {
        s.labels["status"]: s.value
        for family in text_string_to_metric_families(metrics) if family.name == "http_requests"
        for s in family.samples
        if s.name == "http_requests_total" and s.labels["route"] == route
        and s.labels["service"] == "gateway"
    }


def test_a_client_that_leaves_before_its_answer_is_counted_and_logged_as_499(
    fleet: Fleet,
) -> None:
    before = status_counts(fleet.gw.url, "/api/orders")
    host, port = fleet.gw.url.removeprefix("http://").split(":")
    for head in (b"content-length: 100\r\n\r\n0123456789",  # read whole before forwarding
                 b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"):  # streamed upstream
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /api/orders/left HTTP/1.1\r\nHost: a\r\n"
                         b"x-request-id: left-early\r\n" + head)
    wait_until(lambda: status_counts(fleet.gw.url, "/api/orders").get("499", 0)
               >= before.get("499", 0) + 2, timeout=10, what="two requests counted as 499")
    after = status_counts(fleet.gw.url, "/api/orders")
    assert after.get("500", 0) == before.get("500", 0)
    line = fleet.gw.wait_for_log(lambda ln: ln.get("request_id") == "left-early"
                                 and ln.get("event") == "request", timeout=5)
    assert line["status"] == 499
    # Nor did it count against orders: its breaker is closed, no call failed.
    assert request(fleet.gw.url, "GET", "/api/orders/still-fine").status == 200


def test_rs256_route_verifies_with_the_public_key(fleet: Fleet) -> None:
    good = mint_token("", subject="ada", scopes=[], ttl=60, algorithm="RS256",
                      private_key=fleet.private_pem, issuer="shoal-test")
    bad_issuer = mint_token("", subject="ada", scopes=[], ttl=60, algorithm="RS256",
                            private_key=fleet.private_pem, issuer="someone-else")
    hs = _token()
    assert request(fleet.gw.url, "GET", "/rsa/x",
                   headers={"Authorization": f"Bearer {good}"}).status == 200
    for token in (bad_issuer, hs):  # an HS256 token never passes an RS256 route
        assert request(fleet.gw.url, "GET", "/rsa/x",
                       headers={"Authorization": f"Bearer {token}"}).status == 401


def test_no_request_makes_the_gateway_connect_outside_the_registry(fleet: Fleet) -> None:
    canary = socket.socket()
    canary.bind(("127.0.0.1", 0))
    canary.listen(16)
    canary.setblocking(False)
    port = canary.getsockname()[1]
    target = f"127.0.0.1:{port}"
    try:
        attempts = [
            ("GET", f"http://{target}/api/users/1", {}),          # absolute-form target
            ("GET", "/api/users/1", {"Host": target}),
            ("GET", "/api/users/1", {"X-Forwarded-Host": target}),
            ("GET", f"/api/users@{target}/x", {}),
            ("GET", f"/api/users//{target}/x", {}),
            ("GET", f"/api/users/..%2F..%2F@{target}", {}),
            ("GET", f"//{target}/api/users/1", {}),
            ("CONNECT", target, {"Host": target}),
        ]
        for method, path, headers in attempts:
            with contextlib.suppress(OSError):
                request(fleet.gw.url, method, path, headers=headers, timeout=5)
        with pytest.raises(BlockingIOError):
            canary.accept()
    finally:
        canary.close()


def test_a_killed_replica_causes_no_failed_get(tmp_path: Path) -> None:
    spec = one_route_spec(tmp_path, "{prefix: /api/users, service: users, rewrite: /users}")
    with contextlib.ExitStack() as stack:
        replicas = start_all(stack, [backend("users"), backend("users")])
        gw = start_all(stack, [gateway(spec, {"users": replicas})])[0]
        statuses: list[int] = []
        ports: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set() and len(statuses) < 3000:
                reply = request(gw.url, "GET", "/api/users/1", timeout=10)
                statuses.append(reply.status)
                if reply.status == 200:
                    ports.append(reply.json()["port"])

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(load) for _ in range(4)]
            deadline = time.monotonic() + 20
            while len(statuses) < 100 and time.monotonic() < deadline:
                time.sleep(0.01)
            replicas[0].kill()
            after = len(statuses)
            while len(statuses) < after + 300 and time.monotonic() < deadline:
                time.sleep(0.01)
            stop.set()
            for f in futures:
                f.result()
        assert len(statuses) >= after + 300
        assert set(statuses) == {200}, [s for s in statuses if s != 200][:10]
        assert ports[-50:] == [str(replicas[1].port)] * 50


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    spec = one_route_spec(tmp_path, "{prefix: /api/users, service: users}",
                          gateway="rate_limit: {rate: 0.5, burst: 3}")
    with contextlib.ExitStack() as stack:
        replica = start_all(stack, [backend("users")])
        gw = start_all(stack, [gateway(spec, {"users": replica})])[0]
        statuses = [request(gw.url, "GET", "/api/users/1").status for _ in range(5)]
        assert statuses[:3] == [200, 200, 200]
        assert statuses[3:] == [429, 429]
        reply = request(gw.url, "GET", "/api/users/1")
        assert reply.status == 429
        assert reply.header("content-type") == "application/problem+json"
        assert 1 <= int(reply.header("retry-after") or 0) <= 2
        assert free_port()  # the probes are not rate limited:
        assert gw.get_status("/readyz") == 200


def test_every_request_is_counted_and_logged_like_a_chassis_service(fleet: Fleet) -> None:
    reply = request(fleet.gw.url, "GET", "/api/users/7", headers={"x-request-id": "count-me"})
    assert reply.status == 200
    metrics = request(fleet.gw.url, "GET", "/metrics").body.decode()
    # Labelled by the route's prefix (bounded), never by the raw path.
    assert any(line.startswith("http_requests_total{") and 'route="/api/users"' in line
               and 'service="gateway"' in line and 'status="200"' in line
               for line in metrics.splitlines())
    assert "/api/users/7" not in metrics
    line = fleet.gw.wait_for_log(lambda ln: ln.get("request_id") == "count-me"
                                 and ln.get("event") == "request", timeout=5)
    assert line["logger"] == "shoal.access"
    assert (line["method"], line["path"], line["route"], line["status"]) == (
        "GET", "/api/users/7", "/api/users", 200)
    assert line["service"] == "gateway"
    assert len(line["trace_id"]) == 32


def test_sigterm_drains_the_gateway_then_it_exits_0(tmp_path: Path) -> None:
    spec = one_route_spec(tmp_path, "{prefix: /api/users, service: users, rewrite: /, timeout: 30}")
    with contextlib.ExitStack() as stack:
        replicas = start_all(stack, [backend("users")])
        gw = start_all(stack, [gateway(spec, {"users": replicas}, SHOAL_DRAIN_DELAY="0.5",
                                       SHOAL_DRAIN_GRACE="20")])[0]
        slow: dict[str, int] = {}
        worker = threading.Thread(target=lambda: slow.update(
            status=request(gw.url, "GET", "/api/users/slow?seconds=2", timeout=20).status))
        worker.start()
        wait_until(lambda: 'http_requests_in_flight{service="gateway"} 1.0'
                   in request(gw.url, "GET", "/metrics").body.decode(), timeout=10,
                   what="the slow request in flight")
        gw.terminate()
        # Readiness fails at once; requests are still served while the slow one finishes.
        wait_until(lambda: request(gw.url, "GET", "/readyz").status == 503, timeout=5,
                   what="/readyz 503 after SIGTERM")
        assert request(gw.url, "GET", "/readyz").json()["status"] == "draining"
        assert request(gw.url, "GET", "/api/users/7").status == 200
        assert worker.is_alive(), "the slow request ended before the drain was observed"
        worker.join(20)
        assert slow["status"] == 200
        assert gw.wait(20) == 0
        events = [ln.get("event") for ln in gw.log_lines()]
        assert "drain.started" in events
        assert events.index("drain.started") < events.index("server.stopped")


def _gc_collected(url: str) -> float:
    """Objects the gateway's cyclic garbage collector has freed so far (all generations)."""
    text = request(url, "GET", "/metrics").body.decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "python_gc_objects_collected"
               for sample in family.samples)


def test_proxied_requests_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    # A reference cycle per request (the stream response once referred to itself) is garbage
    # only the cyclic collector frees: ~6 objects a request, a collection every ~100 requests.
    spec = one_route_spec(tmp_path, "{prefix: /api/users, service: users, rewrite: /users}")
    with contextlib.ExitStack() as stack:
        replicas = start_all(stack, [backend("users")])
        gw = start_all(stack, [gateway(spec, {"users": replicas})])[0]
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        stack.callback(conn.close)
        requests = 2000
        before = _gc_collected(gw.url)
        for _ in range(requests):  # (one keep-alive connection, as a client pool does)
            conn.request("GET", "/api/users/1")
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 200
        collected = _gc_collected(gw.url) - before
        assert collected < requests / 10, f"{collected:.0f} objects freed by the cyclic GC"


def test_a_stalled_or_trickling_body_is_answered_408_within_its_timeout(tmp_path: Path) -> None:
    spec = one_route_spec(tmp_path, "{prefix: /api, service: users}",
                          gateway="body_timeout: 1\n  small_body_timeout: 2")
    with contextlib.ExitStack() as stack:
        (users,) = start_all(stack, [backend("users")])
        (gw,) = start_all(stack, [gateway(spec, {"users": [users]})])
        host, port = gw.url.removeprefix("http://").split(":")
        head = b"POST /api/x HTTP/1.1\r\nHost: a\r\ncontent-length: 100\r\n\r\n"
        started = time.monotonic()
        stalled = exchange(gw.url, head + b"x")  # one byte, then nothing
        took = time.monotonic() - started
        assert stalled.status == 408
        assert stalled.header("connection") == "close"
        assert 1.0 <= took < 4.0
        started = time.monotonic()
        streamed = exchange(gw.url, b"POST /api/upload HTTP/1.1\r\nHost: a\r\n"
                            b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")  # (forwarded)
        assert streamed.status == 408
        assert 1.0 <= time.monotonic() - started < 4.0
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(head)
            started = time.monotonic()
            sock.settimeout(0.25)
            answer = b""
            while not answer and time.monotonic() - started < 10:
                sock.sendall(b"x")  # a byte every 0.25 s: never a 1 s gap
                with contextlib.suppress(TimeoutError):
                    answer = sock.recv(65536)
            took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"did not arrive whole within 2 s" in answer
        assert 2.0 <= took < 5.0
        assert request(gw.url, "GET", "/api/fine").status == 200


def test_at_max_connections_new_ones_get_503_while_open_ones_keep_working(
    tmp_path: Path,
) -> None:
    spec = one_route_spec(tmp_path, "{prefix: /api, service: users}",
                          gateway="max_connections: 4")
    with contextlib.ExitStack() as stack:
        (users,) = start_all(stack, [backend("users")])
        (gw,) = start_all(stack, [gateway(spec, {"users": [users]})])
        host, port = gw.url.removeprefix("http://").split(":")
        kept = http.client.HTTPConnection(host, int(port), timeout=10)
        stack.callback(kept.close)

        def get_on_kept(path: str) -> int:
            kept.request("GET", path)
            resp = kept.getresponse()
            resp.read()
            return resp.status

        assert get_on_kept("/api/first") == 200
        idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(3)]
        for sock in idle:
            stack.callback(sock.close)
        # (the 4 are open once the gateway counts them: the next one is refused)
        refused = wait_until(lambda: (r := request(gw.url, "GET", "/api/x")).status == 503
                             and r, timeout=10, what="a connection over the cap refused")
        assert refused.header("content-type") == "application/problem+json"
        assert refused.header("retry-after") == "1"
        assert get_on_kept("/api/second") == 200  # the open keep-alive connection still works
        for sock in idle:
            sock.close()
        wait_until(lambda: request(gw.url, "GET", "/api/x").status == 200, timeout=10,
                   what="new connections accepted again")
        assert gw.wait_for_log(lambda ln: ln.get("event") == "server.connections_refused",
                               timeout=5)["max_connections"] == 4
