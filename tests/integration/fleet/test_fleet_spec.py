"""What `shoal up` refuses before it starts anything, and where the spec says to listen."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from tests.integration.fleet.conftest import shoal, write_spec

from shoal.testing import free_port

pytestmark = pytest.mark.integration
APP = "tests.apps.chassis_fastapi:app"


def _squeeze(text: str) -> str:
    return "".join(text.split())  # rich wraps long lines of stderr


@pytest.mark.parametrize(
    ("content", "line", "field"),
    [
        (b"system: t\nservices:\n  api: {app: '%s'}\n  api: {app: 'x:y'}\n", 4, "services.api"),
        (b"system: t\nservices:\n  api:\n    app: %s\n    env: {A: '1', A: '2'}\n", 5,
         "services.api.env.A"),
        (b"system: t\nservices:\n  api: {app: '%s'}\n\x00\x01\x02", 4, None),
        (b"system: t\nservices:\n  api: {app: '%s'}\ngateway:\n  port: 7700\n"
         b"  routes: [{prefix: /a, service: api}]\n", 5, "gateway.port"),
        (b"system: t\ncontrol: {host: 0.0.0.0}\nservices:\n  api: {app: '%s'}\n", 2,
         "control.host"),
    ],
)
def test_shoal_up_refuses_a_bad_spec_with_exit_2_before_anything_starts(tmp_path, content,
                                                                         line, field):
    spec = tmp_path / "shoal.yaml"
    spec.write_bytes(content.replace(b"%s", APP.encode()))
    state = tmp_path / ".shoal"
    for detach in ([], ["--detach"]):
        result = shoal("up", str(spec), *detach, "--state-dir", str(state), timeout=30)
        assert result.returncode == 2, result.stdout + result.stderr
        where = f"{spec}:{line}: " + (f"{field}: " if field else "contains a NUL byte")
        assert _squeeze(where) in _squeeze(result.stderr)
        assert "Traceback" not in result.stderr
        assert not state.exists()  # nothing started, nothing written


@pytest.mark.parametrize("detach", [False, True])
def test_a_port_in_use_exits_2_naming_it(tmp_path, detach):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = write_spec(tmp_path, f"""
services:
  api: {{app: "{APP}"}}
gateway:
  port: {port}
  routes: [{{prefix: /a, service: api}}]
""", free_port())
        result = shoal("up", str(spec), *(["--detach"] if detach else []),
                       "--state-dir", str(tmp_path / ".shoal"))
    assert result.returncode == 2, result.stdout + result.stderr
    err = " ".join(result.stderr.split())
    assert f"port {port} on 127.0.0.1 is already in use, so the gateway cannot" in err
    assert "gateway.port" in err
    assert not (tmp_path / ".shoal" / "control.json").exists()


def test_up_detach_shows_only_this_runs_errors(tmp_path):
    state = tmp_path / ".shoal"
    for module in ("tests.apps.first_missing", "tests.apps.second_missing"):
        spec = write_spec(tmp_path, f"services:\n  api:\n    app: {module}:app\n", free_port())
        result = shoal("up", str(spec), "--detach", "--state-dir", str(state))
        assert result.returncode == 1
        assert f"cannot import module '{module}'" in " ".join(result.stderr.split())
    assert "first_missing" not in result.stderr  # the earlier run's error is not repeated
    # control.out keeps both runs.
    out = (state / "control.out").read_text()
    assert out.index("first_missing") < out.index("second_missing")


def test_the_gateway_listens_on_its_host(fleet_factory):
    port = free_port()
    fleet = fleet_factory(f"""
services:
  api: {{app: "{APP}"}}
gateway:
  host: 127.0.0.2
  port: {port}
  routes: [{{prefix: /api, service: api, rewrite: /}}]
""")
    assert fleet.status()["gateway"] == f"http://127.0.0.2:{port}"
    with urllib.request.urlopen(f"http://127.0.0.2:{port}/api/hello", timeout=10) as resp:
        assert resp.status == 200
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/hello", timeout=2)
