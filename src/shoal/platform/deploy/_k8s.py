"""Kubernetes: a Kustomize base (one file per workload) with ``dev`` and ``prod`` overlays.

Per workload: a ConfigMap of its environment, a Deployment, a Service (and, for services, a
headless Service the ``dns`` discovery backend resolves to one A record per ready pod), a
PodDisruptionBudget, a NetworkPolicy and, from the spec's ``autoscale``, an autoscaling/v2
HorizontalPodAutoscaler. The gateway is fronted by an Ingress. Kustomization files use only
fields both old (kubectl 1.20's kustomize v2) and current kustomize accept.

Drain: on deletion the pod leaves the Endpoints at once; ``preStop`` sleeps long enough for
every client's DNS table to drop it (re-resolution interval plus the DNS TTL), then SIGTERM
starts the chassis' drain (``SHOAL_DRAIN_GRACE``). ``terminationGracePeriodSeconds`` covers
both, with a margin.
"""

from __future__ import annotations

import math
from typing import Any

from shoal.platform.deploy._common import (
    APP_UID,
    GATEWAY_SPEC_DIR,
    POSTGRES_IMAGE,
    POSTGRES_PORT,
    SERVICE_PORT,
    Workload,
    base_env,
    digest,
    dump_yaml,
    whole_seconds,
)
from shoal.platform.spec import Autoscale, Probe, Spec

#: Kubernetes version the manifests are written (and schema-validated) for.
KUBERNETES_VERSION = "1.32.0"
#: Seconds between DNS re-resolutions in clients, and the cluster DNS's record TTL (CoreDNS).
DNS_INTERVAL = 3
CLUSTER_DNS_TTL = 5
PRESTOP_SECONDS = DNS_INTERVAL + CLUSTER_DNS_TTL
DISCOVERY = f"dns:host={{service}}-headless,port={SERVICE_PORT},interval={DNS_INTERVAL}"
INGRESS_NAMESPACE = "ingress-nginx"
MONITORING_NAMESPACE = "monitoring"
KUSTOMIZATION = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


def selector(system: str, name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": system}


def labels(system: str, name: str, component: str) -> dict[str, str]:
    return {**selector(system, name), "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": "shoal"}


def _meta(name: str, lbls: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "labels": lbls, **extra}


def _probe(probe: Probe, port: str) -> dict[str, Any]:
    return {
        "httpGet": {"path": probe.path, "port": port},
        "periodSeconds": whole_seconds(probe.period),
        "timeoutSeconds": whole_seconds(probe.timeout),
        "failureThreshold": probe.failure_threshold,
        "successThreshold": probe.success_threshold,
    }


def grace_period(workload: Workload) -> int:
    return PRESTOP_SECONDS + math.ceil(workload.drain_grace) + 2


def _container(workload: Workload, system: str) -> dict[str, Any]:
    probes = workload.probes
    startup = _probe(probes.readiness, "http")
    startup["failureThreshold"] = max(
        1, math.ceil(probes.startup_timeout / whole_seconds(probes.readiness.period)))
    resources: dict[str, Any] = {
        "requests": {"cpu": workload.resources.cpu, "memory": workload.resources.memory},
        "limits": {"memory": workload.resources.memory_limit},
    }
    if workload.resources.cpu_limit:
        resources["limits"]["cpu"] = workload.resources.cpu_limit
    env_from: list[dict[str, Any]] = [{"configMapRef": {"name": f"{workload.name}-env"}}]
    if workload.database:
        env_from.append({"secretRef": {"name": f"{workload.name}-database"}})
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108 - the pod's own emptyDir
    if workload.is_gateway:
        mounts.append({"name": "spec", "mountPath": GATEWAY_SPEC_DIR, "readOnly": True})
    return {
        "name": workload.name,
        "image": workload.image(system),
        "imagePullPolicy": "IfNotPresent",
        "command": list(workload.command),
        "ports": [{"name": "http", "containerPort": workload.port, "protocol": "TCP"}],
        "env": [{"name": "SHOAL_INSTANCE",
                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "envFrom": env_from,
        "startupProbe": startup,
        "readinessProbe": _probe(probes.readiness, "http"),
        "livenessProbe": _probe(probes.liveness, "http"),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }


def _deployment(workload: Workload, system: str, config_hash: str) -> dict[str, Any]:
    component = "gateway" if workload.is_gateway else "service"
    lbls = labels(system, workload.name, component)
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    if workload.is_gateway:
        volumes.append({"name": "spec", "configMap": {"name": "gateway-spec"}})
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(system, workload.name)},
        "revisionHistoryLimit": 5,
        "strategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {
                "labels": lbls,
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(workload.port),
                    "prometheus.io/path": "/metrics",
                    # A changed ConfigMap rolls the pods (env is read at start).
                    "shoal.dev/config-hash": config_hash,
                },
            },
            "spec": {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": grace_period(workload),
                "securityContext": {
                    "runAsNonRoot": True, "runAsUser": APP_UID, "runAsGroup": APP_UID,
                    "fsGroup": APP_UID, "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [_container(workload, system)],
                "volumes": volumes,
            },
        },
    }
    # With an HPA the replica count is its to set; a fixed one would fight it on every apply.
    if workload.autoscale is None:
        spec["replicas"] = workload.replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _meta(workload.name, lbls), "spec": spec}


def _services(workload: Workload, system: str) -> list[dict[str, Any]]:
    component = "gateway" if workload.is_gateway else "service"
    lbls = labels(system, workload.name, component)
    port = {"name": "http", "port": workload.port, "targetPort": "http", "protocol": "TCP"}
    docs = [{"apiVersion": "v1", "kind": "Service", "metadata": _meta(workload.name, lbls),
             "spec": {"type": "ClusterIP", "selector": selector(system, workload.name),
                      "ports": [port]}}]
    if not workload.is_gateway:
        docs.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": _meta(f"{workload.name}-headless", lbls),
            # One A record per ready pod: clients balance over instances themselves.
            "spec": {"clusterIP": "None", "selector": selector(system, workload.name),
                     "publishNotReadyAddresses": False, "ports": [port]},
        })
    return docs


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def hpa(workload: Workload, system: str, auto: Autoscale) -> dict[str, Any]:
    """The spec's ``autoscale`` as an autoscaling/v2 HPA (custom metrics: prometheus-adapter,
    rules in ``k8s/monitoring``)."""
    if auto.metric == "cpu":
        metric: dict[str, Any] = {"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization":
                                      max(1, round(auto.target))}}}
    else:
        name = {"in_flight": "http_requests_in_flight",
                "rps": "http_requests_per_second"}[auto.metric]
        metric = {"type": "Pods", "pods": {
            "metric": {"name": name},
            "target": {"type": "AverageValue", "averageValue": _quantity(auto.target)}}}
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(workload.name, labels(system, workload.name, "service")),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": workload.name},
            "minReplicas": auto.min, "maxReplicas": auto.max, "metrics": [metric],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                            "policies": [{"type": "Pods", "value": auto.max_scale_up_step,
                                          "periodSeconds": 15}]},
                "scaleDown": {"stabilizationWindowSeconds": round(auto.scale_down_stabilization),
                              "selectPolicy": "Max",
                              "policies": [{"type": "Percent", "value": 100,
                                            "periodSeconds": 15}]},
            },
        },
    }


def _pdb(workload: Workload, system: str) -> dict[str, Any]:
    # maxUnavailable, not minAvailable: a one-replica service must not block node drains.
    component = "gateway" if workload.is_gateway else "service"
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(workload.name, labels(system, workload.name, component)),
            "spec": {"maxUnavailable": 1,
                     "selector": {"matchLabels": selector(system, workload.name)}}}


def _network_policy(workload: Workload, system: str,
                    callers: list[str], by_name: dict[str, Workload]) -> dict[str, Any]:
    """Who may reach ``workload`` (callers, Prometheus; the ingress controller for the gateway)
    and what it may reach (its dependencies, its database)."""
    component = "gateway" if workload.is_gateway else "service"
    port = [{"protocol": "TCP", "port": workload.port}]
    sources: list[dict[str, Any]] = [{"podSelector": {"matchLabels": selector(system, c)}}
                                     for c in callers]
    if workload.is_gateway:
        sources.append({"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": INGRESS_NAMESPACE}}})
    ingress = [{"from": sources, "ports": port}] if sources else []
    ingress.append({"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": MONITORING_NAMESPACE}}}], "ports": port})
    egress = [{"to": [{"podSelector": {"matchLabels": selector(system, dep)}}],
               "ports": [{"protocol": "TCP", "port": by_name[dep].port}]}
              for dep in workload.depends_on]
    if workload.database:
        egress.append({"to": [{"podSelector": {"matchLabels": selector(system, "postgres")}}],
                       "ports": [{"protocol": "TCP", "port": POSTGRES_PORT}]})
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(workload.name, labels(system, workload.name, component)),
        "spec": {"podSelector": {"matchLabels": selector(system, workload.name)},
                 "policyTypes": ["Ingress", "Egress"], "ingress": ingress, "egress": egress},
    }


def _common_policies(system: str) -> list[dict[str, Any]]:
    lbls = {"app.kubernetes.io/part-of": system, "app.kubernetes.io/managed-by": "shoal"}
    dns_port = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    return [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": _meta("default-deny", lbls),
         "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": _meta("allow-cluster-dns", lbls),
         "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
             "to": [{"namespaceSelector": {"matchLabels": {
                 "kubernetes.io/metadata.name": "kube-system"}},
                     "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
             "ports": dns_port}]}},
    ]


def _ingress(workload: Workload, system: str, host: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": _meta(workload.name, labels(system, workload.name, "gateway")),
        "spec": {
            "ingressClassName": "nginx",
            "rules": [{"host": host, "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": workload.name,
                                        "port": {"name": "http"}}}}]}}],
        },
    }


def workload_docs(spec: Spec, workload: Workload, workloads: list[Workload],
                  gateway_spec: str) -> list[dict[str, Any]]:
    """Every base object of ``workload``."""
    system = spec.system
    component = "gateway" if workload.is_gateway else "service"
    lbls = labels(system, workload.name, component)
    env = base_env(workload, discovery=DISCOVERY, drain_delay=0)
    config = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": _meta(f"{workload.name}-env", lbls), "data": env}
    parts = [f"{k}={v}" for k, v in env.items()]
    docs: list[dict[str, Any]] = [config]
    if workload.is_gateway:
        docs.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": _meta("gateway-spec", lbls),
                     "data": {"shoal.yaml": gateway_spec}})
        parts.append(gateway_spec)
    by_name = {w.name: w for w in workloads}
    callers = sorted({w.name for w in workloads if workload.name in w.depends_on})
    docs.append(_deployment(workload, system, digest(*parts)))
    docs.extend(_services(workload, system))
    docs.append(_pdb(workload, system))
    if workload.autoscale is not None:
        docs.append(hpa(workload, system, workload.autoscale))
    docs.append(_network_policy(workload, system, callers, by_name))
    if workload.is_gateway:
        docs.append(_ingress(workload, system, f"{system}.example.com"))
    return docs


def _dev_postgres(system: str, workloads: list[Workload], header: str) -> dict[str, str]:
    """A throwaway in-cluster PostgreSQL for the dev overlay (prod uses a managed one)."""
    lbls = labels(system, "postgres", "database")
    sql = "\n".join(
        f"CREATE ROLE \"{w.name}\" LOGIN PASSWORD '{w.name}-dev';\n"
        f"CREATE DATABASE \"{w.database}\" OWNER \"{w.name}\";\n"
        f"REVOKE CONNECT ON DATABASE \"{w.database}\" FROM PUBLIC;"
        for w in workloads if w.database) + "\n"
    clients = [w.name for w in workloads if w.database]
    port = [{"name": "postgres", "containerPort": POSTGRES_PORT, "protocol": "TCP"}]
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("postgres-init", lbls),
         "data": {"10-databases.sql": sql}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("postgres", lbls),
         "spec": {
             "replicas": 1, "strategy": {"type": "Recreate"},
             "selector": {"matchLabels": selector(system, "postgres")},
             "template": {"metadata": {"labels": lbls}, "spec": {
                 "automountServiceAccountToken": False,
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 70, "runAsGroup": 70,
                                     "fsGroup": 70,
                                     "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{
                     "name": "postgres", "image": POSTGRES_IMAGE, "ports": port,
                     "envFrom": [{"secretRef": {"name": "postgres-admin"}}],
                     "env": [{"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}],
                     "readinessProbe": {"exec": {"command": [
                         "pg_isready", "-h", "127.0.0.1", "-U", "postgres"]},
                         "periodSeconds": 2},
                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                   "limits": {"memory": "512Mi"}},
                     "securityContext": {"allowPrivilegeEscalation": False,
                                         "capabilities": {"drop": ["ALL"]}},
                     "volumeMounts": [
                         {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                         {"name": "run", "mountPath": "/var/run/postgresql"},
                         {"name": "init", "mountPath": "/docker-entrypoint-initdb.d",
                          "readOnly": True}],
                 }],
                 "volumes": [{"name": "data", "emptyDir": {}}, {"name": "run", "emptyDir": {}},
                             {"name": "init", "configMap": {"name": "postgres-init"}}],
             }}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta("postgres", lbls),
         "spec": {"selector": selector(system, "postgres"), "ports": [
             {"name": "postgres", "port": POSTGRES_PORT, "targetPort": "postgres",
              "protocol": "TCP"}]}},
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
         "metadata": _meta("postgres", lbls),
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(system, "postgres")}}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": _meta("postgres", lbls),
         "spec": {"podSelector": {"matchLabels": selector(system, "postgres")},
                  "policyTypes": ["Ingress", "Egress"],
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {
                      "app.kubernetes.io/part-of": system}, "matchExpressions": [{
                          "key": "app.kubernetes.io/name", "operator": "In",
                          "values": clients}]}}],
                      "ports": [{"protocol": "TCP", "port": POSTGRES_PORT}]}],
                  "egress": []}},
    ]
    return {"k8s/overlays/dev/postgres.yaml": dump_yaml(docs, header)}


def _namespace(name: str, header: str) -> str:
    return dump_yaml([{"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": name, "labels": RESTRICTED}}], header)


def _ingress_patch(name: str, host: str, header: str, *, tls: bool) -> str:
    spec: dict[str, Any] = {"rules": [{"host": host, "http": {"paths": [{
        "path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": name, "port": {"name": "http"}}}}]}}]}
    if tls:
        spec["tls"] = [{"hosts": [host], "secretName": f"{name}-tls"}]
    return dump_yaml([{"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                       "metadata": {"name": name}, "spec": spec}], header)


def _overlays(spec: Spec, workloads: list[Workload], header: str) -> dict[str, str]:
    system = spec.system
    files: dict[str, str] = {}
    gateway = next((w for w in workloads if w.is_gateway), None)
    for env_name, namespace, registry, tag in (
            ("dev", f"{system}-dev", "", "dev"),
            ("prod", system, "registry.example.com/", "latest")):
        kust: dict[str, Any] = {
            **KUSTOMIZATION,
            "namespace": namespace,
            # ``bases`` is what kubectl 1.20's kustomize knows; current ones still accept it.
            "bases": ["../../base"],
            "resources": ["namespace.yaml"],
            "commonAnnotations": {"shoal.dev/environment": env_name},
            "images": [{"name": w.image(system), "newName": f"{registry}{w.image(system)}",
                        "newTag": tag} for w in workloads],
        }
        files[f"k8s/overlays/{env_name}/namespace.yaml"] = _namespace(namespace, header)
        if gateway is not None:
            host = f"{system}.localtest.me" if env_name == "dev" else f"{system}.example.com"
            kust["patchesStrategicMerge"] = ["ingress.yaml"]
            files[f"k8s/overlays/{env_name}/ingress.yaml"] = _ingress_patch(
                gateway.name, host, header, tls=env_name == "prod")
        if env_name == "dev" and any(w.database for w in workloads):
            kust["resources"].append("postgres.yaml")
            kust["secretGenerator"] = [
                {"name": "postgres-admin", "literals": ["POSTGRES_PASSWORD=postgres-dev"]},
                *({"name": f"{w.name}-database", "literals": [
                    f"DATABASE_URL=postgresql://{w.name}:{w.name}-dev@postgres:"
                    f"{POSTGRES_PORT}/{w.database}"]} for w in workloads if w.database),
            ]
            files.update(_dev_postgres(system, workloads, header))
        files[f"k8s/overlays/{env_name}/kustomization.yaml"] = dump_yaml([kust], header)
    return files


def render(spec: Spec, workloads: list[Workload], header: str,
           gateway_spec: str) -> dict[str, str]:
    """``k8s/base``, ``k8s/overlays/{dev,prod}``."""
    files: dict[str, str] = {}
    resources = []
    for workload in workloads:
        path = f"{workload.name}.yaml"
        files[f"k8s/base/{path}"] = dump_yaml(
            workload_docs(spec, workload, workloads, gateway_spec), header)
        resources.append(path)
    files["k8s/base/network-policies.yaml"] = dump_yaml(_common_policies(spec.system), header)
    resources.append("network-policies.yaml")
    files["k8s/base/kustomization.yaml"] = dump_yaml(
        [{**KUSTOMIZATION, "resources": resources}], header)
    files.update(_overlays(spec, workloads, header))
    return files
