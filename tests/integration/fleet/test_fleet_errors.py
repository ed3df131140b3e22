"""Bad input and bad states give clear errors naming the cause and what to do."""

from __future__ import annotations

import socket

import pytest
from tests.integration.fleet.conftest import shoal, write_spec

from shoal.testing import free_port

pytestmark = pytest.mark.integration


def test_invalid_spec_exits_2_naming_file_line_and_field(tmp_path):
    spec = tmp_path / "shoal.yaml"
    spec.write_text("system: test\nservices:\n  api:\n    app: x:y\n    replicas: many\n")
    result = shoal("up", str(spec), "--state-dir", str(tmp_path / ".shoal"))
    assert result.returncode == 2
    assert f"{spec}:5: services.api.replicas:" in result.stderr.replace("\n", "")


def test_port_already_taken_is_named(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = write_spec(tmp_path, "services:\n  api:\n    app: tests.apps.chassis_fastapi:app\n",
                          port)
        result = shoal("up", str(spec), "--state-dir", str(tmp_path / ".shoal"))
    assert result.returncode == 2
    err = " ".join(result.stderr.split())
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert "control.port" in err


def test_app_that_does_not_import_fails_fast_with_its_output(tmp_path):
    spec = write_spec(tmp_path, "services:\n  api:\n    app: tests.apps.nope:app\n", free_port())
    result = shoal("up", str(spec), "--detach", "--state-dir", str(tmp_path / ".shoal"))
    assert result.returncode == 1
    err = " ".join(result.stderr.split())
    assert "api-1 exited with 2 (configuration error)" in err
    assert "cannot import module 'tests.apps.nope'" in err


def test_replica_that_never_becomes_ready_shows_its_last_lines(tmp_path):
    marker = tmp_path / "never"
    marker.write_text("x")
    body = f"""
services:
  api:
    app: tests.apps.chassis_fastapi:app
    env: {{TEST_NOT_READY_FILE: "{marker}"}}
    probes: {{startup_timeout: 4, readiness: {{path: /readyz, period: 0.2}}}}
"""
    spec = write_spec(tmp_path, body, free_port())
    result = shoal("up", str(spec), "--state-dir", str(tmp_path / ".shoal"))
    assert result.returncode == 1
    err = " ".join(result.stderr.split())
    assert "api-1 not ready within 4s" in err
    assert "server.starting" in err  # the replica's own last log lines are shown
    assert not (tmp_path / ".shoal" / "control.json").exists()
