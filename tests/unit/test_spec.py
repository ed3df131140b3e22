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


ONE = "system: s\nservices:\n  a:\n    app: x:y\n"
ROUTED = ONE + "gateway:\n  routes:\n    - {prefix: /a, service: a}\n"


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        # A key given twice, at any level: YAML alone would keep the last without a word.
        ("system: s\nservices:\n  a: {app: 'x:y'}\n  a: {app: 'x:z'}\n", 4, "services.a",
         "duplicate key 'a' (first given at line 3)"),
        (ROUTED + "gateway:\n  routes:\n    - {prefix: /b, service: a}\n", 8, "gateway",
         "duplicate key 'gateway' (first given at line 5)"),
        (ONE + "    env:\n      K: '1'\n      K: '2'\n", 7, "services.a.env.K",
         "duplicate key 'K' (first given at line 6)"),
        (ROUTED + "    - {prefix: /b, service: a, timeout: 1, timeout: 2}\n", 8,
         "gateway.routes.1.timeout", "duplicate key 'timeout'"),
        (ONE + "system: t\n", 5, "system", "duplicate key 'system' (first given at line 1)"),
        # Two listeners on one port.
        (ROUTED.replace("gateway:\n", "gateway:\n  port: 7700\n"), 6, "gateway.port",
         "port 7700 is also control.port"),
        ("control:\n  port: 9000\n" + ROUTED.replace("gateway:\n", "gateway:\n  port: 9000\n"),
         8, "gateway.port", "port 9000 is also control.port"),
        (ONE + "    env: {SHOAL_SHARED_PORT: '7700'}\n", 5,
         "services.a.env.SHOAL_SHARED_PORT", "port 7700 is also control.port"),
        (ONE + "    env: {SHOAL_SHARED_PORT: '99999'}\n", 5,
         "services.a.env.SHOAL_SHARED_PORT", "from 1 to 65535"),
        (ONE + "    env: {PORT: '9000'}\n", 5, "services.a.env.PORT",
         "its own free port"),
        # Two routes with one prefix: the second could never match.
        (ROUTED + "    - {prefix: /a, service: a, methods: [POST]}\n", 8,
         "gateway.routes.1.prefix", "'/a' is also the prefix of routes.0"),
        # A host other machines could reach, without allow_remote.
        (ROUTED.replace("gateway:\n", "gateway:\n  host: 0.0.0.0\n"), 6, "gateway.host",
         "'0.0.0.0' is not a loopback address"),
        ("control:\n  host: 192.168.1.5\n" + ONE, 2, "control.host",
         "set allow_remote: true"),
        ("control:\n  host: example.com\n" + ONE, 2, "control.host", "not a loopback"),
        (ONE + "    env: {SHOAL_HOST: '::'}\n", 5, "services.a.env.SHOAL_HOST",
         "not a loopback"),
    ],
)
def test_spec_checks_name_line_and_field(text, line, field, words):
    with pytest.raises(SpecError) as info:
        parse_spec(text, "shoal.yaml")
    err = info.value
    assert (err.line, err.field) == (line, field), str(err)
    assert words in err.message
    assert str(err).startswith(f"shoal.yaml:{line}: {field}: ")


def test_a_merge_key_may_be_overridden_without_a_duplicate():
    spec = parse_spec("system: s\nservices:\n  a: &a {app: 'x:y', replicas: 2}\n"
                      "  b:\n    <<: *a\n    replicas: 3\n")
    assert (spec.services["a"].replicas, spec.services["b"].replicas) == (2, 3)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_allow_remote(host):
    spec = parse_spec(f"control:\n  host: '{host}'\n" + ROUTED.replace(
        "gateway:\n", f"gateway:\n  host: '{host}'\n"))
    assert spec.control.host == spec.gateway.host == host


def test_allow_remote_lets_each_block_listen_beyond_loopback():
    spec = parse_spec(
        "control:\n  host: 0.0.0.0\n  allow_remote: true\n"
        + ONE + "    allow_remote: true\n    env: {SHOAL_HOST: 0.0.0.0}\n"
        "gateway:\n  host: 0.0.0.0\n  allow_remote: true\n  routes:\n"
        "    - {prefix: /a, service: a}\n")
    assert spec.control.allow_remote
    assert spec.services["a"].allow_remote
    assert spec.gateway is not None
    assert spec.gateway.allow_remote
    # It is per block: the gateway's does not open the control plane.
    with pytest.raises(SpecError, match=r"f:2: control\.host"):
        parse_spec("control:\n  host: 0.0.0.0\n" + ROUTED.replace(
            "gateway:\n", "gateway:\n  host: 0.0.0.0\n  allow_remote: true\n"), "f")


def test_listeners_are_every_fixed_port():
    spec = parse_spec("control:\n  port: 0\n" + ONE + "    env: {SHOAL_SHARED_PORT: '9100'}\n"
                      "gateway:\n  port: 9200\n  routes:\n    - {prefix: /a, service: a}\n")
    assert spec.listeners() == [("services.a.env.SHOAL_SHARED_PORT", "127.0.0.1", 9100),
                                ("gateway.port", "127.0.0.1", 9200)]


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        (b"system: s\nservices:\n  a: {app: 'x\x00:y'}\n", 3, "NUL byte"),
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", 1, "NUL byte"),
        (b"system: s\nservices: \xff\xfe\n", 2, "not UTF-8 text (byte 0xff)"),
        ("system: s\nservices:\n  a: {app: 'x:y'}\n".encode("utf-16"), 1, "NUL byte"),
        (b"system: s\n\x1b[31m: 1\n", 2, "unacceptable character #x001b"),
    ],
)
def test_binary_content_is_a_spec_error_naming_the_line(tmp_path, content, line, words):
    path = tmp_path / "shoal.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert (info.value.file, info.value.line) == (str(path), line)
    assert words in info.value.message


def test_nul_in_spec_text_is_a_spec_error():
    with pytest.raises(SpecError, match=r"f\.yaml:2: contains a NUL byte"):
        parse_spec("system: s\n\x00\n", "f.yaml")


def test_deeply_nested_yaml_is_a_spec_error():
    with pytest.raises(SpecError, match="nested too deeply"):
        parse_spec("[" * 5000, "f.yaml")


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
