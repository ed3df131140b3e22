from pathlib import Path

import pytest

from shoal.platform.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def test_shop_spec_loads_with_dependency_order_and_gateway_routes():
    spec = load_spec(ROOT / "examples/shop/shoal.yaml")
    assert spec.system == "shop"
    assert spec.start_order() == [["users"], ["orders"]]
    assert spec.services["users"].replicas == 2
    assert spec.gateway is not None
    assert spec.gateway.port == 8080
    assert [r.prefix for r in spec.gateway.routes] == ["/api/users", "/api/orders"]
    assert spec.services["orders"].autoscale is not None


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("system: s\nservices:\n  users:\n    app: x:y\n    replicas: -1\n", 5,
         "services.users.replicas", "greater than or equal to 0"),
        ("system: s\nservices:\n  users:\n    app: x:y\n    depends_on: [nope]\n", 5,
         "services.users.depends_on", "unknown service 'nope'"),
        ("system: s\nservices:\n  users:\n    replicas: 1\n", 3, "services.users",
         "exactly one of 'app'"),
        ("system: s\nservices:\n  a:\n    app: x:y\n    bogus: 1\n", 5, "services.a.bogus",
         "Extra inputs"),
        ("system: Bad Name\nservices:\n  a:\n    app: x:y\n", 1, "system", "pattern"),
        ("system: s\nservices:\n  a:\n    app: x:y\ngateway:\n  routes:\n"
         "    - {prefix: /api, service: ghost}\n", 7, "gateway.routes.0.service", "ghost"),
        ("system: s\nservices:\n  a:\n    app: x:y\n    autoscale: {min: 3, max: 2, "
         "metric: cpu, target: 50}\n", 5, "services.a.autoscale", "must not exceed"),
    ],
)
def test_invalid_spec_names_line_and_field(text, line, field, words):
    with pytest.raises(SpecError) as info:
        parse_spec(text, "shoal.yaml")
    err = info.value
    assert (err.file, err.line, err.field) == ("shoal.yaml", line, field)
    assert words in err.message
    assert str(err).startswith(f"shoal.yaml:{line}: {field}: ")


def test_dependency_cycle_is_refused():
    text = ("system: s\nservices:\n  a: {app: 'x:y', depends_on: [b]}\n"
            "  b: {app: 'x:y', depends_on: [a]}\n")
    with pytest.raises(SpecError, match="cycle among: a, b"):
        parse_spec(text, "f.yaml")


def test_broken_yaml_names_the_line():
    with pytest.raises(SpecError) as info:
        parse_spec("system: s\nservices:\n  a: [\n", "f.yaml")
    assert info.value.line == 4
    assert "not valid YAML" in info.value.message


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "absent.yaml")


def test_env_passthrough_is_a_list_of_variable_names():
    base = "system: s\nservices:\n  a:\n    app: x:y\n    env_passthrough: "
    assert parse_spec(base + "[DATABASE_URL, AWS_PROFILE]\n").services["a"].env_passthrough == [
        "DATABASE_URL", "AWS_PROFILE"]
    assert parse_spec("system: s\nservices:\n  a:\n    app: x:y\n").services[
        "a"].env_passthrough == []
    for value, words in [("[\"BAD-NAME\"]", "invalid environment variable name 'BAD-NAME'"),
                         ("DATABASE_URL", "valid list"), ("[[A]]", "valid string")]:
        with pytest.raises(SpecError) as info:
            parse_spec(base + value + "\n", "shoal.yaml")
        assert info.value.line == 5
        assert info.value.field is not None
        assert info.value.field.startswith("services.a.env_passthrough")
        assert words in info.value.message
