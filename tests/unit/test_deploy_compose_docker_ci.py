"""Docker, compose and CI output of ``shoal deploy``: schemas and semantics."""

from __future__ import annotations

import importlib.resources
import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from shoal.platform.deploy import TARGETS, generate, render
from shoal.platform.spec import Spec, load_spec

SHOP = "examples/shop/shoal.yaml"


def vendored_schema(name: str) -> dict[str, Any]:
    """A JSON schema check-jsonschema ships (compose-spec, GitHub workflows, GitLab CI)."""
    path = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / name
    return dict(json.loads(path.read_text(encoding="utf-8")))


def validate(instance: Any, schema: dict[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(schema)
    validator(schema, format_checker=validator.FORMAT_CHECKER).validate(instance)


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec(SHOP)


@pytest.fixture(scope="module")
def files(spec: Spec) -> dict[str, str]:
    return render(spec, "all", spec_path=SHOP)


@pytest.fixture(scope="module")
def compose(files: dict[str, str]) -> dict[str, Any]:
    return dict(yaml.safe_load(files["compose/docker-compose.yml"]))


def test_compose_file_validates_against_the_compose_spec_schema(compose):
    validate(compose, vendored_schema("compose-spec.json"))


def test_compose_schema_rejects_an_unknown_service_key(compose):
    broken = json.loads(json.dumps(compose))
    broken["services"]["users"]["replicaz"] = 2
    with pytest.raises(jsonschema.ValidationError):
        validate(broken, vendored_schema("compose-spec.json"))


def test_compose_runs_the_fleet_with_replicas_and_health_gated_start(compose, spec):
    services = compose["services"]
    assert services["users"]["deploy"]["replicas"] == 2
    assert services["orders"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "users": {"condition": "service_healthy"}}
    assert services["gateway"]["depends_on"] == {
        "orders": {"condition": "service_healthy"}, "users": {"condition": "service_healthy"}}
    for name in ("users", "orders", "gateway"):
        svc = services[name]
        port = svc["environment"]["PORT"]
        assert svc["healthcheck"]["test"][:2] == ["CMD", "python"]
        assert f"http://127.0.0.1:{port}/readyz" in svc["healthcheck"]["test"][-1]
        assert svc["environment"]["SHOAL_DISCOVERY"] == "dns:port=8000"
        assert svc["environment"]["SHOAL_HOST"] == "0.0.0.0"
        assert svc["read_only"] is True
    published = {n for n, s in services.items() if "ports" in s}
    assert published == {"gateway", "prometheus", "grafana"}
    assert services["gateway"]["ports"] == ["8080:8080"]
    assert services["users"]["build"] == {"context": "../..",
                                          "dockerfile": "deploy/docker/users.Dockerfile"}


def test_compose_gives_each_service_its_own_postgres_database(compose, files):
    env = {n: compose["services"][n]["environment"] for n in ("users", "orders")}
    assert env["users"]["DATABASE_URL"] == "postgresql://users:users@postgres:5432/users"
    assert env["orders"]["DATABASE_URL"].endswith("@postgres:5432/orders")
    assert "DATABASE_URL" not in compose["services"]["gateway"]["environment"]
    sql = files["compose/postgres/init.sql"]
    assert sql.count("CREATE DATABASE") == 2


def test_compose_provisions_prometheus_and_grafana(compose, files):
    prometheus = yaml.safe_load(files["compose/prometheus/prometheus.yml"])
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    assert set(jobs) == {"users", "orders", "gateway"}
    assert jobs["users"]["dns_sd_configs"][0] == {
        "names": ["users"], "type": "A", "port": 8000, "refresh_interval": "5s"}
    datasource = yaml.safe_load(files["compose/grafana/provisioning/datasources/prometheus.yml"])
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads(files["compose/grafana/dashboards/shoal.json"])
    assert {p["title"] for p in dashboard["panels"]} >= {"Requests per second", "Latency p95"}
    mounts = compose["services"]["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts


def test_dockerfiles_are_multi_stage_non_root_with_healthcheck_and_exec_cmd(files, spec):
    for name in ("users", "orders", "gateway"):
        text = files[f"docker/{name}.Dockerfile"]
        stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, re.MULTILINE)
        assert [s[1] for s in stages] == ["build", "runtime"]
        assert all("slim" in image for image, _ in stages)
        assert "--no-extra dev" in text
        build = text.split("AS runtime", 1)[0]
        assert "gcc" in build  # the hot path is compiled in the build stage, the group dropped
        assert build.index("tools/native.py --install") < build.rindex("--no-extra dev\n")
        runtime = text.split("AS runtime", 1)[1]
        assert re.search(r"^USER 10001:10001$", runtime, re.MULTILINE)
        assert re.search(r"^HEALTHCHECK .*\n(?:    .*\n)*    CMD \[", runtime, re.MULTILINE)
        cmd = re.search(r"^CMD (\[.*\])$", runtime, re.MULTILINE)
        assert cmd is not None
        command = json.loads(cmd.group(1))
        expected = spec.services[name].app if name in spec.services \
            else "shoal.platform.gateway:app"
        assert command == ["shoal", "serve", expected]
        ignore = files[f"docker/{name}.Dockerfile.dockerignore"]
        for entry in (".git", ".venv", "tests", "**/*.db", "**/*.so", "src/shoal/_native.json"):
            assert entry in ignore.splitlines()


def test_ci_workflows_validate_and_build_push_apply_and_wait(files):
    github = yaml.safe_load(files["ci/github-actions.yml"])
    validate(github, vendored_schema("github-workflows.json"))
    gitlab = yaml.safe_load(files["ci/gitlab-ci.yml"])
    validate(gitlab, vendored_schema("gitlab-ci.json"))
    for text in (files["ci/github-actions.yml"], files["ci/gitlab-ci.yml"]):
        assert "make lint typecheck" in text
        assert "make pytest" in text
        assert "kubectl apply -k deploy/k8s/overlays/prod" in text
        for name in ("users", "orders", "gateway"):
            assert f"kubectl -n shop rollout status deployment/{name}" in text
            assert f"shop-{name}=" in text
    assert github["jobs"]["images"]["strategy"]["matrix"]["service"] == [
        "users", "orders", "gateway"]
    assert github["jobs"]["deploy"]["needs"] == "images"


def test_every_file_carries_the_generated_header(files):
    header = f"generated by shoal deploy from {SHOP}; do not edit"
    for path, text in files.items():
        if path.endswith(".json"):
            assert json.loads(text)["description"] == header
        else:
            assert header in text.splitlines()[0], path


def test_generation_is_deterministic_and_prunes_what_a_spec_no_longer_has(tmp_path, spec):
    assert render(spec, "all", spec_path=SHOP) == render(spec, "all", spec_path=SHOP)
    out = tmp_path / "deploy"
    written = generate(spec, "all", out, SHOP, project_root=tmp_path)
    assert written == sorted(written)
    assert {p.relative_to(out).as_posix() for p in written} == set(
        render(spec, "all", spec_path=SHOP))
    mine = out / "k8s" / "keep-me.yaml"
    mine.write_text("not generated\n")
    stale = out / "docker" / "billing.Dockerfile"
    stale.write_text(f"# generated by shoal deploy from {SHOP}; do not edit\n")
    generate(spec, "docker", out, SHOP, project_root=tmp_path)
    assert not stale.exists()
    assert mine.exists()


@pytest.mark.parametrize("target", TARGETS)
def test_each_target_writes_only_its_directories(tmp_path, spec, target):
    out = tmp_path / "d"
    generate(spec, target, out, SHOP, project_root=tmp_path)
    tops = {p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file()}
    expected = {"docker": {"docker"}, "compose": {"docker", "compose"}, "k8s": {"k8s"},
                "ci": {"ci"}, "all": {"docker", "compose", "k8s", "ci"}}[target]
    assert tops == expected


def test_unknown_target_is_refused(spec):
    with pytest.raises(ValueError, match="unknown target"):
        render(spec, "helm", spec_path=SHOP)  # type: ignore[arg-type]


def test_the_module_entry_point_generates_from_a_spec_file(tmp_path, capsys):
    from shoal.platform.deploy.__main__ import main  # noqa: PLC0415

    assert main([SHOP, "ci", "-o", str(tmp_path / "out")]) == 0
    assert "github-actions.yml" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.yaml"), "ci"]) == 2
