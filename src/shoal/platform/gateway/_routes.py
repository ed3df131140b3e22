"""Route matching: the longest configured path prefix wins, on a segment boundary."""

from __future__ import annotations

from urllib.parse import unquote

from shoal.platform.spec import Route


class MatchedRoute:
    """A compiled :class:`Route`: its prefix, rewrite, methods and metric label."""

    __slots__ = ("methods", "prefix", "rewrite", "route", "service_url", "timeout")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.prefix = route.prefix
        self.rewrite = route.rewrite
        self.timeout = route.timeout
        self.methods = frozenset(route.methods) if route.methods else None
        #: The client's URL base for the route's service (a logical name, never a host).
        self.service_url = f"http://{route.service}"

    def upstream_path(self, path: str) -> str:
        """The path forwarded upstream: ``prefix`` replaced by ``rewrite`` (when set).

        Always starts with ``/``, so it can only ever extend the instance's base URL.
        """
        if self.rewrite is None:
            return path
        rest = path[len(self.prefix):]
        if not rest:
            return self.rewrite
        if rest[0] != "/":  # prefix "/api/" matched "/api/x": keep the separator
            rest = "/" + rest
        return self.rewrite.rstrip("/") + rest


class RouteTable:
    """The gateway's routes, matched by longest prefix on a path-segment boundary:
    ``/api/users`` matches ``/api/users`` and ``/api/users/7`` but not ``/api/usersx``."""

    def __init__(self, routes: list[Route]) -> None:
        self._routes = sorted(
            (MatchedRoute(r) for r in routes), key=lambda m: len(m.prefix), reverse=True
        )

    def match(self, path: str) -> MatchedRoute | None:
        """The route for ``path`` (the raw, still percent-encoded path), or ``None``."""
        for compiled in self._routes:
            prefix = compiled.prefix
            if path.startswith(prefix) and (
                len(path) == len(prefix) or prefix.endswith("/") or path[len(prefix)] == "/"
            ):
                return compiled
        return None


def has_dot_segment(path: str) -> bool:
    """Whether ``path`` has a ``.`` or ``..`` segment (also percent-encoded): such a path could
    leave the route's prefix once an upstream normalises it, so the gateway refuses it."""
    if "." not in path and "%" not in path:
        return False
    return any(seg in (".", "..") for seg in unquote(path).split("/"))
