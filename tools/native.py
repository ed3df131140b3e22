"""Compile Shoal's per-request hot path with mypyc, in place (``make venv`` runs this).

The modules in :data:`MODULES` are the code every proxied request of the gateway runs (its
server, the chassis core, the client's policy stack and HTTP/1.1 transport). mypyc, mypy's
compiler, turns them into C extensions from the same type-annotated sources: the gateway's
instructions per request fall by about 45 % (``bench/gateway_instructions.py``). The
sources stay the reference; the extensions sit beside them in ``src/`` (ignored by git) and
Python imports them in preference to the ``.py`` files.

A manifest (``src/shoal/_native.json``) records the SHA-256 of each compiled source, so this
script is a no-op when nothing changed and the test suite refuses to run against extensions
built from older sources.

    python tools/native.py            # build when a source changed (else nothing to do)
    python tools/native.py --check    # exit 1 when the extensions are missing or stale
    python tools/native.py --clean    # remove them: run the pure-Python sources
    python tools/native.py --install  # build if needed, then copy them into the installed
                                      # (non-editable) shoal package of this interpreter:
                                      # the Docker images' build stage

``SHOAL_NATIVE=0`` cleans instead of building (to debug the pure-Python path). Without a C
compiler the build is skipped with a warning and the pure-Python sources run, unless
``SHOAL_REQUIRE_EXTERNAL=1`` (CI), where it fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
MANIFEST = SRC / "shoal" / "_native.json"
#: The shared library mypyc builds for the group (it holds the code; each module is a shim).
GROUP = "shoal_native"

#: The gateway's per-request path, and what every chassis request shares with it. Not
#: ``shoal/_loghandlers.py``: compiled, its ``logging`` subclasses corrupt memory (a freed
#: weak reference in logging's handler set, a segfault at the next garbage collection).
MODULES = (
    "shoal/_chassis.py",
    "shoal/_context.py",
    "shoal/_logging.py",
    "shoal/_metrics.py",
    "shoal/client/_async.py",
    "shoal/client/_balancer.py",
    "shoal/client/_breaker.py",
    "shoal/client/_bulkhead.py",
    "shoal/client/_h1conn.py",
    "shoal/client/_h1transport.py",
    "shoal/client/_outlier.py",
    "shoal/client/_retry.py",
    "shoal/client/_shell.py",
    "shoal/client/_sync.py",
    "shoal/client/_transport.py",
    "shoal/client/_upstream.py",
    "shoal/platform/gateway/_headers.py",
    "shoal/platform/gateway/_proxy.py",
    "shoal/platform/gateway/_routes.py",
    "shoal/platform/gateway/_server.py",
)
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wanted() -> dict[str, str]:
    """Each compiled module's source path and the hash its extension must be built from."""
    return {module: _digest(SRC / module) for module in MODULES}


def _extension(module: str) -> Path:
    return SRC / (module.removesuffix(".py") + SUFFIX)


def _artefacts() -> list[Path]:
    """Every extension under ``src/`` (also of modules no longer in :data:`MODULES`)."""
    return sorted(SRC.rglob(f"*{SUFFIX}"))


def problems() -> list[str]:
    """Why the extensions in ``src/`` are not the current sources compiled (empty: they are)."""
    if not MANIFEST.exists():
        return ["not built (no src/shoal/_native.json)"]
    built = json.loads(MANIFEST.read_text())
    out = []
    for module, digest in wanted().items():
        if built.get("modules", {}).get(module) != digest:
            out.append(f"{module}: source changed since it was compiled")
        elif not _extension(module).exists():
            out.append(f"{module}: extension missing")
    if built.get("python") != sys.version.split()[0]:
        out.append(f"built for Python {built.get('python')}, running {sys.version.split()[0]}")
    return out


def clean() -> None:
    for path in _artefacts():
        path.unlink()
    MANIFEST.unlink(missing_ok=True)


def build() -> None:
    """Compile :data:`MODULES` with mypyc into a temporary tree, then move them into ``src/``."""
    from mypyc.build import mypycify  # noqa: PLC0415 - dev dependencies, only when building
    from setuptools import setup  # noqa: PLC0415

    clean()  # (never leave extensions of older sources importable, even if this fails)
    digests = wanted()
    with tempfile.TemporaryDirectory(prefix="shoal-native-") as tmpdir:
        tmp = Path(tmpdir)
        cwd = Path.cwd()
        os.chdir(ROOT)  # (mypy reads pyproject.toml's [tool.mypy] from here)
        try:
            extensions = mypycify(
                [f"src/{m}" for m in MODULES], opt_level="3", group_name=GROUP,
                target_dir=str(tmp / "c"),
            )
            setup(
                name="shoal-native", ext_modules=extensions, package_dir={"": "src"},
                script_name="native.py", script_args=[
                    "--quiet", "build_ext", "--build-lib", str(tmp / "lib"),
                    "--build-temp", str(tmp / "obj"), "--parallel", str(os.cpu_count() or 1),
                ],
            )
        finally:
            os.chdir(cwd)
        for built in (tmp / "lib").rglob(f"*{SUFFIX}"):
            target = SRC / built.relative_to(tmp / "lib")
            shutil.copy2(built, target)
    MANIFEST.write_text(json.dumps({"python": sys.version.split()[0], "modules": digests},
                                   indent=1, sort_keys=True) + "\n")


def install(site: Path) -> list[Path]:
    """Copy the extensions built in ``src/`` into the ``shoal`` package installed in
    ``site`` (a non-editable install of the same sources: checked by hash); returns the
    files written. Raises ``RuntimeError`` naming what does not match."""
    package = site / "shoal"
    if not (package / "__init__.py").is_file():
        raise RuntimeError(f"no installed shoal package in {site} (an editable install "
                           f"imports src/ itself: nothing to install)")
    stale = problems()
    if stale:
        raise RuntimeError(f"the extensions in src/ are not current: {stale[0]}")
    differ = [m for m, digest in wanted().items()
              if not (site / m).is_file() or _digest(site / m) != digest]
    if differ:
        raise RuntimeError(f"the installed sources differ from src/ ({differ[0]}): "
                           f"install the project from this checkout first")
    written = []
    for built in _artefacts():  # (the modules' shims and the group library they load)
        target = site / built.relative_to(SRC)
        shutil.copy2(built, target)
        written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when missing or stale")
    parser.add_argument("--clean", action="store_true", help="remove the extensions")
    parser.add_argument("--install", action="store_true",
                        help="build if needed, then copy the extensions into the shoal package "
                             "installed for this interpreter (non-editable)")
    args = parser.parse_args()
    if args.check:
        issues = problems()
        for issue in issues:
            print(f"native: {issue}", file=sys.stderr)
        return 1 if issues else 0
    if args.clean or os.environ.get("SHOAL_NATIVE") == "0":
        clean()
        print("native: removed the compiled modules; the pure-Python sources run")
        return 0
    if not problems():
        return _install() if args.install else 0
    print(f"native: compiling {len(MODULES)} hot-path modules with mypyc (about two minutes)")
    try:
        build()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - e.g. no C compiler: run pure Python
        clean()
        print(f"native: compiling failed ({exc!r}); the pure-Python sources run instead",
              file=sys.stderr)
        # (asked to install compiled modules, nothing compiled is a failure too)
        return 1 if args.install or os.environ.get("SHOAL_REQUIRE_EXTERNAL") == "1" else 0
    print(f"native: compiled {len(MODULES)} modules")
    return _install() if args.install else 0


def _install() -> int:
    site = Path(sysconfig.get_path("purelib"))
    try:
        written = install(site)
    except RuntimeError as exc:
        print(f"native: not installed: {exc}", file=sys.stderr)
        return 1
    print(f"native: installed {len(written)} compiled files into {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
