"""One Dockerfile per workload, with its own ``.dockerignore``.

Built from the project root (``docker build -f DEPLOY/docker/users.Dockerfile .``): BuildKit
reads ``users.Dockerfile.dockerignore`` beside the Dockerfile, so the root needs no ignore file.
Two stages: ``build`` resolves the locked dependencies with uv (every extra but ``dev``) into a
virtualenv and compiles the per-request hot path into it with mypyc (``tools/native.py
--install``, with the ``native`` dependency group, which is then removed); ``runtime`` is the
slim base plus that virtualenv and the app's code, run as an unprivileged user, with
``HEALTHCHECK`` on readiness and an exec-form ``CMD`` (``shoal serve`` is PID 1, so SIGTERM
reaches the drain directly).
"""

from __future__ import annotations

import json

from shoal.platform.deploy._common import (
    APP_UID,
    PYTHON_IMAGE,
    UV_VERSION,
    Workload,
    readiness_command,
    whole_seconds,
)

HEALTH_INTERVAL = 10
DOCKERIGNORE = """\
# Keep the build context small and free of local state and secrets.
.git
.github
.gitlab-ci.yml
.venv
.shoal
.env
.env.*
**/__pycache__
**/*.py[cod]
**/.pytest_cache
.mypy_cache
.ruff_cache
.hypothesis
**/*.db
**/*.db-*
**/data
bench
deploy
docs
tests
tools/*
!tools/native.py
# Extensions tools/native.py compiled in place for this machine's Python: the image compiles
# its own from the sources (a shim without its group library would fail to import).
**/*.so
src/shoal/_native.json
build
"""


def dockerfile(workload: Workload, header: str) -> str:
    """The Dockerfile text of ``workload``."""
    probes = workload.probes
    # Probe quickly while starting (compose's service_healthy gate), then every 10 s: each
    # check starts a Python process.
    start_interval = whole_seconds(probes.readiness.period)
    health = json.dumps(readiness_command(workload))
    cmd = json.dumps(list(workload.command))
    source = (
        f"COPY --chown=root:root {workload.source_dir} ./{workload.source_dir}\n"
        if workload.source_dir else ""
    )
    extra_env = "".join(f" \\\n    {key}={json.dumps(value)}"
                        for key, value in workload.env.items())
    return f"""\
# {header}
# Build from the project root: docker build -f <this file> -t <image> .

FROM {PYTHON_IMAGE} AS build
# A C compiler for mypyc, which compiles the per-request hot path (tools/native.py); only the
# compiled modules reach the runtime stage.
RUN apt-get update \\
    && apt-get install -y --no-install-recommends gcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "uv=={UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never \\
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first: this layer is reused until uv.lock changes.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \\
    uv sync --frozen --no-install-project --no-editable --all-extras --no-extra dev \\
        --group native
COPY src ./src
COPY tools/native.py ./tools/native.py
# Install the project, compile its hot path into the installed package (a failed compile
# fails the build), then drop the compiler's packages (uv sync removes what is not asked for).
RUN --mount=type=cache,target=/root/.cache/uv \\
    uv sync --frozen --no-editable --all-extras --no-extra dev --group native \\
    && SHOAL_REQUIRE_EXTERNAL=1 "$UV_PROJECT_ENVIRONMENT/bin/python" tools/native.py --install \\
    && uv sync --frozen --no-editable --all-extras --no-extra dev

FROM {PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid {APP_UID} shoal \\
    && useradd --system --uid {APP_UID} --gid shoal --no-create-home \\
       --home-dir /nonexistent --shell /usr/sbin/nologin shoal
WORKDIR /app
COPY --from=build --chown=root:root /app/.venv /app/.venv
{source}ENV PATH=/app/.venv/bin:$PATH \\
    PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    SHOAL_SERVICE={workload.name} \\
    SHOAL_HOST=0.0.0.0 \\
    PORT={workload.port}{extra_env}
USER {APP_UID}:{APP_UID}
EXPOSE {workload.port}
HEALTHCHECK --interval={HEALTH_INTERVAL}s --timeout={whole_seconds(probes.readiness.timeout)}s \\
    --start-period={whole_seconds(probes.startup_timeout)}s --start-interval={start_interval}s \\
    --retries={probes.readiness.failure_threshold} \\
    CMD {health}
CMD {cmd}
"""


def render(workloads: list[Workload], header: str) -> dict[str, str]:
    """``docker/NAME.Dockerfile`` and its ignore file, per workload."""
    files: dict[str, str] = {}
    for workload in workloads:
        files[f"docker/{workload.name}.Dockerfile"] = dockerfile(workload, header)
        files[f"docker/{workload.name}.Dockerfile.dockerignore"] = f"# {header}\n{DOCKERIGNORE}"
    return files
