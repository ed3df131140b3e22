"""Header hygiene between the client and the upstream, in both directions.

Hop-by-hop headers (RFC 9110 §7.6.1: ``Connection`` and every header it names, plus the
classic list) describe one connection and are never forwarded. The gateway sets
``X-Forwarded-For/Proto/Host`` itself and leaves the trace context, request id and deadline to
the client, which carries them from the request's context (so a caller cannot replace them
with values the gateway did not check).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

HOP_BY_HOP = frozenset({
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
})
# Set by the gateway or its client for the upstream request, never copied from the caller.
_SET_BY_GATEWAY = frozenset({
    b"host",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"traceparent",
    b"tracestate",
    b"x-request-id",
    b"x-shoal-deadline-ms",
})
_DROP_REQUEST = HOP_BY_HOP | _SET_BY_GATEWAY
# The gateway's own server adds these to every response; an upstream's copy would duplicate.
_DROP_RESPONSE = HOP_BY_HOP | frozenset({b"x-request-id", b"date"})
#: Upstream response headers not passed to clients by default: they tell an attacker which
#: server and framework (and versions) stand behind the gateway.
STRIPPED_RESPONSE_HEADERS = frozenset({b"server", b"x-powered-by"})


def _connection_named(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(named)


def forward_request_headers(
    raw: Sequence[tuple[bytes, bytes]], *, client_ip: str | None, scheme: str
) -> dict[str, str]:
    """The headers to send upstream for a request with headers ``raw`` (names lower-case).

    Drops hop-by-hop headers (and those ``Connection`` names) and anything the gateway sets
    itself; appends ``client_ip`` (the connection's peer) to ``X-Forwarded-For``, as nginx's
    ``$proxy_add_x_forwarded_for`` does; sets ``X-Forwarded-Proto`` to
    ``scheme`` and ``X-Forwarded-Host`` to the caller's ``Host``. Repeated headers are joined
    with ``, `` (``Cookie`` with ``; ``), as RFC 9110 allows.
    """
    headers: dict[str, str] = {}
    host = None
    forwarded_for = None
    drop: frozenset[bytes] | None = None
    for name, value in raw:
        if name in _DROP_REQUEST:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"connection":
                drop = _connection_named(raw)
            continue
        if name == b"x-forwarded-for":
            text = value.decode("latin-1")
            forwarded_for = text if forwarded_for is None else f"{forwarded_for}, {text}"
            continue
        key = name.decode("latin-1")
        text = value.decode("latin-1")
        previous = headers.get(key)
        if previous is not None:
            text = f"{previous}{'; ' if name == b'cookie' else ', '}{text}"
        headers[key] = text
    if drop:
        for name in drop:
            headers.pop(name.decode("latin-1"), None)
    if client_ip:
        forwarded_for = client_ip if forwarded_for is None else f"{forwarded_for}, {client_ip}"
    if forwarded_for is not None:
        headers["x-forwarded-for"] = forwarded_for
    headers["x-forwarded-proto"] = scheme
    if host is not None:
        headers["x-forwarded-host"] = host
    return headers


def forward_response_headers(
    raw: Sequence[tuple[bytes, bytes]], *, strip: frozenset[bytes] = STRIPPED_RESPONSE_HEADERS,
) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers to send to the caller (ASGI form, repeats kept):
    without hop-by-hop headers, without the ``x-request-id``/``date`` the gateway's server
    sets itself and without those named in ``strip`` (lower-case)."""
    out: list[tuple[bytes, bytes]] = []
    has_connection = False
    for name, value in raw:
        lower = name.lower()
        if lower in _DROP_RESPONSE:
            has_connection = has_connection or lower == b"connection"
            continue
        if lower in strip:
            continue
        out.append((lower, value))
    if has_connection:
        named = _connection_named((n.lower(), v) for n, v in raw)
        out = [(n, v) for n, v in out if n not in named]
    return out
