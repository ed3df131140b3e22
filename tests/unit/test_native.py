"""The mypyc-compiled hot path (tools/native.py): in effect when built, and the pure-Python
sources it is compiled from still pass the hot path's own tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

import native
import shoal.client._h1conn
import shoal.platform.gateway._server
from shoal.testing import free_port, run_server, wait_until

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = os.environ.get("SHOAL_REQUIRE_EXTERNAL") == "1"


def test_the_hot_path_runs_compiled_when_built() -> None:
    if not native.MANIFEST.exists():
        if REQUIRED:
            pytest.fail("the hot path is not compiled: tools/native.py did not build it")
        pytest.skip("the hot path is not compiled here (no C compiler, or SHOAL_NATIVE=0)")
    assert native.problems() == []
    for module in (shoal.platform.gateway._server, shoal.client._h1conn):
        assert module.__file__ is not None
        assert module.__file__.endswith(native.SUFFIX), module.__file__


def test_the_manifest_goes_stale_when_a_source_changes(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    for module in native.MODULES:
        (src / module).parent.mkdir(parents=True, exist_ok=True)
        (src / module).write_text("x = 1\n")
        (src / module.removesuffix(".py")).with_suffix(native.SUFFIX).write_bytes(b"")
    monkeypatch.setattr(native, "SRC", src)
    monkeypatch.setattr(native, "MANIFEST", src / "shoal" / "_native.json")
    assert native.problems() == ["not built (no src/shoal/_native.json)"]
    native.MANIFEST.write_text(
        '{"python": "%s", "modules": %s}' % (  # noqa: UP031
            sys.version.split()[0], str(native.wanted()).replace("'", '"')))
    assert native.problems() == []
    (src / native.MODULES[0]).write_text("x = 2\n")
    assert native.problems() == [f"{native.MODULES[0]}: source changed since it was compiled"]
    native.clean()
    assert not native.MANIFEST.exists()
    assert not list(src.rglob(f"*{native.SUFFIX}"))


def test_install_copies_into_an_installed_package_of_the_same_sources_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, site = tmp_path / "src", tmp_path / "site"
    for module in native.MODULES:
        for root in (src, site):
            (root / module).parent.mkdir(parents=True, exist_ok=True)
            (root / module).write_text(f"# {module}\n")
        (src / module.removesuffix(".py")).with_suffix(native.SUFFIX).write_bytes(b"ext")
    (src / f"{native.GROUP}__mypyc{native.SUFFIX}").write_bytes(b"lib")
    monkeypatch.setattr(native, "SRC", src)
    monkeypatch.setattr(native, "MANIFEST", src / "shoal" / "_native.json")
    native.MANIFEST.write_text(json.dumps({"python": sys.version.split()[0],
                                           "modules": native.wanted()}))
    with pytest.raises(RuntimeError, match="no installed shoal package"):
        native.install(site)  # (no shoal/__init__.py: e.g. an editable install)
    (site / "shoal" / "__init__.py").write_text("")
    (site / native.MODULES[0]).write_text("# another version\n")
    with pytest.raises(RuntimeError, match="installed sources differ"):
        native.install(site)
    (site / native.MODULES[0]).write_text(f"# {native.MODULES[0]}\n")
    written = native.install(site)
    assert len(written) == len(native.MODULES) + 1
    assert (site / f"{native.GROUP}__mypyc{native.SUFFIX}").read_bytes() == b"lib"
    assert (site / native.MODULES[-1].removesuffix(".py")).with_suffix(
        native.SUFFIX).read_bytes() == b"ext"


@pytest.mark.integration
def test_the_pure_python_sources_pass_the_hot_path_tests(tmp_path: Path) -> None:
    """The same unit tests against a copy of ``src`` without extensions (the path a machine
    without a C compiler runs)."""
    pure = tmp_path / "src"
    shutil.copytree(ROOT / "src", pure,
                    ignore=shutil.ignore_patterns(f"*{native.SUFFIX}", "_native.json",
                                                  "__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(pure), "SHOAL_TEST_PURE": "1"}
    check = subprocess.run(
        [sys.executable, "-c", "import shoal.platform.gateway._server as m; print(m.__file__)"],
        env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    assert check.stdout.strip() == str(pure / "shoal/platform/gateway/_server.py")
    tests = ["test_gateway_server.py", "test_h1_transport.py", "test_client_stream.py",
             "test_logging_direct_write.py", "test_context.py", "test_breaker.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         *(f"tests/unit/{name}" for name in tests)],
        env=env, capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def build_stage_commands(dockerfile: str) -> list[str]:
    """The ``RUN`` commands of a generated Dockerfile's ``build`` stage that set up the
    virtualenv (not the base image's ``apt-get``/``pip install uv``), without BuildKit's
    ``--mount`` options."""
    stage = dockerfile.split(" AS build\n", 1)[1].split("\nFROM ", 1)[0]
    logical = re.sub(r"\\\n\s*", " ", stage)
    runs = [line[4:] for line in logical.splitlines() if line.startswith("RUN ")]
    return [re.sub(r"^(--mount=\S+\s+)+", "", run) for run in runs
            if "apt-get" not in run and "pip install" not in run]


@pytest.mark.integration
def test_the_image_build_stage_installs_the_compiled_hot_path(tmp_path: Path) -> None:
    """The generated Dockerfile's build-stage commands, run here in a copy of its build
    context: the installed package imports the compiled modules and the compiler's packages
    are gone again. (The extensions ``make venv`` built are put in the context, so
    ``native.py --install`` copies them instead of compiling for two minutes: the compile
    itself is the one ``make venv`` runs.)"""
    if native.problems():
        if REQUIRED:
            pytest.fail("the hot path is not compiled: tools/native.py did not build it")
        pytest.skip("the hot path is not compiled here (no C compiler, or SHOAL_NATIVE=0)")
    dockerfile = (ROOT / "deploy/docker/gateway.Dockerfile").read_text()
    ignore = (ROOT / "deploy/docker/gateway.Dockerfile.dockerignore").read_text().splitlines()
    assert {"tools/*", "!tools/native.py"} <= set(ignore)  # (the context carries the tool)
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.split("AS runtime")[0],
                        re.MULTILINE)
    assert copied == ["pyproject.toml uv.lock README.md", "src", "tools/native.py"]
    context = tmp_path / "app"
    for name in ("pyproject.toml", "uv.lock", "README.md", "tools/native.py"):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(ROOT / "src", context / "src",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = context / ".venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON": sys.executable,
           "UV_PYTHON_DOWNLOADS": "never", "UV_LINK_MODE": "copy"}
    env.pop("VIRTUAL_ENV", None)
    if shutil.which("uv") is None:  # (installed as the Makefile does: python3 -m uv)
        shim = tmp_path / "bin" / "uv"
        shim.parent.mkdir()
        shim.write_text('#!/bin/sh\nexec python3 -m uv "$@"\n')
        shim.chmod(0o755)
        env["PATH"] = f"{shim.parent}:{env['PATH']}"
    commands = build_stage_commands(dockerfile)
    assert any("native.py --install" in command for command in commands)
    for command in commands:
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=context, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, f"{command}\n{run.stdout[-2000:]}{run.stderr[-3000:]}"
    probe = subprocess.run(
        [str(venv / "bin/python"), "-c",
         "import importlib.util as u, shoal._chassis as c, shoal.platform.gateway._server as s;"
         "print(c.__file__); print(s.__file__); print(u.find_spec('mypy'))"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    chassis, server, mypy = probe.stdout.split()
    for path in (chassis, server):
        assert path.startswith(str(venv)), path
        assert path.endswith(native.SUFFIX), path
    assert mypy == "None"  # the compiler's packages left with the last sync
    # The extensions came from --install, not inside the project's wheel (which never
    # carries them: pyproject.toml excludes them even though this context has them in src/).
    (record,) = venv.glob("lib/python*/site-packages/shoal-*.dist-info/RECORD")
    assert native.SUFFIX not in record.read_text()
    # The image's command, from that virtualenv: the compiled gateway proxies a request.
    (tmp_path / "shoal.yaml").write_text(
        "system: s\nservices:\n  users: {app: 'x:y'}\ngateway:\n  routes:\n"
        "    - {prefix: /api/users, service: users, rewrite: /users}\n")
    with run_server("tests.apps.gateway_backend:app", service="users") as backend:
        port = free_port()
        gateway = subprocess.Popen(
            [str(venv / "bin/shoal"), "serve", "shoal.platform.gateway:app"],
            cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PORT": str(port), "SHOAL_HOST": "127.0.0.1",
                 "SHOAL_GATEWAY_SPEC": str(tmp_path / "shoal.yaml"),
                 "SHOAL_DISCOVERY": f"static:users={backend.url}"})
        try:
            reply = wait_until(lambda: _get(f"http://127.0.0.1:{port}/api/users/7"), 20,
                               "the gateway from the image's virtualenv to proxy")
            assert reply["path"] == "/users/7"
        finally:
            gateway.terminate()
            gateway.wait(20)


def _get(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return dict(json.loads(response.read()))
    except OSError:
        return None
