"""Kubernetes output of ``shoal deploy``: offline schema validation and semantic checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shoal.platform.deploy import render
from shoal.platform.deploy._k8s import KUBERNETES_VERSION, PRESTOP_SECONDS
from shoal.platform.spec import Spec, load_spec, parse_spec

SHOP = "examples/shop/shoal.yaml"
CHASSIS_PATHS = {"/livez", "/readyz"}


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(SHOP)


@pytest.fixture(scope="module")
def files(spec: Spec) -> dict[str, str]:
    return render(spec, "k8s", spec_path=SHOP)


def docs_of(files: dict[str, str], prefix: str) -> list[dict[str, Any]]:
    return [doc for path, text in sorted(files.items()) if path.startswith(prefix)
            and path.endswith(".yaml") and "kustomization" not in path
            for doc in yaml.safe_load_all(text) if doc]


def base(files: dict[str, str]) -> list[dict[str, Any]]:
    return docs_of(files, "k8s/base/")


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_every_complete_manifest_passes_strict_schema_validation(files):
    # Overlay patches (ingress.yaml) are partial by design; every other object is complete.
    complete = [d for p, t in sorted(files.items()) if p.endswith(".yaml")
                and "kustomization" not in p and not p.endswith("/ingress.yaml")
                for d in yaml.safe_load_all(t) if d]
    assert len(complete) > 20
    for doc in complete:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schema_validation_rejects_an_unknown_field(files):
    deployment = dict(of_kind(base(files), "Deployment")["users"])
    deployment["spec"] = {**deployment["spec"], "replicaz": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_deployment_has_a_service_and_a_pdb_selecting_its_pods(files):
    docs = base(files) + docs_of(files, "k8s/overlays/dev/postgres.yaml")
    services = [d for d in docs if d["kind"] == "Service"]
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    deployments = of_kind(docs, "Deployment")
    assert set(deployments) == {"users", "orders", "gateway", "postgres"}
    for name, dep in deployments.items():
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert matches(dep["spec"]["selector"]["matchLabels"], pod_labels), name
        assert any(matches(s["spec"]["selector"], pod_labels) for s in services), name
        assert any(matches(p["spec"]["selector"]["matchLabels"], pod_labels) for p in pdbs), name


def test_probes_point_at_the_chassis_paths_on_the_serving_port(files, spec):
    for name, dep in of_kind(base(files), "Deployment").items():
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        config = of_kind(base(files), "ConfigMap")[f"{name}-env"]["data"]
        assert ports["http"] == int(config["PORT"])
        assert config["SHOAL_HOST"] == "0.0.0.0"
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]["httpGet"]
            assert probe["port"] == "http"
            assert probe["path"] in CHASSIS_PATHS, (name, kind)
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        scrape = dep["spec"]["template"]["metadata"]["annotations"]
        assert scrape["prometheus.io/port"] == str(ports["http"])
        assert scrape["prometheus.io/path"] == "/metrics"


def test_services_target_the_named_container_port(files):
    deployments = of_kind(base(files), "Deployment")
    for svc in (d for d in base(files) if d["kind"] == "Service"):
        (port,) = svc["spec"]["ports"]
        assert port["targetPort"] == "http"
        name = svc["spec"]["selector"]["app.kubernetes.io/name"]
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert port["port"] == container["ports"][0]["containerPort"]
    headless = of_kind(base(files), "Service")["users-headless"]
    assert headless["spec"]["clusterIP"] == "None"


def test_hpa_bounds_and_behaviour_come_from_the_spec(files, spec):
    hpas = of_kind(base(files), "HorizontalPodAutoscaler")
    autoscaled = {n: s.autoscale for n, s in spec.services.items() if s.autoscale}
    assert set(hpas) == set(autoscaled)
    for name, auto in autoscaled.items():
        hpa = hpas[name]["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (auto.min, auto.max)
        assert hpa["scaleTargetRef"]["name"] == name
        assert hpa["metrics"][0]["pods"]["metric"]["name"] == "http_requests_in_flight"
        assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == "8"
        assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
        assert hpa["behavior"]["scaleUp"]["policies"][0]["value"] == auto.max_scale_up_step
        # The HPA owns the replica count; the Deployment must not fight it.
        assert "replicas" not in of_kind(base(files), "Deployment")[name]["spec"]
    assert of_kind(base(files), "Deployment")["users"]["spec"]["replicas"] == 2


def test_cpu_autoscale_becomes_a_utilization_target():
    spec = parse_spec("system: s\nservices:\n  a:\n    app: m:app\n"
                      "    autoscale: {min: 1, max: 3, metric: cpu, target: 70}\n")
    hpa = of_kind(base(render(spec, "k8s", spec_path="s.yaml")), "HorizontalPodAutoscaler")["a"]
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {
        "type": "Utilization", "averageUtilization": 70}


def test_termination_grace_covers_pre_stop_and_drain(files, spec):
    for name, dep in of_kind(base(files), "Deployment").items():
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop == ["sleep", str(PRESTOP_SECONDS)]
        grace = float(of_kind(base(files), "ConfigMap")[f"{name}-env"]["data"]["SHOAL_DRAIN_GRACE"])
        assert pod["terminationGracePeriodSeconds"] >= PRESTOP_SECONDS + math.ceil(grace) + 1
        if name in spec.services:
            assert grace == spec.services[name].drain_grace
        strategy = dep["spec"]["strategy"]
        assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_pods_run_non_root_with_a_read_only_root(files):
    for dep in of_kind(base(files), "Deployment").values():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        (container,) = pod["containers"]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]


def test_env_comes_from_a_config_map_and_the_database_url_from_a_secret(files, spec):
    configs = of_kind(base(files), "ConfigMap")
    for name, dep in of_kind(base(files), "Deployment").items():
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        refs = container["envFrom"]
        assert {"configMapRef": {"name": f"{name}-env"}} in refs
        data = configs[f"{name}-env"]["data"]
        assert data["SHOAL_DISCOVERY"].startswith("dns:host={service}-headless")
        assert "DATABASE_URL" not in data
        has_db = name in spec.services and spec.services[name].database is not None
        assert ({"secretRef": {"name": f"{name}-database"}} in refs) is has_db


def test_only_the_gateway_is_reachable_from_outside_and_services_reach_their_database(files):
    policies = of_kind(base(files), "NetworkPolicy")
    assert policies["default-deny"]["spec"] == {"podSelector": {},
                                                "policyTypes": ["Ingress", "Egress"]}
    def namespaces(policy: dict[str, Any]) -> set[str]:
        return {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for rule in policy["spec"]["ingress"] for peer in rule["from"]
                if "namespaceSelector" in peer}
    assert namespaces(policies["gateway"]) == {"ingress-nginx", "monitoring"}
    assert namespaces(policies["users"]) == {"monitoring"}
    def peers(policy: dict[str, Any], direction: str) -> set[str]:
        key = "from" if direction == "ingress" else "to"
        return {peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                for rule in policy["spec"][direction] for peer in rule[key]
                if "podSelector" in peer}
    assert peers(policies["users"], "ingress") == {"gateway", "orders"}
    assert peers(policies["orders"], "ingress") == {"gateway"}
    assert peers(policies["orders"], "egress") == {"users", "postgres"}
    assert peers(policies["gateway"], "egress") == {"users", "orders"}
    ingress = of_kind(base(files), "Ingress")
    assert list(ingress) == ["gateway"]
    backend = ingress["gateway"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "gateway", "port": {"name": "http"}}


def test_each_service_gets_its_own_database_in_dev(files):
    kustomization = yaml.safe_load(files["k8s/overlays/dev/kustomization.yaml"])
    urls = {g["name"]: g["literals"][0] for g in kustomization["secretGenerator"]}
    assert urls["users-database"].endswith("@postgres:5432/users")
    assert urls["orders-database"].endswith("@postgres:5432/orders")
    init = of_kind(docs_of(files, "k8s/overlays/dev/"), "ConfigMap")["postgres-init"]
    sql = init["data"]["10-databases.sql"]
    assert 'CREATE DATABASE "orders" OWNER "orders"' in sql
    assert 'REVOKE CONNECT ON DATABASE "users" FROM PUBLIC' in sql
    prod = yaml.safe_load(files["k8s/overlays/prod/kustomization.yaml"])
    assert "secretGenerator" not in prod  # prod credentials never live in the repository


def test_gateway_mounts_the_spec_without_the_control_block(files):
    gateway_spec = of_kind(base(files), "ConfigMap")["gateway-spec"]["data"]["shoal.yaml"]
    assert set(yaml.safe_load(gateway_spec)) == {"system", "services", "gateway"}
    env = of_kind(base(files), "ConfigMap")["gateway-env"]["data"]
    assert env["SHOAL_GATEWAY_SPEC"] == "/etc/shoal/shoal.yaml"
    assert env["PORT"] == "8080"


def test_no_fault_injection_anywhere_even_when_the_spec_enables_chaos():
    text = Path(SHOP).read_text() + "control:\n  chaos: true\n"
    out = render(parse_spec(text), "all", spec_path=SHOP)
    for path, body in out.items():
        assert "chaos" not in body.lower(), path
        assert "SHOAL_CHAOS" not in body, path


def test_scrape_config_and_log_shipping_select_the_systems_pods(files):
    monitoring = of_kind(docs_of(files, "k8s/monitoring/"), "ConfigMap")
    scrape = yaml.safe_load(monitoring["shop-scrape-config"]["data"]["shop.yml"])
    keep = scrape["scrape_configs"][0]["relabel_configs"][0]
    assert keep == {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_part_of"],
                    "regex": "shop", "action": "keep"}
    logging = docs_of(files, "k8s/logging/")
    assert "fluent-bit" in of_kind(logging, "DaemonSet")
    conf = of_kind(logging, "ConfigMap")["fluent-bit-config"]["data"]
    assert "Merge_Log         On" in conf["fluent-bit.conf"]
    assert "@INCLUDE output-loki.conf" in conf["fluent-bit.conf"]
    assert "Name               es" in conf["output-elasticsearch.conf"]
