"""Pure parts of the gateway: route matching, rewrite, header hygiene, token buckets, auth."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from shoal._errors import (
    ConfigurationError,
    UpstreamConnectError,
    UpstreamResetError,
    UpstreamTransportError,
)
from shoal.platform.gateway import (
    AuthError,
    RouteTable,
    TokenBuckets,
    TokenVerifier,
    forward_request_headers,
    forward_response_headers,
    mint_token,
)
from shoal.platform.gateway._proxy import _problem_for
from shoal.platform.gateway._routes import has_dot_segment
from shoal.platform.spec import Route, RouteAuth
from shoal.testing import FakeClock

SECRET = "unit-secret-that-is-at-least-32-bytes!"


def table(*routes: dict[str, object]) -> RouteTable:
    return RouteTable([Route.model_validate(r) for r in routes])


def test_longest_prefix_wins_on_segment_boundaries() -> None:
    t = table({"prefix": "/api", "service": "a"}, {"prefix": "/api/users", "service": "b"})
    assert t.match("/api/users/7").route.service == "b"  # type: ignore[union-attr]
    assert t.match("/api/users").route.service == "b"  # type: ignore[union-attr]
    assert t.match("/api/usersx").route.service == "a"  # type: ignore[union-attr]
    assert t.match("/apix") is None
    assert t.match("/") is None


@pytest.mark.parametrize(("prefix", "rewrite", "path", "expected"), [
    ("/api/users", "/users", "/api/users/7", "/users/7"),
    ("/api/users", "/users", "/api/users", "/users"),
    ("/api/users", "/", "/api/users/7", "/7"),
    ("/api/users", "/", "/api/users", "/"),
    ("/api/", "/v1/", "/api/x", "/v1/x"),
    ("/api/users", "/v2/", "/api/users/7", "/v2/7"),
    ("/api/users", None, "/api/users/7", "/api/users/7"),
])
def test_rewrite_replaces_the_prefix(prefix: str, rewrite: str | None, path: str,
                                     expected: str) -> None:
    route = table({"prefix": prefix, "service": "a", "rewrite": rewrite}).match(path)
    assert route is not None
    assert route.upstream_path(path) == expected


@given(st.text(alphabet="/abc.%@:2eF", max_size=30))
def test_upstream_path_always_starts_with_a_slash(suffix: str) -> None:
    path = "/api/users/" + suffix
    route = table({"prefix": "/api/users", "service": "a", "rewrite": "/"}).match(path)
    assert route is not None
    assert route.upstream_path(path).startswith("/")


def test_dot_segments_are_detected_also_encoded() -> None:
    assert has_dot_segment("/a/../b")
    assert has_dot_segment("/a/%2e%2E/b")
    assert has_dot_segment("/a/.")
    assert not has_dot_segment("/a/b.json")
    assert not has_dot_segment("/a/...")


def test_request_headers_drop_hop_by_hop_and_set_forwarded() -> None:
    out = forward_request_headers([
        (b"host", b"shop.example"), (b"connection", b"close, x-hop"), (b"x-hop", b"1"),
        (b"transfer-encoding", b"chunked"), (b"te", b"trailers"), (b"keep-alive", b"5"),
        (b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2"),
        (b"traceparent", b"00-x"), (b"x-request-id", b"r"), (b"x-shoal-deadline-ms", b"9"),
        (b"accept", b"a"), (b"accept", b"b"), (b"cookie", b"a=1"), (b"cookie", b"b=2"),
    ], client_ip="10.0.0.1", scheme="https")
    assert out == {
        "accept": "a, b",
        "cookie": "a=1; b=2",
        "x-forwarded-for": "1.1.1.1, 2.2.2.2, 10.0.0.1",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "shop.example",
    }


def test_response_headers_drop_server_and_x_powered_by_unless_configured_otherwise() -> None:
    raw = [(b"Server", b"uvicorn/0.30"), (b"X-Powered-By", b"Express"), (b"X-Kept", b"1")]
    assert forward_response_headers(raw) == [(b"x-kept", b"1")]
    assert forward_response_headers(raw, strip=frozenset({b"x-kept"})) == [
        (b"server", b"uvicorn/0.30"), (b"x-powered-by", b"Express")]


def test_response_headers_keep_repeats_and_drop_connection_named() -> None:
    out = forward_response_headers([
        (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Connection", b"x-private"),
        (b"X-Private", b"1"), (b"Transfer-Encoding", b"chunked"), (b"X-Request-Id", b"r"),
        (b"Date", b"d"), (b"Content-Length", b"3"),
    ])
    assert out == [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"content-length", b"3")]


def test_token_bucket_allows_bursts_then_refills_at_the_rate() -> None:
    clock = FakeClock(100.0)
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # per client
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 10
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # capped at burst


@given(st.lists(st.floats(min_value=0, max_value=2), max_size=60))
def test_token_bucket_never_admits_more_than_burst_plus_rate_times_time(
    steps: list[float],
) -> None:
    clock = FakeClock(100.0)
    buckets = TokenBuckets(rate=1.0, burst=2, clock=clock)
    admitted = 0
    for step in steps:
        clock.now += step
        admitted += buckets.take("k") == 0.0
    assert admitted <= 2 + sum(steps) + 1e-9


def test_token_buckets_stay_bounded_under_many_clients() -> None:
    clock = FakeClock(100.0)
    buckets = TokenBuckets(rate=1.0, burst=1, clock=clock, max_keys=100)
    for i in range(1000):
        buckets.take(f"client-{i}")
    assert len(buckets) <= 100


def test_hs256_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_UNIT_SECRET", SECRET)
    verifier = TokenVerifier(RouteAuth(secret_env="GW_UNIT_SECRET", scopes=["a"]))
    token = mint_token(SECRET, subject="ada", scopes=["a", "b"], ttl=60)
    assert verifier.verify(f"Bearer {token}")["sub"] == "ada"
    with pytest.raises(AuthError) as missing:
        verifier.verify(None)
    assert missing.value.status == 401
    with pytest.raises(AuthError) as scope:
        verifier.verify("Bearer " + mint_token(SECRET, subject="x", scopes=["b"], ttl=60))
    assert scope.value.status == 403
    none_alg = jwt.encode({"sub": "x", "scope": "a", "exp": time.time() + 60}, None,
                          algorithm="none")
    with pytest.raises(AuthError) as alg:
        verifier.verify(f"Bearer {none_alg}")
    assert alg.value.status == 401


@pytest.mark.parametrize("claims", [
    {"exp": "99999999999"},  # a numeric string, which PyJWT takes for a number
    {"exp": 4102444800.0 * 10},  # centuries away
    {"exp": 4102444800},  # 2100, minted now
    {"iat": "0", "exp": int(time.time()) + 600},
    {"exp": True},
])
def test_hs256_verifier_refuses_exp_that_is_no_number_or_too_far(
    monkeypatch: pytest.MonkeyPatch, claims: dict[str, object],
) -> None:
    monkeypatch.setenv("GW_UNIT_SECRET", SECRET)
    verifier = TokenVerifier(RouteAuth(secret_env="GW_UNIT_SECRET"))
    token = jwt.encode({"sub": "x", **claims}, SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as refused:
        verifier.verify(f"Bearer {token}")
    assert refused.value.status == 401


def test_hs256_verifier_bounds_the_lifetime_past_iat_and_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GW_UNIT_SECRET", SECRET)
    verifier = TokenVerifier(RouteAuth(secret_env="GW_UNIT_SECRET", max_lifetime=3600))
    now = int(time.time())

    def verify(**claims: object) -> None:
        verifier.verify("Bearer " + jwt.encode({"sub": "x", **claims}, SECRET,
                                               algorithm="HS256"))

    verify(iat=now, exp=now + 3600)
    verify(exp=now + 3000)  # (no iat: counted from now)
    verify(iat=now - 3000, exp=now + 500)
    for claims in ({"iat": now, "exp": now + 3700}, {"exp": now + 3700},
                   {"iat": now - 3000, "exp": now + 700}):
        with pytest.raises(AuthError, match="lives longer than 3600 s"):
            verify(**claims)
    assert TokenVerifier(RouteAuth(secret_env="GW_UNIT_SECRET")).max_lifetime == 86400


def test_hs256_verifier_needs_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_UNSET_SECRET", raising=False)
    with pytest.raises(ConfigurationError, match="GW_UNSET_SECRET"):
        TokenVerifier(RouteAuth(secret_env="GW_UNSET_SECRET"))


def test_rs256_verifier_with_a_jwks_file(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "k1"
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    verifier = TokenVerifier(RouteAuth(algorithm="RS256", jwks_file=str(path), audience="shop"))
    good = mint_token("", subject="ada", scopes=[], ttl=60, algorithm="RS256",
                      private_key=pem, key_id="k1", audience="shop")
    assert verifier.verify(f"Bearer {good}")["aud"] == "shop"
    unknown = mint_token("", subject="ada", scopes=[], ttl=60, algorithm="RS256",
                         private_key=pem, key_id="k2", audience="shop")
    with pytest.raises(AuthError):
        verifier.verify(f"Bearer {unknown}")
    wrong_aud = mint_token("", subject="ada", scopes=[], ttl=60, algorithm="RS256",
                           private_key=pem, key_id="k1", audience="other")
    with pytest.raises(AuthError):
        verifier.verify(f"Bearer {wrong_aud}")


def test_mint_token_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigurationError):
        mint_token(SECRET, subject="a", scopes=[], ttl=0)
    with pytest.raises(ConfigurationError):
        mint_token(SECRET, subject="a", scopes=[], ttl=10, algorithm="HS512")


def test_a_failed_connect_and_a_reset_are_502s_that_say_what_happened() -> None:
    route = table({"prefix": "/api", "service": "users"}).match("/api/x")
    assert route is not None
    connect = UpstreamConnectError("refused", service="users")
    reset = UpstreamResetError("reset", service="users")
    transport = UpstreamTransportError("broke", service="users")
    assert _problem_for(connect, route) == (502, "users could not be reached.", None)
    assert _problem_for(reset, route) == (
        502, "users closed the connection before answering.", None)
    assert _problem_for(transport, route) == (502, "users failed.", None)
