"""``shoal up`` with real processes: supervision, registry, scaling, rollout, security."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from tests.integration.fleet.conftest import (
    Fleet,
    group_pids,
    pid_alive,
    shoal,
    wait_until,
    write_spec,
)

from shoal.client import Client
from shoal.discovery._local import LocalResolver
from shoal.testing import free_port

pytestmark = pytest.mark.integration

TWO_SERVICES = """
services:
  api:
    app: tests.apps.chassis_fastapi:app
    replicas: 2
    drain_grace: 5
    env:
      TEST_NOT_READY_FILE: "{marker}/{{instance}}"
    probes:
      readiness: {{path: /readyz, period: 0.2, failure_threshold: 2}}
      liveness: {{path: /livez, period: 1}}
  web:
    app: tests.apps.chassis_flask:app
    replicas: 1
    depends_on: [api]
"""


def ready_instances(fleet, name):
    return [i for i in fleet.service(name)["instances"] if i["state"] == "ready"]


@pytest.fixture
def fleet(fleet_factory, tmp_path):
    marker = tmp_path / "markers"
    marker.mkdir()
    f = fleet_factory(TWO_SERVICES.format(marker=marker))
    f.marker_dir = marker
    return f


def test_up_starts_dependencies_first_and_registers_ready_replicas(fleet):
    status = fleet.status()
    assert status["phase"] == "running"
    api, web = (fleet.service(n) for n in ("api", "web"))
    assert len(api["endpoints"]) == 2
    assert len(web["endpoints"]) == 1
    # web depends on api: every api replica was ready before web started
    first_web_start = min(i["started_at"] for i in web["instances"])
    assert all(i["started_at"] < first_web_start for i in api["instances"])
    ps = shoal("ps", "--json", "--state-dir", str(fleet.state_dir))
    assert ps.returncode == 0
    data = json.loads(ps.stdout)
    assert {s["service"] for s in data["services"]} == {"api", "web"}
    inst = data["services"][0]["instances"][0]
    assert set(inst) >= {"id", "state", "ready", "url", "port", "pid", "restarts", "uptime_s"}


def test_requests_without_the_token_get_401(fleet):
    code, body = fleet.api("GET", "/v1/status", token=False)
    assert code == 401
    assert body["status"] == 401
    code, _ = fleet.api("GET", "/v1/status", token="wrong")
    assert code == 401
    mode = os.stat(fleet.state_dir / "token").st_mode & 0o777
    assert mode == 0o600


def test_killed_replica_is_restarted_and_reregistered(fleet):
    victim = fleet.service("api")["instances"][0]
    os.kill(victim["pid"], signal.SIGKILL)

    def back():
        inst = next(i for i in fleet.service("api")["instances"] if i["id"] == victim["id"])
        return inst if inst["state"] == "ready" and inst["pid"] != victim["pid"] else None

    inst = wait_until(back, 30, "the killed replica to be ready again")
    assert inst["restarts"] == 1
    assert inst["url"] in fleet.service("api")["endpoints"]


def test_scale_up_and_down(fleet):
    result = shoal("scale", "api", "3", "--state-dir", str(fleet.state_dir))
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(ready_instances(fleet, "api")) == 3, 30, "3 ready replicas")
    before = {i["id"]: i["pid"] for i in fleet.service("api")["instances"]}
    result = shoal("scale", "api", "1", "--state-dir", str(fleet.state_dir))
    assert result.returncode == 0, result.stderr
    api = fleet.service("api")
    assert [i["id"] for i in api["instances"]] == ["api-1"]
    assert api["desired"] == 1
    for gone in ("api-2", "api-3"):
        assert not pid_alive(before[gone])


def test_failing_readiness_deregisters_the_replica_while_it_keeps_running(fleet):
    victim = fleet.service("api")["instances"][1]
    (fleet.marker_dir / victim["id"]).write_text("not ready")
    wait_until(lambda: victim["url"] not in fleet.service("api")["endpoints"], 15,
               "the unready replica to leave the registry")
    inst = next(i for i in fleet.service("api")["instances"] if i["id"] == victim["id"])
    assert inst["state"] == "unready"
    assert pid_alive(victim["pid"])
    (fleet.marker_dir / victim["id"]).unlink()
    wait_until(lambda: victim["url"] in fleet.service("api")["endpoints"], 15,
               "the replica to return once ready")


def test_registry_watch_pushes_changes_to_a_client_table(fleet):
    resolver = LocalResolver(f"http://127.0.0.1:{fleet.port}", fleet.token)
    tables = []
    try:
        resolver.subscribe("api", lambda table: tables.append({e.url for e in table}))
        assert len(tables[0]) == 2  # the first table arrives with the subscription
        shoal("scale", "api", "3", "--state-dir", str(fleet.state_dir))
        wait_until(lambda: len(tables[-1]) == 3, 30, "the watch to deliver 3 endpoints")
    finally:
        resolver.close()


def test_rollout_under_load_fails_no_request(fleet):
    resolver = LocalResolver(f"http://127.0.0.1:{fleet.port}", fleet.token)
    client = Client(service="load", resolver=resolver)
    stop = threading.Event()
    results = {"ok": 0, "failed": 0}
    errors = []

    def load():
        while not stop.is_set():
            try:
                resp = client.get("http://api/hello")
                results["ok" if resp.status == 200 else "failed"] += 1
            except Exception as exc:
                results["failed"] += 1
                errors.append(repr(exc))

    before = {i["id"] for i in fleet.service("api")["instances"]}
    worker = threading.Thread(target=load)
    worker.start()
    try:
        result = shoal("rollout", "api", "--state-dir", str(fleet.state_dir), timeout=180)
    finally:
        stop.set()
        worker.join(30)
        client.close()
        resolver.close()
    assert result.returncode == 0, result.stderr
    after = fleet.service("api")
    assert {i["id"] for i in after["instances"]}.isdisjoint(before)
    assert all(i["version"] == 2 for i in after["instances"])
    assert len(after["endpoints"]) == 2
    assert results["ok"] > 20
    assert results["failed"] == 0, errors[:5]


def test_down_stops_everything_with_no_orphans(fleet):
    pgids = [i["pid"] for s in fleet.status()["services"] for i in s["instances"]]
    members = {pid for pgid in pgids for pid in group_pids(pgid)}
    assert len(members) > len(pgids)  # the Flask replica's gunicorn worker is in its group
    control = fleet.control_pid()
    result = shoal("down", "--state-dir", str(fleet.state_dir))
    assert result.returncode == 0, result.stderr
    assert not pid_alive(control)
    assert [pid for pid in members if pid_alive(pid)] == []
    assert not (fleet.state_dir / "control.json").exists()


def test_a_second_fleet_from_the_same_state_dir_is_refused(fleet):
    result = shoal("up", str(fleet.spec_path), "--state-dir", str(fleet.state_dir))
    assert result.returncode == 1
    assert "already running from" in result.stderr
    assert "shoal down" in result.stderr


def test_crash_loop_is_visible_as_a_state(tmp_path):
    crasher = tmp_path / "crasher.py"
    crasher.write_text("import sys\nprint('about to crash', flush=True)\nsys.exit(3)\n")
    body = f"""
services:
  flaky:
    command: ["{sys.executable}", "{crasher}"]
    probes: {{startup_timeout: 60}}
"""
    # `up --detach` waits for readiness, which `flaky` never reaches: run `shoal up` in the
    # foreground as a child process and watch the replica's state through the API.
    port = free_port()
    spec = write_spec(tmp_path, body, port)
    state = tmp_path / ".shoal"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "up", str(spec), "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until((state / "control.json").exists, 30, "the control plane")
        fleet = Fleet(spec, state, port)

        def looping():
            flaky = fleet.service("flaky")["instances"]
            return flaky and flaky[0]["state"] == "crash-loop"

        wait_until(looping, 30, "flaky to be in crash-loop")
        inst = fleet.service("flaky")["instances"][0]
        assert inst["restarts"] >= 3
        assert inst["last_exit"] == 3
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        assert proc.stdout is not None
        proc.stdout.close()


STUBBORN = """
import http.server, os, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Ok).serve_forever()
"""


def test_down_stops_replicas_the_dead_control_plane_left_behind(fleet_factory, tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    fleet = fleet_factory(f"""
services:
  stubborn:
    command: ["{sys.executable}", "{script}"]
    drain_grace: 1
""")
    pid = fleet.service("stubborn")["instances"][0]["pid"]
    recorded = json.loads((fleet.state_dir / "instances.json").read_text())
    assert [i["pid"] for i in recorded] == [pid]
    os.kill(fleet.control_pid(), signal.SIGKILL)
    wait_until(lambda: not pid_alive(fleet.control_pid()), 10, "the control plane to die")
    assert pid_alive(pid)  # it ignores the SIGTERM its dying parent sent: an orphan
    result = shoal("down", "--state-dir", str(fleet.state_dir))
    assert result.returncode == 0, result.stderr
    assert "stopped 1 leftover replica" in result.stdout
    assert not pid_alive(pid)
    assert not (fleet.state_dir / "control.json").exists()
