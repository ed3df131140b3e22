"""A real Prometheus, configured by ``shoal config prometheus``, scrapes the running shop."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from tests.integration.fleet.conftest import shoal
from tests.integration.observability.conftest import Load, Shop, require_binary, wait_until

from shoal.platform._grafana import dashboard_exprs
from shoal.testing import free_port

pytestmark = pytest.mark.integration


def prom_query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_prometheus_discovers_every_instance_and_scrapes_requests_of_every_service(
        shop: Shop, shop_user: int, tmp_path: Path) -> None:
    binary = require_binary("/usr/bin/prometheus", "Prometheus")
    config = tmp_path / "prometheus.yml"
    result = shoal("config", "prometheus", "-o", str(config), "--interval", "1s",
                   "--state-dir", str(shop.state_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    grafana = tmp_path / "grafana"
    result = shoal("config", "grafana", "-o", str(grafana), "--state-dir", str(shop.state_dir))
    assert result.returncode == 0, result.stdout + result.stderr

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=log)
    load = Load(shop, shop_user, seconds=30)
    try:
        assert shop.traced_order("4bf92f3577b34da6a3ce929d0e0e4736", shop_user) == 201

        def services_scraped() -> set[str] | None:
            try:
                body = prom_query(base, "sum by (service) (http_requests_total)")
            except OSError:
                return None
            found = {r["metric"].get("service") for r in body["data"]["result"]}
            return found if {"gateway", "orders", "users"} <= found else None

        wait_until(services_scraped, 60, "Prometheus to have http_requests_total of "
                                         "gateway, orders and users")
        expected = {g["labels"]["instance"] for g in shop.api("/v1/sd/prometheus")}
        assert len(expected) == 5

        def every_instance_up() -> bool:
            targets = prom_query(base, 'up{job="shoal"} == 1')["data"]["result"]
            return {t["metric"]["instance"] for t in targets} == expected

        wait_until(every_instance_up, 30, "every discovered instance to be up in Prometheus")
        # Every expression of the generated Grafana dashboard is valid PromQL here.
        model = json.loads((grafana / "dashboards" / "shoal.json").read_text())
        for expr in dashboard_exprs(model):
            body = prom_query(base, expr.replace("$service", ".*"))
            assert body["status"] == "success", (expr, body)
        assert (grafana / "provisioning" / "dashboards" / "shoal.yaml").exists()
        assert (grafana / "provisioning" / "datasources" / "prometheus.yaml").exists()
    finally:
        load.stop()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
