"""CI/CD pipelines: GitHub Actions and GitLab CI, the same four steps.

Lint and test (``make lint typecheck``, ``make pytest``); build and push one image per
workload, tagged with the commit; point the prod overlay at those tags (``kustomize edit set
image``); ``kubectl apply -k`` and wait for every Deployment's ``rollout status``. Cluster
credentials come from a ``KUBECONFIG_B64`` secret/variable (a base64 kubeconfig).
"""

from __future__ import annotations

from typing import Any

from shoal.platform.deploy._common import UV_VERSION, Workload, dump_yaml

PYTHON_VERSION = "3.11"
ROLLOUT_TIMEOUT = "300s"


def _deploy_script(system: str, workloads: list[Workload], out_rel: str, registry: str,
                   tag: str) -> list[str]:
    overlay = f"{out_rel}/k8s/overlays/prod"
    images = " ".join(f"{w.image(system)}={registry}/{w.image(system)}:{tag}"
                      for w in workloads)
    lines = [
        f"(cd {overlay} && kustomize edit set image {images})",
        f"kubectl apply -k {overlay}",
    ]
    lines += [f"kubectl -n {system} rollout status deployment/{w.name} "
              f"--timeout={ROLLOUT_TIMEOUT}" for w in workloads]
    return lines


def github(system: str, workloads: list[Workload], out_rel: str, header: str) -> str:
    names = [w.name for w in workloads]
    registry = "ghcr.io/${{ github.repository_owner }}"
    checkout = {"uses": "actions/checkout@v4"}
    workflow: dict[str, Any] = {
        "name": f"{system} ci/cd",
        "on": {"push": {"branches": ["main"]}, "pull_request": {}},
        "permissions": {"contents": "read"},
        "concurrency": {"group": "${{ github.workflow }}-${{ github.ref }}",
                        "cancel-in-progress": True},
        "jobs": {
            "test": {
                "runs-on": "ubuntu-24.04",
                "timeout-minutes": 30,
                "steps": [
                    checkout,
                    {"uses": "actions/setup-python@v5",
                     "with": {"python-version": PYTHON_VERSION}},
                    {"name": "Install uv", "run": f'python -m pip install "uv=={UV_VERSION}"'},
                    {"name": "Lint and type-check", "run": "make lint typecheck"},
                    {"name": "Test", "run": "make pytest"},
                ],
            },
            "images": {
                "needs": "test",
                "if": "github.event_name == 'push'",
                "runs-on": "ubuntu-24.04",
                "timeout-minutes": 30,
                "permissions": {"contents": "read", "packages": "write"},
                "strategy": {"matrix": {"service": names}},
                "steps": [
                    checkout,
                    {"uses": "docker/setup-buildx-action@v3"},
                    {"uses": "docker/login-action@v3",
                     "with": {"registry": "ghcr.io", "username": "${{ github.actor }}",
                              "password": "${{ secrets.GITHUB_TOKEN }}"}},
                    {"name": "Build and push",
                     "uses": "docker/build-push-action@v6",
                     "with": {"context": ".",
                              "file": f"{out_rel}/docker/${{{{ matrix.service }}}}.Dockerfile",
                              "push": True,
                              "tags": f"{registry}/{system}-${{{{ matrix.service }}}}:"
                                      "${{ github.sha }}",
                              "cache-from": "type=gha",
                              "cache-to": "type=gha,mode=max"}},
                ],
            },
            "deploy": {
                "needs": "images",
                "runs-on": "ubuntu-24.04",
                "timeout-minutes": 20,
                "environment": "production",
                "steps": [
                    checkout,
                    {"name": "Cluster credentials",
                     "run": 'echo "$KUBECONFIG_B64" | base64 -d > "$RUNNER_TEMP/kubeconfig"\n'
                            'echo "KUBECONFIG=$RUNNER_TEMP/kubeconfig" >> "$GITHUB_ENV"\n',
                     "env": {"KUBECONFIG_B64": "${{ secrets.KUBECONFIG_B64 }}"}},
                    {"name": "Apply and wait for the rollout",
                     "run": "\n".join(_deploy_script(system, workloads, out_rel, registry,
                                                     "${{ github.sha }}")) + "\n"},
                ],
            },
        },
    }
    return dump_yaml([workflow], header)


def gitlab(system: str, workloads: list[Workload], out_rel: str, header: str) -> str:
    on_default = [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
    pipeline: dict[str, Any] = {
        "stages": ["test", "build", "deploy"],
        "variables": {"UV_VERSION": UV_VERSION},
        "test": {
            "stage": "test",
            "image": f"python:{PYTHON_VERSION}-bookworm",
            "script": ['python -m pip install "uv==$UV_VERSION"', "make lint typecheck",
                       "make pytest"],
        },
        "images": {
            "stage": "build",
            "image": "docker:27",
            "services": ["docker:27-dind"],
            "variables": {"DOCKER_TLS_CERTDIR": "/certs"},
            "parallel": {"matrix": [{"SERVICE": [w.name for w in workloads]}]},
            "rules": on_default,
            "script": [
                'echo "$CI_REGISTRY_PASSWORD" | docker login -u "$CI_REGISTRY_USER" '
                '--password-stdin "$CI_REGISTRY"',
                f'docker build -f "{out_rel}/docker/$SERVICE.Dockerfile" '
                f'-t "$CI_REGISTRY_IMAGE/{system}-$SERVICE:$CI_COMMIT_SHA" .',
                f'docker push "$CI_REGISTRY_IMAGE/{system}-$SERVICE:$CI_COMMIT_SHA"',
            ],
        },
        "deploy": {
            "stage": "deploy",
            "image": {"name": "alpine/k8s:1.32.3", "entrypoint": [""]},
            "environment": {"name": "production"},
            "rules": on_default,
            "script": [
                'echo "$KUBECONFIG_B64" | base64 -d > "$CI_PROJECT_DIR/.kubeconfig"',
                'export KUBECONFIG="$CI_PROJECT_DIR/.kubeconfig"',
                *_deploy_script(system, workloads, out_rel, "$CI_REGISTRY_IMAGE",
                                "$CI_COMMIT_SHA"),
            ],
        },
    }
    return dump_yaml([pipeline], header)


def render(system: str, workloads: list[Workload], out_rel: str,
           header: str) -> dict[str, str]:
    """``ci/github-actions.yml`` (copy to ``.github/workflows/``) and ``ci/gitlab-ci.yml``
    (include it from ``.gitlab-ci.yml``); paths are relative to the project root."""
    return {
        "ci/github-actions.yml": github(system, workloads, out_rel, header),
        "ci/gitlab-ci.yml": gitlab(system, workloads, out_rel, header),
    }
