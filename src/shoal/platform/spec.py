"""The fleet spec (``shoal.yaml``): one file describing a system of services.

Loaded with :func:`load_spec`; an invalid file raises :class:`SpecError` naming the file, the
line and the field. The same model drives ``shoal up`` and the deployment generators.

Besides each field's own rules the loader refuses: a key given twice in one mapping (YAML
would let the last silently win), NUL bytes or text that is not UTF-8, two fixed listeners on
one port (``control.port``, ``gateway.port``, a service's ``env.SHOAL_SHARED_PORT``), two
gateway routes with one prefix, and a listening host that is not loopback (``control.host``,
``gateway.host``, a service's ``env.SHOAL_HOST``) unless that block sets ``allow_remote: true``.

::

    system: shop
    services:
      users:
        app: examples.shop.users.app:app
        replicas: 2
      orders:
        app: examples.shop.orders.app:app
        depends_on: [users]
        autoscale: {min: 1, max: 4, metric: in_flight, target: 8}
    gateway:
      port: 8080
      routes:
        - {prefix: /api/users, service: users, rewrite: /users}
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shoal._errors import ShoalError

#: The service name the ``gateway`` block runs under.
GATEWAY_SERVICE = "gateway"
NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
#: Environment variables of a service that name where its replicas listen.
HOST_ENV = "SHOAL_HOST"
SHARED_PORT_ENV = "SHOAL_SHARED_PORT"
#: Ports the platform sets for each replica itself (a fixed one would collide between replicas).
_REPLICA_PORT_ENV = ("PORT", "SHOAL_PORT")


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _remote_refused(host: str, field: str) -> str:
    return (f"{field}: {host!r} is not a loopback address, so other machines could connect; "
            "set allow_remote: true beside it if that is what you want")


class SpecError(ShoalError):
    """The spec file is invalid; ``file``, ``line`` and ``field`` locate the first problem."""

    def __init__(self, message: str, *, file: str, line: int | None = None,
                 field: str | None = None) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {field + ': ' if field else ''}{message}")
        self.file = file
        self.line = line
        self.field = field
        self.message = message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Probe(_Strict):
    """An HTTP probe, as Kubernetes defines one."""

    path: str = Field(pattern=r"^/")
    period: Seconds = 1.0
    timeout: Seconds = 1.0
    failure_threshold: int = Field(default=3, ge=1, le=100)
    success_threshold: int = Field(default=1, ge=1, le=100)


class Probes(_Strict):
    readiness: Probe = Probe(path="/readyz", period=0.5)
    liveness: Probe = Probe(path="/livez", period=5.0, timeout=2.0)
    #: Seconds a new replica has to become ready before it counts as failed to start.
    startup_timeout: Seconds = 60.0


class Autoscale(_Strict):
    """Kubernetes-HPA-style autoscaling of a service's replicas."""

    min: int = Field(ge=1, le=100)
    max: int = Field(ge=1, le=100)
    metric: Literal["in_flight", "rps", "cpu"]
    #: Desired value of ``metric`` per replica (in-flight requests, req/s, or CPU percent).
    target: float = Field(gt=0)
    tolerance: float = Field(default=0.1, ge=0, lt=1)
    scale_down_stabilization: float = Field(default=300.0, ge=0, le=3600)
    max_scale_up_step: int = Field(default=4, ge=1, le=100)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscale:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class Resources(_Strict):
    """Requests/limits for generated Kubernetes manifests (ignored by ``shoal up``)."""

    cpu: str = Field(default="250m", pattern=r"^\d+(\.\d+)?m?$")
    memory: str = Field(default="256Mi", pattern=r"^\d+(Ki|Mi|Gi)$")
    cpu_limit: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?m?$")
    memory_limit: str = Field(default="512Mi", pattern=r"^\d+(Ki|Mi|Gi)$")


class Service(_Strict):
    """One service: its code, how many replicas, and how to probe and stop them."""

    app: str | None = Field(default=None, pattern=r"^[\w.]+:[\w.]+$")
    command: list[str] | None = Field(default=None, min_length=1)
    interface: Literal["auto", "asgi", "wsgi"] = "auto"
    replicas: int = Field(default=1, ge=0, le=100)
    env: dict[str, str] = Field(default_factory=dict)
    #: Variables of the environment ``shoal up`` runs in that this service's replicas inherit
    #: besides the documented allow-list (``PATH``, ``HOME``, the locale ...): nothing else of
    #: that environment reaches them.
    env_passthrough: list[str] = Field(default_factory=list)
    depends_on: list[Name] = Field(default_factory=list)
    probes: Probes = Probes()
    drain_grace: Seconds = 10.0
    autoscale: Autoscale | None = None
    #: Name of the service's own database in generated deployments (None: no database).
    database: Name | None = None
    resources: Resources = Resources()
    #: Let ``env.SHOAL_HOST`` name an address other than loopback (replicas reachable from
    #: other machines).
    allow_remote: bool = False

    @model_validator(mode="after")
    def _app_or_command(self) -> Service:
        if (self.app is None) == (self.command is None):
            raise ValueError("give exactly one of 'app' (module:attribute) or 'command'")
        return self

    @model_validator(mode="after")
    def _listeners(self) -> Service:
        for key in _REPLICA_PORT_ENV:
            if key in self.env:
                raise ValueError(
                    f"env.{key}: the platform gives each replica its own free port in PORT; "
                    f"for a port every replica shares, set {SHARED_PORT_ENV}")
        host = self.env.get(HOST_ENV)
        if host is not None and not self.allow_remote and not is_loopback(host):
            raise ValueError(_remote_refused(host, f"env.{HOST_ENV}"))
        shared = self.env.get(SHARED_PORT_ENV)
        if shared is not None and not (re.fullmatch(r"[0-9]{1,5}", shared)
                                       and 1 <= int(shared) <= 65535):
            raise ValueError(f"env.{SHARED_PORT_ENV}: must be a port number from 1 to 65535")
        return self

    @property
    def shared_port(self) -> int | None:
        """The fixed port every replica listens on beside its own (``SHOAL_SHARED_PORT``)."""
        shared = self.env.get(SHARED_PORT_ENV)
        return int(shared) if shared is not None else None

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ValueError(f"invalid environment variable name {key!r}")
        return env

    @field_validator("env_passthrough")
    @classmethod
    def _passthrough_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"invalid environment variable name {name!r}")
        return names


class RouteAuth(_Strict):
    """JWT bearer validation for a route (HS256 secret from env, or RS256 public key/JWKS)."""

    algorithm: Literal["HS256", "RS256"] = "HS256"
    #: Environment variable holding the HS256 secret.
    secret_env: str | None = None
    #: Path of a PEM public key or a JWKS file (RS256).
    public_key_file: str | None = None
    jwks_file: str | None = None
    audience: str | None = None
    issuer: str | None = None
    #: Scopes (space-separated ``scope`` claim) the token must carry; 403 otherwise.
    scopes: list[str] = Field(default_factory=list)
    #: Seconds a token may live: ``exp`` further than this past ``iat`` (or now) is refused.
    max_lifetime: float = Field(default=86400.0, gt=0)


class Route(_Strict):
    """A gateway route: requests under ``prefix`` go to ``service``."""

    prefix: str = Field(pattern=r"^/[^\s?#]*$")
    service: Name
    #: Replace ``prefix`` with this path when forwarding (``/api/users/1`` → ``/users/1``).
    rewrite: str | None = Field(default=None, pattern=r"^/[^\s?#]*$")
    timeout: Seconds = 10.0
    auth: RouteAuth | None = None
    methods: list[Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]] | None = None


class RateLimit(_Strict):
    """Per-client token bucket: ``rate`` requests/s with bursts up to ``burst``."""

    rate: float = Field(gt=0)
    burst: int = Field(ge=1)
    #: ``redis://127.0.0.1:6379/0`` to share the limit across gateway replicas.
    redis_url: str | None = None


class Gateway(_Strict):
    """The API gateway: the system's front door."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    replicas: int = Field(default=1, ge=1, le=32)
    routes: list[Route] = Field(min_length=1)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    rate_limit: RateLimit | None = None
    #: Client connections open at once; a connection beyond it is answered 503 and closed.
    #: ``None``: half the process' file-descriptor limit.
    max_connections: int | None = Field(default=None, ge=1)
    #: Seconds a request body may go without a byte arriving (then 408).
    body_timeout: Seconds = 10.0
    #: Seconds a body of declared length up to 64 KiB has to arrive whole (then 408).
    small_body_timeout: Seconds = 30.0
    #: Upstream response headers never passed to clients (names, any case).
    strip_response_headers: list[str] = Field(
        default_factory=lambda: ["server", "x-powered-by"])
    #: Let ``host`` be an address other than loopback (``0.0.0.0``: every interface).
    allow_remote: bool = False

    @model_validator(mode="after")
    def _checks(self) -> Gateway:
        if not self.allow_remote and not is_loopback(self.host):
            raise ValueError(_remote_refused(self.host, "host"))
        first: dict[str, int] = {}
        for i, route in enumerate(self.routes):
            j = first.setdefault(route.prefix, i)
            if j != i:
                raise ValueError(f"routes.{i}.prefix: {route.prefix!r} is also the prefix of "
                                 f"routes.{j}; the second route could never match")
        return self


class ControlPlane(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=7700, ge=0, le=65535)
    #: Where replicas discover each other: ``local`` (this control plane's registry), or
    #: ``etcd+http://host:port[,...][/root]``, shared by every fleet that names it.
    registry: str = Field(default="local", pattern=r"^(local|etcd\+https?://\S+)$")
    #: Fault injection middleware in services (never in generated production manifests).
    chaos: bool = True
    #: Let ``host`` be an address other than loopback. The API is plain HTTP behind a bearer
    #: token: only on a network you trust.
    allow_remote: bool = False

    @model_validator(mode="after")
    def _loopback(self) -> ControlPlane:
        if not self.allow_remote and not is_loopback(self.host):
            raise ValueError(_remote_refused(self.host, "host"))
        return self


class Spec(_Strict):
    """A whole system."""

    system: Name
    services: dict[Name, Service] = Field(min_length=1)
    gateway: Gateway | None = None
    control: ControlPlane = ControlPlane()

    @model_validator(mode="after")
    def _references(self) -> Spec:
        for name, svc in self.services.items():
            for dep in svc.depends_on:
                if dep not in self.services:
                    raise ValueError(f"services.{name}.depends_on: unknown service {dep!r}")
        if self.gateway:
            if GATEWAY_SERVICE in self.services:
                raise ValueError(f"services.{GATEWAY_SERVICE}: the name is reserved for the "
                                 "gateway block")
            for i, route in enumerate(self.gateway.routes):
                if route.service not in self.services:
                    raise ValueError(
                        f"gateway.routes.{i}.service: unknown service {route.service!r}")
        taken: dict[int, str] = {}
        for field, _, port in self.listeners():
            other = taken.setdefault(port, field)
            if other != field:
                raise ValueError(f"{field}: port {port} is also {other}; two listeners cannot "
                                 "share one port")
        self.start_order()  # raises on a dependency cycle
        return self

    def listeners(self) -> list[tuple[str, str, int]]:
        """``(field, host, port)`` of every fixed port the fleet listens on, in spec order
        (``control.port: 0``, any free port, is not one)."""
        found: list[tuple[str, str, int]] = []
        if self.control.port:
            found.append(("control.port", self.control.host, self.control.port))
        for name, svc in self.services.items():
            if svc.shared_port is not None:
                found.append((f"services.{name}.env.{SHARED_PORT_ENV}",
                              svc.env.get(HOST_ENV, "127.0.0.1"), svc.shared_port))
        if self.gateway is not None:
            found.append(("gateway.port", self.gateway.host, self.gateway.port))
        return found

    def start_order(self) -> list[list[str]]:
        """Services in dependency waves: each wave only depends on earlier ones."""
        remaining = {name: set(svc.depends_on) for name, svc in self.services.items()}
        waves: list[list[str]] = []
        done: set[str] = set()
        while remaining:
            wave = sorted(n for n, deps in remaining.items() if deps <= done)
            if not wave:
                raise ValueError("depends_on has a cycle among: " + ", ".join(sorted(remaining)))
            waves.append(wave)
            done.update(wave)
            for n in wave:
                del remaining[n]
        return waves


# -- loading with line numbers ---------------------------------------------------------------


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The deepest YAML node along ``loc`` (a pydantic error location)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    node = value
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def _key_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Line (1-based) of the key naming ``loc``'s last part, else of the nearest node."""
    parent = _node_at(root, loc[:-1]) if loc else root
    if isinstance(parent, yaml.MappingNode) and loc:
        for key, _ in parent.value:
            if key.value == str(loc[-1]):
                return int(key.start_mark.line) + 1
    node = _node_at(root, loc)
    return int(node.start_mark.line) + 1 if node is not None else None


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting every key a mapping gives twice (YAML keeps the last).

    ``duplicates`` gets ``(line, path, key, first_line)`` for each: ``path`` is where the
    mapping is (its keys and sequence indexes from the root), lines are 1-based."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, tuple[Any, ...], str, int]] = []
        self._path: list[Any] = []

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # ``index`` is the key node for a mapping's value, the position for a sequence's
        # item, None for a key (and the root).
        if isinstance(index, yaml.ScalarNode):
            part: Any = index.value
        elif isinstance(index, int) and not isinstance(index, bool):
            part = index
        elif isinstance(index, yaml.Node):
            part = "?"
        else:
            return super().compose_node(parent, index)
        self._path.append(part)
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue  # a ``<<`` merge is meant to be overridden
            first = seen.setdefault((key.tag, key.value), key)
            if first is not key:
                self.duplicates.append((key.start_mark.line + 1, tuple(self._path), key.value,
                                        first.start_mark.line + 1))
        return node


def _compose(text: str, file: str) -> tuple[yaml.Node | None, Any]:
    """The YAML node tree and the data of ``text``; :class:`SpecError` for anything that
    is not one well-formed YAML document with unique keys."""
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        raise SpecError("contains a NUL byte: this is not a text file", file=file, line=line)
    loader: _SpecLoader | None = None
    try:
        loader = _SpecLoader(text)
        root = loader.get_single_node()
        if loader.duplicates:
            line, path, key, first = min(loader.duplicates, key=lambda d: d[0])
            field = ".".join(str(p) for p in (*path, key))
            raise SpecError(f"duplicate key {key!r} (first given at line {first}); YAML "
                            "would silently keep the last", file=file, line=line, field=field)
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise SpecError(f"not valid YAML: {exc.problem}", file=file,
                        line=mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:
        # Control characters: PyYAML reports a position in the text, not a line.
        raise SpecError(f"not valid YAML: unacceptable character #x{exc.character:04x}",
                        file=file, line=text.count("\n", 0, exc.position) + 1) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", file=file) from None
    except RecursionError:
        raise SpecError("not valid YAML: nested too deeply", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()
    return root, data


def parse_spec(text: str, file: str = "<spec>") -> Spec:
    """Validate spec ``text``; raise :class:`SpecError` locating the first problem."""
    root, data = _compose(text, file)
    if not isinstance(data, dict):
        raise SpecError("the spec must be a mapping with 'system' and 'services'", file=file,
                        line=1)
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        # Our own checks name the field they refuse, below the model that ran them.
        ref = re.match(r"^([\w.]+): (.*)$", message) if err["type"] == "value_error" else None
        if ref:
            loc += tuple(int(p) if p.isdigit() else p for p in ref.group(1).split("."))
            message = ref.group(2)
        field = ".".join(str(p) for p in loc) or None
        raise SpecError(message, file=file, line=_key_line(root, loc), field=field) from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate the spec file at ``path``."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=str(p)) from None
    if b"\0" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\0")) + 1
        raise SpecError("contains a NUL byte: this is not a text file (a spec is UTF-8 YAML)",
                        file=str(p), line=line)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the spec as UTF-8",
                        file=str(p), line=line) from None
    return parse_spec(text, str(p))
