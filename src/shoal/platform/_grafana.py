"""Prometheus and Grafana configuration for a fleet (``shoal config prometheus|grafana``).

Prometheus finds the replicas through the control plane's HTTP service discovery
(``GET /v1/sd/prometheus``, bearer token read from the fleet's token file on every refresh);
the Grafana dashboard shows RED per service and the chassis client's retries, breakers and
ejections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

DASHBOARD_UID = "shoal-fleet"
RATE = "[1m]"


def prometheus_config(*, control_url: str, token_file: Path, system: str,
                      scrape_interval: str = "5s") -> str:
    """A prometheus.yml scraping every ready instance the control plane lists."""
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                   "external_labels": {"system": system}},
        "scrape_configs": [{
            "job_name": "shoal",
            # The chassis' own ``service`` label is the SD label's value: keep it as is.
            "honor_labels": True,
            "http_sd_configs": [{
                "url": f"{control_url}/v1/sd/prometheus",
                "refresh_interval": scrape_interval,
                "authorization": {"type": "Bearer",
                                  "credentials_file": str(token_file.resolve())},
            }],
        }],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _panel(title: str, targets: list[tuple[str, str]], *, unit: str, grid: tuple[int, ...],
           panel_id: int, max_value: float | None = None) -> dict[str, Any]:
    x, y, w, h = grid
    defaults: dict[str, Any] = {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10}}
    if max_value is not None:
        defaults["max"] = max_value
    return {
        "id": panel_id, "type": "timeseries", "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
    }


def _row(title: str, panel_id: int, y: int, repeat: str | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": panel_id, "type": "row", "title": title, "collapsed": False,
                           "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}
    if repeat:
        row["repeat"] = repeat
    return row


def dashboard(system: str) -> dict[str, Any]:
    """The Grafana dashboard model: a RED row repeated per service, then the client row."""
    sel = 'service=~"$service"'
    requests = f"sum by (service) (rate(http_requests_total{{{sel}}}{RATE}))"
    errors = f'sum by (service) (rate(http_requests_total{{{sel},status=~"5.."}}{RATE}))'
    buckets = (f"sum by (service, le) "
               f"(rate(http_request_duration_seconds_bucket{{{sel}}}{RATE}))")
    panels = [
        _row("RED · $service", 1, 0, repeat="service"),
        _panel("Requests per second", [(requests, "{{service}}")], unit="reqps",
               grid=(0, 1, 8, 8), panel_id=2),
        _panel("Error ratio (5xx)", [(f"{errors} / {requests}", "{{service}}")],
               unit="percentunit", grid=(8, 1, 8, 8), panel_id=3),
        _panel("Latency", [(f"histogram_quantile({q}, {buckets})", f"p{round(q * 100)}")
                           for q in (0.5, 0.95, 0.99)],
               unit="s", grid=(16, 1, 8, 8), panel_id=4),
        _row("Saturation and restarts", 5, 9),
        _panel("Requests in flight",
               [(f"sum by (service) (http_requests_in_flight{{{sel}}})", "{{service}}")],
               unit="short", grid=(0, 10, 12, 8), panel_id=6),
        _panel("Restarts (process starts, 15m)",
               [(f"sum by (service) (changes(process_start_time_seconds{{{sel}}}[15m]))",
                 "{{service}}")], unit="short", grid=(12, 10, 12, 8), panel_id=7),
        _row("Client: retries, breakers, ejections", 8, 18),
        _panel("Retries per second",
               [(f"sum by (service, upstream, reason) "
                 f"(rate(shoal_client_retries_total{{{sel}}}{RATE}))",
                 "{{service}} → {{upstream}} ({{reason}})")],
               unit="reqps", grid=(0, 19, 8, 8), panel_id=9),
        _panel("Breaker state (0 closed, 1 open, 2 half-open)",
               [(f"max by (service, upstream) (shoal_client_breaker_state{{{sel}}})",
                 "{{service}} → {{upstream}}")],
               unit="short", grid=(8, 19, 8, 8), panel_id=10, max_value=2),
        _panel("Ejections (5m)",
               [(f"sum by (service, upstream) "
                 f"(increase(shoal_client_ejections_total{{{sel}}}[5m]))",
                 "{{service}} → {{upstream}}")],
               unit="short", grid=(16, 19, 8, 8), panel_id=11),
    ]
    return {
        "uid": DASHBOARD_UID, "title": f"Shoal · {system}", "tags": ["shoal"],
        "timezone": "browser", "schemaVersion": 39, "version": 1, "editable": True,
        "refresh": "10s", "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus",
             "label": "Prometheus"},
            {"name": "service", "type": "query", "label": "service",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(http_requests_total, service)",
                       "refId": "services"},
             "definition": "label_values(http_requests_total, service)",
             "refresh": 2, "multi": True, "includeAll": True, "sort": 1,
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": panels,
    }


def dashboard_exprs(model: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard model (tests run them against Prometheus)."""
    return [t["expr"] for p in model["panels"] for t in p.get("targets", [])]


def write_grafana(out: Path, *, system: str, prometheus_url: str,
                  dashboards_path: str | None = None) -> list[Path]:
    """Write the dashboard and Grafana provisioning files under ``out``; returns the paths."""
    dash_dir = out / "dashboards"
    providers = out / "provisioning" / "dashboards"
    sources = out / "provisioning" / "datasources"
    for directory in (dash_dir, providers, sources):
        directory.mkdir(parents=True, exist_ok=True)
    files = {
        dash_dir / "shoal.json": json.dumps(dashboard(system), indent=2) + "\n",
        providers / "shoal.yaml": yaml.safe_dump({
            "apiVersion": 1,
            "providers": [{"name": "shoal", "folder": "Shoal", "type": "file",
                           "disableDeletion": False, "updateIntervalSeconds": 30,
                           "options": {"path": dashboards_path or str(dash_dir.resolve())}}],
        }, sort_keys=False),
        sources / "prometheus.yaml": yaml.safe_dump({
            "apiVersion": 1,
            "datasources": [{"name": "Prometheus", "type": "prometheus", "access": "proxy",
                             "url": prometheus_url, "isDefault": True}],
        }, sort_keys=False),
    }
    for path, text in files.items():
        path.write_text(text)
    return list(files)
