"""Real etcd members for tests and benchmarks: free loopback ports, temporary data, tracked PIDs.

::

    with EtcdCluster(3, tmp_path) as cluster:
        cluster.discovery("/fleet")   # "etcd+http://127.0.0.1:p0,127.0.0.1:p1,127.0.0.1:p2/fleet"
        cluster.kill(cluster.leader())

Elections are tuned short (heartbeat 50 ms, election timeout 500 ms) so that losing the leader
costs well under a second; etcd's minimum lease TTL is then 1 s. Every member is its own
process group, killed (SIGKILL) and reaped on :meth:`stop`, whatever happened before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ETCD = "/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else (shutil.which("etcd") or "")


def etcd_available() -> bool:
    return bool(ETCD) and os.access(ETCD, os.X_OK)


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):  # all bound at once: the OS hands out distinct ports
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _post(url: str, body: dict[str, Any] | None = None, timeout: float = 1.0) -> dict[str, Any]:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    with opener.open(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict[str, Any] | None:
        try:
            return _post(self.client_url + "/v3/maintenance/status")
        except (OSError, ValueError):
            return None


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1 with data under ``workdir``."""

    def __init__(self, size: int, workdir: Path) -> None:
        self.token = f"shoal-{uuid.uuid4().hex[:8]}"
        self.workdir = Path(workdir) / self.token
        ports = _free_ports(2 * size)
        self.members = [
            Member(f"m{i}", ports[2 * i], ports[2 * i + 1], self.workdir / f"m{i}",
                   self.workdir / f"m{i}.log")
            for i in range(size)
        ]

    def __enter__(self) -> EtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pids(self) -> list[int]:
        return [m.process.pid for m in self.members if m.process is not None]

    def endpoints(self, order: list[int] | None = None) -> list[str]:
        indexes = order if order is not None else range(len(self.members))
        return [self.members[i].client_url for i in indexes]

    def discovery(self, root: str = "", order: list[int] | None = None) -> str:
        """A ``SHOAL_DISCOVERY`` value naming the members (in ``order``) and a key root."""
        hosts = ",".join(url.removeprefix("http://") for url in self.endpoints(order))
        return f"etcd+http://{hosts}{root}"

    def start(self, timeout: float = 30.0) -> EtcdCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            self._spawn(member, state="new")
        self.wait_healthy(timeout)
        return self

    def _spawn(self, member: Member, *, state: str) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        argv = [
            ETCD, "--name", member.name, "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--logger", "zap", "--log-level", "warn",
        ]
        member.log = open(member.log_path, "ab")  # noqa: SIM115 - closed in stop()
        member.process = subprocess.Popen(
            argv, stdout=member.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live member answers and agrees on a leader (then one write succeeds)."""
        deadline = time.monotonic() + timeout
        while True:
            leaders = set()
            for member in self.members:
                if member.process is None or not member.alive:
                    continue
                status = member.status()
                leaders.add(status.get("leader") if status else None)
            if leaders and None not in leaders and len(leaders) == 1:
                with contextlib.suppress(OSError, ValueError):
                    _post(self.live()[0].client_url + "/v3/kv/put",
                          {"key": "X19oZWFsdGhfXw==", "value": ""})
                    return
            for member in self.members:
                if member.process is not None and member.process.poll() is not None \
                        and member.process.returncode not in (-signal.SIGKILL,):
                    raise RuntimeError(f"etcd {member.name} exited:\n{self.log_tail(member)}")
            if time.monotonic() > deadline:
                raise TimeoutError("etcd not healthy:\n" + "\n".join(
                    self.log_tail(m) for m in self.members))
            time.sleep(0.05)

    def live(self) -> list[Member]:
        return [m for m in self.members if m.alive]

    def leader(self) -> int:
        """Index of the current leader (asked of the live members)."""
        for member in self.live():
            status = member.status()
            if status and status.get("leader"):
                leader_id = status["leader"]
                for index, other in enumerate(self.members):
                    other_status = other.status() if other.alive else None
                    if other_status and other_status["header"]["member_id"] == leader_id:
                        return index
        raise RuntimeError("no leader")

    def kill(self, index: int) -> None:
        """SIGKILL one member (its whole process group) and reap it."""
        member = self.members[index]
        if member.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(member.process.pid, signal.SIGKILL)
            member.process.wait(10)

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start a killed member again on its data (it rejoins the cluster)."""
        member = self.members[index]
        if member.log is not None:
            member.log.close()
        self._spawn(member, state="existing")
        self.wait_healthy(timeout)

    def log_tail(self, member: Member, chars: int = 2000) -> str:
        try:
            return f"--- {member.name}\n" + member.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return f"--- {member.name}: no log"

    def stop(self) -> None:
        """Kill every member we started and remove the data (idempotent)."""
        for index, member in enumerate(self.members):
            if member.process is not None and member.process.poll() is None:
                self.kill(index)
            if member.log is not None:
                member.log.close()
                member.log = None
        shutil.rmtree(self.workdir, ignore_errors=True)
