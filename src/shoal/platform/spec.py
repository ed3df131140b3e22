"""The fleet spec (``shoal.yaml``): one file describing a system of services.

Loaded with :func:`load_spec`; an invalid file raises :class:`SpecError` naming the file, the
line and the field. The same model drives ``shoal up`` and the deployment generators.

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

    @model_validator(mode="after")
    def _app_or_command(self) -> Service:
        if (self.app is None) == (self.command is None):
            raise ValueError("give exactly one of 'app' (module:attribute) or 'command'")
        return self

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


class ControlPlane(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=7700, ge=0, le=65535)
    #: Where replicas discover each other: ``local`` (this control plane's registry), or
    #: ``etcd+http://host:port[,...][/root]``, shared by every fleet that names it.
    registry: str = Field(default="local", pattern=r"^(local|etcd\+https?://\S+)$")
    #: Fault injection middleware in services (never in generated production manifests).
    chaos: bool = True


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
        self.start_order()  # raises on a dependency cycle
        return self

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


def parse_spec(text: str, file: str = "<spec>") -> Spec:
    """Validate spec ``text``; raise :class:`SpecError` locating the first problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise SpecError(f"not valid YAML: {exc.problem}", file=file, line=line) from None
    if not isinstance(data, dict):
        raise SpecError("the spec must be a mapping with 'system' and 'services'", file=file,
                        line=1)
    try:
        return Spec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        # Cross-reference errors carry their own field path in the message.
        ref = re.match(r"^([\w.]+): (.*)$", message)
        if ref and not loc:
            loc = tuple(int(p) if p.isdigit() else p for p in ref.group(1).split("."))
            message = ref.group(2)
        field = ".".join(str(p) for p in loc) or None
        raise SpecError(message, file=file, line=_key_line(root, loc), field=field) from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate the spec file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror}", file=str(p)) from None
    return parse_spec(text, str(p))
