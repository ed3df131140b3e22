"""``docker-compose.yml``: the fleet, PostgreSQL with a database per service, Prometheus and
Grafana, on one Docker host.

Services find each other through compose's DNS (``SHOAL_DISCOVERY=dns``: one A record per
replica, balanced by the chassis client). Only the gateway and the two dashboards publish
ports. Dependents start once their dependencies' health checks pass (readiness).
"""

from __future__ import annotations

import json
from typing import Any

from shoal.platform.deploy._common import (
    GATEWAY_SPEC_FILE,
    POSTGRES_IMAGE,
    POSTGRES_PORT,
    SERVICE_PORT,
    Workload,
    base_env,
    dump_yaml,
    readiness_command,
    seconds,
    whole_seconds,
)
from shoal.platform.deploy._docker import HEALTH_INTERVAL
from shoal.platform.spec import Spec

PROMETHEUS_IMAGE = "prom/prometheus:v2.55.1"
GRAFANA_IMAGE = "grafana/grafana:11.3.1"
DISCOVERY = f"dns:port={SERVICE_PORT}"


def _memory(quantity: str) -> str:
    """Kubernetes ``512Mi`` as compose's ``512m``."""
    return quantity.removesuffix("i").lower()


def database_url(workload: Workload, host: str) -> str:
    """Development credentials: the role and its password are named after the service."""
    db = workload.database
    return f"postgresql://{workload.name}:{workload.name}@{host}:{POSTGRES_PORT}/{db}"


def _service(workload: Workload, system: str, context: str, dockerfile: str) -> dict[str, Any]:
    probes = workload.probes
    env = base_env(workload, discovery=DISCOVERY, drain_delay=0)
    if workload.database:
        env["DATABASE_URL"] = database_url(workload, "postgres")
    depends: dict[str, Any] = {dep: {"condition": "service_healthy"}
                               for dep in workload.depends_on}
    if workload.database:
        depends["postgres"] = {"condition": "service_healthy"}
    limits: dict[str, Any] = {"memory": _memory(workload.resources.memory_limit)}
    service: dict[str, Any] = {
        "build": {"context": context, "dockerfile": dockerfile},
        "image": f"{workload.image(system)}:latest",
        "command": list(workload.command),
        "environment": dict(sorted(env.items())),
        "healthcheck": {
            "test": ["CMD", *readiness_command(workload)],
            "interval": f"{HEALTH_INTERVAL}s",
            "start_interval": f"{whole_seconds(probes.readiness.period)}s",
            "timeout": f"{whole_seconds(probes.readiness.timeout)}s",
            "retries": probes.readiness.failure_threshold,
            "start_period": f"{whole_seconds(probes.startup_timeout)}s",
        },
        "deploy": {"replicas": workload.replicas, "resources": {"limits": limits}},
        "read_only": True,
        "tmpfs": ["/tmp"],  # noqa: S108 - the container's own tmpfs
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "stop_grace_period": f"{seconds(workload.drain_grace + 2)}s",
        "restart": "unless-stopped",
    }
    if depends:
        service["depends_on"] = depends
    if workload.is_gateway:
        last = workload.port + max(workload.replicas, 1) - 1
        host = f"{workload.port}-{last}" if last != workload.port else str(workload.port)
        service["ports"] = [f"{host}:{workload.port}"]
        service["volumes"] = [f"./gateway-spec.yaml:{GATEWAY_SPEC_FILE}:ro"]
    return service


def init_sql(workloads: list[Workload], header: str) -> str:
    lines = [f"-- {header}",
             "-- One role and one database per service; no service can open another's."]
    for w in workloads:
        if w.database:
            lines += [
                f"CREATE ROLE \"{w.name}\" LOGIN PASSWORD '{w.name}';",
                f"CREATE DATABASE \"{w.database}\" OWNER \"{w.name}\";",
                f"REVOKE CONNECT ON DATABASE \"{w.database}\" FROM PUBLIC;",
            ]
    return "\n".join(lines) + "\n"


def prometheus_config(workloads: list[Workload], header: str) -> str:
    jobs = [{
        "job_name": w.name,
        "metrics_path": "/metrics",
        # One A record per replica: every replica is scraped on its own.
        "dns_sd_configs": [{"names": [w.name], "type": "A", "port": w.port,
                            "refresh_interval": "5s"}],
        "relabel_configs": [{"target_label": "service", "replacement": w.name}],
    } for w in workloads]
    doc = {"global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
           "scrape_configs": jobs}
    return dump_yaml([doc], header)


def grafana_dashboard(system: str, header: str) -> str:
    """A small dashboard over the chassis' metrics (JSON has no comments: the header is the
    description)."""
    def panel(pid: int, title: str, expr: str, unit: str, at: tuple[int, int]) -> dict[str, Any]:
        return {
            "id": pid, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "gridPos": {"h": 8, "w": 12, "x": at[0], "y": at[1]},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": "A", "expr": expr, "legendFormat": "{{service}}"}],
        }
    rate = "rate(http_requests_total[1m])"
    panels = [
        panel(1, "Requests per second", f"sum by (service) ({rate})", "reqps", (0, 0)),
        panel(2, "Error ratio (5xx)",
              f'sum by (service) (rate(http_requests_total{{status=~"5.."}}[1m])) '
              f"/ sum by (service) ({rate})", "percentunit", (12, 0)),
        panel(3, "Latency p95",
              "histogram_quantile(0.95, sum by (service, le) "
              "(rate(http_request_duration_seconds_bucket[1m])))", "s", (0, 8)),
        panel(4, "In-flight requests", "sum by (service) (http_requests_in_flight)", "short",
              (12, 8)),
        panel(5, "Ready instances", "sum by (service) (shoal_ready)", "short", (0, 16)),
    ]
    dashboard = {
        "uid": f"shoal-{system}", "title": f"{system} (Shoal)", "description": header,
        "editable": False, "schemaVersion": 39, "time": {"from": "now-30m", "to": "now"},
        "refresh": "5s", "tags": ["shoal"], "panels": panels,
    }
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def render(spec: Spec, workloads: list[Workload], header: str, *, context: str,
           out_rel: str, gateway_spec: str) -> dict[str, str]:
    """``compose/`` files; ``context`` is the project root relative to ``compose/``,
    ``out_rel`` the output directory relative to the project root."""
    services: dict[str, Any] = {
        w.name: _service(w, spec.system, context, f"{out_rel}/docker/{w.name}.Dockerfile")
        for w in workloads
    }
    if any(w.database for w in workloads):
        services["postgres"] = {
            "image": POSTGRES_IMAGE,
            "environment": {"POSTGRES_PASSWORD": "postgres"},
            "volumes": ["postgres-data:/var/lib/postgresql/data",
                        "./postgres/init.sql:/docker-entrypoint-initdb.d/10-databases.sql:ro"],
            # TCP, not the socket: the entrypoint's init server listens on the socket only.
            "healthcheck": {"test": ["CMD", "pg_isready", "-h", "127.0.0.1", "-U", "postgres"],
                            "interval": "2s", "timeout": "2s", "retries": 30},
            "restart": "unless-stopped",
        }
    services["prometheus"] = {
        "image": PROMETHEUS_IMAGE,
        "volumes": ["./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
                    "prometheus-data:/prometheus"],
        "ports": ["9090:9090"],
        "restart": "unless-stopped",
    }
    services["grafana"] = {
        "image": GRAFANA_IMAGE,
        "environment": {"GF_AUTH_ANONYMOUS_ENABLED": "true",
                        "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer"},
        "volumes": ["./grafana/provisioning:/etc/grafana/provisioning:ro",
                    "./grafana/dashboards:/var/lib/grafana/dashboards:ro",
                    "grafana-data:/var/lib/grafana"],
        "ports": ["3000:3000"],
        "depends_on": {"prometheus": {"condition": "service_started"}},
        "restart": "unless-stopped",
    }
    volumes: dict[str, dict[str, Any]] = {name: {} for name in ("grafana-data",
                                                                "prometheus-data")}
    if "postgres" in services:
        volumes["postgres-data"] = {}
    compose = {"name": spec.system, "services": services, "volumes": volumes}
    files = {
        "compose/docker-compose.yml": dump_yaml([compose], header),
        "compose/prometheus/prometheus.yml": prometheus_config(workloads, header),
        "compose/grafana/provisioning/datasources/prometheus.yml": dump_yaml([{
            "apiVersion": 1,
            "datasources": [{"name": "Prometheus", "uid": "prometheus", "type": "prometheus",
                             "access": "proxy", "url": "http://prometheus:9090",
                             "isDefault": True}],
        }], header),
        "compose/grafana/provisioning/dashboards/shoal.yml": dump_yaml([{
            "apiVersion": 1,
            "providers": [{"name": "shoal", "folder": "Shoal", "type": "file",
                           "options": {"path": "/var/lib/grafana/dashboards"}}],
        }], header),
        "compose/grafana/dashboards/shoal.json": grafana_dashboard(spec.system, header),
    }
    if "postgres" in services:
        files["compose/postgres/init.sql"] = init_sql(workloads, header)
    if spec.gateway is not None:
        files["compose/gateway-spec.yaml"] = gateway_spec
    return files
