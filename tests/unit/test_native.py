"""The mypyc-compiled hot path (tools/native.py): in effect when built, and the pure-Python
sources it is compiled from still pass the hot path's own tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import native
import shoal.client._h1conn
import shoal.platform.gateway._server

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
