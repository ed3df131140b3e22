"""What every deployment target derives from the spec: workloads, names, env, YAML output.

Generation is pure: the same spec gives byte-identical files (sorted keys, no timestamps), so
the committed ``deploy/`` tree can be checked for drift.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from shoal.platform.spec import GATEWAY_SERVICE, Autoscale, Probes, Resources, Spec

#: Port every service listens on inside its container (``PORT``); the gateway keeps its own.
SERVICE_PORT = 8000
#: uid/gid of the unprivileged user the images run as.
APP_UID = 10001
#: Where the gateway finds the spec (``SHOAL_GATEWAY_SPEC``), mounted read-only.
GATEWAY_SPEC_DIR = "/etc/shoal"
GATEWAY_SPEC_FILE = f"{GATEWAY_SPEC_DIR}/shoal.yaml"
GATEWAY_APP = "shoal.platform.gateway:app"
PYTHON_IMAGE = "python:3.11-slim-bookworm"
UV_VERSION = "0.13.8"
POSTGRES_IMAGE = "postgres:16-alpine"
POSTGRES_PORT = 5432


@dataclass(frozen=True, slots=True)
class Workload:
    """One deployable process type: a spec service, or the gateway."""

    name: str
    command: tuple[str, ...]
    port: int
    replicas: int
    probes: Probes
    drain_grace: float
    env: Mapping[str, str]
    depends_on: tuple[str, ...]
    resources: Resources
    autoscale: Autoscale | None = None
    database: str | None = None
    is_gateway: bool = False
    #: Top-level directory of the app's code to copy into the image (None: installed package).
    source_dir: str | None = None
    #: Services the gateway routes to (the gateway only).
    routes_to: tuple[str, ...] = field(default_factory=tuple)

    def image(self, system: str) -> str:
        return f"{system}-{self.name}"


def workloads(spec: Spec) -> list[Workload]:
    """Every workload of ``spec`` in start order (dependencies first), the gateway last."""
    result: list[Workload] = []
    for wave in spec.start_order():
        for name in wave:
            svc = spec.services[name]
            if svc.app is not None:
                command: tuple[str, ...] = ("shoal", "serve", svc.app)
                if svc.interface != "auto":
                    command += ("--interface", svc.interface)
                top = svc.app.partition(":")[0].split(".")[0]
                source_dir = None if top == "shoal" else top
            else:
                assert svc.command is not None
                command, source_dir = tuple(svc.command), None
            result.append(Workload(
                name=name, command=command, port=SERVICE_PORT, replicas=svc.replicas,
                probes=svc.probes, drain_grace=svc.drain_grace, env=dict(sorted(svc.env.items())),
                depends_on=tuple(sorted(svc.depends_on)), resources=svc.resources,
                autoscale=svc.autoscale, database=svc.database, source_dir=source_dir,
            ))
    if spec.gateway is not None:
        routed = tuple(sorted({route.service for route in spec.gateway.routes}))
        result.append(Workload(
            name=GATEWAY_SERVICE, command=("shoal", "serve", GATEWAY_APP),
            port=spec.gateway.port, replicas=spec.gateway.replicas, probes=Probes(),
            drain_grace=10.0, env={"SHOAL_GATEWAY_SPEC": GATEWAY_SPEC_FILE},
            depends_on=routed, resources=Resources(), is_gateway=True, routes_to=routed,
        ))
    return result


def gateway_spec_text(spec: Spec, header: str) -> str:
    """The spec as the gateway container sees it: without the ``control`` block (the local
    control plane and its fault injection do not exist in a deployment)."""
    data = spec.model_dump(mode="json", exclude={"control"}, exclude_defaults=True)
    return dump_yaml([data], header)


def base_env(workload: Workload, *, discovery: str, drain_delay: float) -> dict[str, str]:
    """The chassis settings of ``workload`` in a container, then the spec's own env."""
    env = {
        "PORT": str(workload.port),
        "SHOAL_DISCOVERY": discovery,
        "SHOAL_DRAIN_DELAY": seconds(drain_delay),
        "SHOAL_DRAIN_GRACE": seconds(workload.drain_grace),
        "SHOAL_HOST": "0.0.0.0",
        "SHOAL_SERVICE": workload.name,
    }
    env.update(workload.env)
    return dict(sorted(env.items()))


def readiness_command(workload: Workload) -> list[str]:
    """Exec-form health check for images without curl: exits non-zero unless ready (2xx)."""
    url = f"http://127.0.0.1:{workload.port}{workload.probes.readiness.path}"
    return ["python", "-c", f"import urllib.request; urllib.request.urlopen({url!r}, timeout=2)"]


def seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def whole_seconds(value: float) -> int:
    """Kubernetes counts probe periods and timeouts in whole seconds, at least one."""
    return max(1, math.ceil(value))


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def header_line(spec_path: str) -> str:
    return f"generated by shoal deploy from {spec_path}; do not edit"


class _Dumper(yaml.SafeDumper):
    """Block style, indented sequences, literal blocks for multi-line strings."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True  # a shared labels dict must not become an anchor and an alias


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(docs: Sequence[Mapping[str, Any]], header: str) -> str:
    """``docs`` as one YAML stream under a ``# header`` comment, keys sorted."""
    body = "---\n".join(
        yaml.dump(dict(doc), Dumper=_Dumper, sort_keys=True, default_flow_style=False,
                  width=100, allow_unicode=True)
        for doc in docs
    )
    return f"# {header}\n{body}"
