"""The Kubernetes output through the real tools: ``kubectl kustomize`` builds each overlay, and
everything it builds passes offline schema validation for the pinned Kubernetes version."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from shoal.platform.deploy import generate
from shoal.platform.deploy._k8s import KUBERNETES_VERSION
from shoal.platform.spec import load_spec

pytestmark = pytest.mark.integration

SHOP = "examples/shop/shoal.yaml"
BUILDS = ("overlays/dev", "overlays/prod", "monitoring", "logging")


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        reason = "kubectl (with kustomize) is not installed"
        if os.environ.get("SHOAL_REQUIRE_EXTERNAL") == "1":
            pytest.fail(f"SHOAL_REQUIRE_EXTERNAL=1 but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def built(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    root = tmp_path_factory.mktemp("project")
    generate(load_spec(SHOP), "k8s", root / "deploy", SHOP, project_root=root)
    result: dict[str, list[Any]] = {}
    for build in BUILDS:
        proc = subprocess.run([kubectl, "kustomize", str(root / "deploy" / "k8s" / build)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"kubectl kustomize {build}: {proc.stderr}"
        result[build] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return result


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("build", BUILDS)
def test_kustomize_output_passes_strict_schema_validation(built, build):
    assert built[build]
    for doc in built[build]:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(("overlay", "namespace"), [("overlays/dev", "shop-dev"),
                                                    ("overlays/prod", "shop")])
def test_overlays_place_everything_in_their_namespace(built, overlay, namespace):
    docs = built[overlay]
    assert by_kind(docs, "Namespace")[namespace]["metadata"]["labels"][
        "pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def test_dev_secret_references_resolve_to_generated_secrets(built):
    docs = built["overlays/dev"]
    secrets = set(by_kind(docs, "Secret"))
    for dep in by_kind(docs, "Deployment").values():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            for ref in container.get("envFrom", []):
                if "secretRef" in ref:
                    assert ref["secretRef"]["name"] in secrets


def test_prod_uses_registry_images_and_the_public_host_with_tls(built):
    docs = built["overlays/prod"]
    images = {c["image"] for d in by_kind(docs, "Deployment").values()
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert images == {f"registry.example.com/shop-{n}:latest"
                      for n in ("users", "orders", "gateway")}
    ingress = by_kind(docs, "Ingress")["gateway"]["spec"]
    assert ingress["rules"][0]["host"] == "shop.example.com"
    assert ingress["tls"] == [{"hosts": ["shop.example.com"], "secretName": "gateway-tls"}]
    assert "Secret" not in {d["kind"] for d in docs}
    assert "chaos" not in yaml.safe_dump_all(docs).lower()


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/prod"])
def test_built_deployments_each_have_a_service_and_a_pdb(built, overlay):
    docs = built[overlay]
    for name, dep in by_kind(docs, "Deployment").items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        def selects(selector: dict[str, str], labels: dict[str, str] = labels) -> bool:
            return all(labels.get(k) == v for k, v in selector.items())
        assert any(selects(s["spec"]["selector"]) for s in docs if s["kind"] == "Service"), name
        assert any(selects(p["spec"]["selector"]["matchLabels"])
                   for p in docs if p["kind"] == "PodDisruptionBudget"), name


def test_the_committed_tree_builds_too(kubectl):
    for build in ("overlays/dev", "overlays/prod"):
        proc = subprocess.run([kubectl, "kustomize", str(Path("deploy/k8s") / build)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
