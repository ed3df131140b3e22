"""Restarts of slow-starting replicas: every start gets the startup gate, liveness comes after.

A real ``command:`` service that sleeps before it listens (as a service with migrations, a
warm cache or a JIT does), killed with SIGKILL the way ``shoal chaos kill`` or the OOM killer
would.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest
from tests.integration.fleet.conftest import wait_until

pytestmark = pytest.mark.integration

SLOW = """
import http.server, os, sys, time
from pathlib import Path
if Path(os.environ["TEST_HANG_FILE"]).exists():
    time.sleep(3600)  # hangs before it ever listens
time.sleep(float(os.environ["TEST_START_S"]))
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
print("listening", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Ok).serve_forever()
"""


def slow_service(tmp_path, *, start_s: float, liveness: str, startup_timeout: float) -> str:
    script = tmp_path / "slow.py"
    script.write_text(SLOW)
    return f"""
services:
  slow:
    command: ["{sys.executable}", "{script}"]
    drain_grace: 1
    env: {{TEST_START_S: "{start_s}", TEST_HANG_FILE: "{tmp_path / 'hang'}"}}
    probes:
      readiness: {{path: /readyz, period: 0.2}}
      liveness: {liveness}
      startup_timeout: {startup_timeout}
"""


def the_replica(fleet):
    return fleet.service("slow")["instances"][0]


def test_a_slow_starter_killed_once_comes_back_ready_with_one_restart(fleet_factory, tmp_path):
    # It needs 4 s to listen; liveness would give up on a dead port after 2 x 0.25 s. Before
    # the fix the first start passed (liveness waited for the replica's first readiness),
    # but every restart was liveness-probed from its first period and killed, again and again.
    fleet = fleet_factory(slow_service(
        tmp_path, start_s=4, liveness="{path: /livez, period: 0.25, failure_threshold: 2}",
        startup_timeout=30))
    victim = the_replica(fleet)
    assert victim["state"] == "ready"
    os.kill(victim["pid"], signal.SIGKILL)

    def back():
        inst = the_replica(fleet)
        return inst if inst["state"] == "ready" and inst["pid"] != victim["pid"] else None

    inst = wait_until(back, 30, "the killed slow starter to be ready again")
    assert inst["restarts"] == 1
    # ... and liveness, which starts now, keeps it: still the same process a while later.
    time.sleep(1.5)
    later = the_replica(fleet)
    assert (later["state"], later["pid"], later["restarts"]) == ("ready", inst["pid"], 1)
    assert later["url"] in fleet.service("slow")["endpoints"]


def test_startup_timeout_applies_to_every_start_not_only_the_first(fleet_factory, tmp_path):
    # Liveness never looks at a process that has not started, so a restart that hangs must
    # meet startup_timeout: killed after 2 s and restarted (with backoff) like a crash.
    fleet = fleet_factory(slow_service(
        tmp_path, start_s=0, liveness="{path: /livez, period: 60}", startup_timeout=2))
    victim = the_replica(fleet)
    (tmp_path / "hang").write_text("hang")
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(lambda: the_replica(fleet)["restarts"] >= 3, 30,
               "the hung restart to be killed by startup_timeout and restarted")
    assert fleet.status()["phase"] == "running"  # not a failed fleet: it keeps trying
    lines = [json.loads(line) for line in (fleet.state_dir / "control.log").read_text()
             .splitlines() if line.startswith("{")]
    timeouts = [r for r in lines if r.get("event") == "replica.startup_timeout"]
    assert timeouts
    assert {r["instance"] for r in timeouts} == {victim["id"]}
    (tmp_path / "hang").unlink()
    wait_until(lambda: the_replica(fleet)["state"] == "ready", 60,
               "the replica to be ready once its start no longer hangs")
