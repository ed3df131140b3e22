"""Cluster-side observability for the Kubernetes target, each its own Kustomize directory.

``k8s/monitoring``: Prometheus' scrape configuration (pod discovery of the system's pods by
label and ``prometheus.io/*`` annotations) and the prometheus-adapter rules behind the HPA's
custom metrics. ``k8s/logging``: a Fluent Bit DaemonSet that tails the containers' JSON lines,
enriches them with pod metadata and ships them to Loki (default) or Elasticsearch.
"""

from __future__ import annotations

from typing import Any

from shoal.platform.deploy._common import dump_yaml
from shoal.platform.deploy._k8s import KUSTOMIZATION, MONITORING_NAMESPACE

LOGGING_NAMESPACE = "logging"
FLUENT_BIT_IMAGE = "fluent/fluent-bit:3.1.9"
LOKI_LABELS = ("job=fluent-bit, namespace=$kubernetes['namespace_name'], "
               "service=$kubernetes['labels']['app.kubernetes.io/name']")


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "shoal"}


def _scrape_config(system: str, header: str) -> str:
    part_of = "__meta_kubernetes_pod_label_app_kubernetes_io_part_of"
    job = {
        "job_name": f"{system}-pods",
        "scrape_interval": "5s",
        "kubernetes_sd_configs": [{"role": "pod"}],
        "relabel_configs": [
            {"source_labels": [part_of], "regex": system, "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
             "regex": "true", "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
             "regex": "(.+)", "target_label": "__metrics_path__"},
            {"source_labels": ["__address__",
                               "__meta_kubernetes_pod_annotation_prometheus_io_port"],
             "regex": "([^:]+)(?::\\d+)?;(\\d+)", "replacement": "$1:$2",
             "target_label": "__address__"},
            {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
             "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    }
    return dump_yaml([{"scrape_configs": [job]}], header)


def _adapter_rules(header: str) -> str:
    """prometheus-adapter rules: the HPA's ``http_requests_in_flight`` and
    ``http_requests_per_second`` pod metrics."""
    resources = {"overrides": {"namespace": {"resource": "namespace"},
                               "pod": {"resource": "pod"}}}
    rules = {"rules": [
        {"seriesQuery": 'http_requests_in_flight{namespace!="",pod!=""}',
         "resources": resources,
         "name": {"matches": "^http_requests_in_flight$", "as": "http_requests_in_flight"},
         "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)"},
        {"seriesQuery": 'http_requests_total{namespace!="",pod!=""}',
         "resources": resources,
         "name": {"matches": "^http_requests_total$", "as": "http_requests_per_second"},
         "metricsQuery": "sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m])) by (<<.GroupBy>>)"},
    ]}
    return dump_yaml([rules], header)


def monitoring(system: str, header: str) -> dict[str, str]:
    docs = [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": f"{system}-scrape-config", "labels": _labels("prometheus")},
         "data": {f"{system}.yml": _scrape_config(system, header)}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": f"{system}-adapter-rules", "labels": _labels("prometheus-adapter")},
         "data": {"config.yaml": _adapter_rules(header)}},
    ]
    return {
        "k8s/monitoring/kustomization.yaml": dump_yaml([{
            **KUSTOMIZATION, "namespace": MONITORING_NAMESPACE,
            "resources": ["config.yaml"]}], header),
        "k8s/monitoring/config.yaml": dump_yaml(docs, header),
    }


def _fluent_bit_conf(system: str) -> dict[str, str]:
    service = """\
[SERVICE]
    Flush             2
    Log_Level         info
    Parsers_File      /fluent-bit/etc/parsers.conf
    HTTP_Server       On
    HTTP_Listen       0.0.0.0
    HTTP_Port         2020
    Health_Check      On
    storage.path      /var/fluent-bit/state/chunks

[INPUT]
    Name              tail
    Tag               kube.*
    Path              /var/log/containers/*.log
    Exclude_Path      /var/log/containers/*_kube-system_*.log,/var/log/containers/*_logging_*.log
    multiline.parser  cri, docker
    DB                /var/fluent-bit/state/tail.db
    Mem_Buf_Limit     32MB
    Skip_Long_Lines   On
    Refresh_Interval  5
    storage.type      filesystem

[FILTER]
    Name              kubernetes
    Match             kube.*
    Merge_Log         On
    Keep_Log          Off
    Labels            On
    Annotations       Off
    K8S-Logging.Exclude On

# Only the system's pods; each line is the chassis' JSON object, merged into the record.
[FILTER]
    Name              grep
    Match             kube.*
    Regex             $kubernetes['labels']['app.kubernetes.io/part-of'] ^SYSTEM$

@INCLUDE output-loki.conf
""".replace("SYSTEM", system)
    loki = """\
# The default log store. For Elasticsearch, include output-elasticsearch.conf instead.
[OUTPUT]
    Name              loki
    Match             kube.*
    Host              loki.logging.svc
    Port              3100
    Line_Format       json
    Labels            LABELS
    Remove_Keys       kubernetes,stream
""".replace("LABELS", LOKI_LABELS)
    elasticsearch = """\
[OUTPUT]
    Name               es
    Match              kube.*
    Host               elasticsearch.logging.svc
    Port               9200
    Logstash_Format    On
    Logstash_Prefix    SYSTEM
    Replace_Dots       On
    Suppress_Type_Name On
    Retry_Limit        False
""".replace("SYSTEM", system)
    parsers = """\
[PARSER]
    Name        json
    Format      json
    Time_Key    ts
    Time_Keep   On
"""
    return {"fluent-bit.conf": service, "output-loki.conf": loki,
            "output-elasticsearch.conf": elasticsearch, "parsers.conf": parsers}


def logging(system: str, header: str) -> dict[str, str]:
    lbls = _labels("fluent-bit")
    config = _fluent_bit_conf(system)
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LOGGING_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "fluent-bit", "labels": lbls}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "fluent-bit-read", "labels": lbls},
         "rules": [{"apiGroups": [""], "resources": ["namespaces", "pods"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "fluent-bit-read", "labels": lbls},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "fluent-bit-read"},
         "subjects": [{"kind": "ServiceAccount", "name": "fluent-bit",
                       "namespace": LOGGING_NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": "fluent-bit-config", "labels": lbls}, "data": config},
        {"apiVersion": "apps/v1", "kind": "DaemonSet",
         "metadata": {"name": "fluent-bit", "labels": lbls},
         "spec": {
             "selector": {"matchLabels": {"app.kubernetes.io/name": "fluent-bit"}},
             "updateStrategy": {"type": "RollingUpdate"},
             "template": {"metadata": {"labels": lbls}, "spec": {
                 "serviceAccountName": "fluent-bit",
                 "tolerations": [{"operator": "Exists"}],
                 "containers": [{
                     "name": "fluent-bit", "image": FLUENT_BIT_IMAGE,
                     "args": ["--config=/fluent-bit/etc/fluent-bit.conf"],
                     "ports": [{"name": "http", "containerPort": 2020, "protocol": "TCP"}],
                     "livenessProbe": {"httpGet": {"path": "/", "port": "http"}},
                     "readinessProbe": {"httpGet": {"path": "/api/v1/health",
                                                    "port": "http"}},
                     "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                   "limits": {"memory": "256Mi"}},
                     "securityContext": {"readOnlyRootFilesystem": True,
                                         "allowPrivilegeEscalation": False},
                     "volumeMounts": [
                         {"name": "config", "mountPath": "/fluent-bit/etc", "readOnly": True},
                         {"name": "varlog", "mountPath": "/var/log", "readOnly": True},
                         {"name": "state", "mountPath": "/var/fluent-bit/state"}],
                 }],
                 "volumes": [
                     {"name": "config", "configMap": {"name": "fluent-bit-config"}},
                     {"name": "varlog", "hostPath": {"path": "/var/log"}},
                     {"name": "state", "hostPath": {"path": "/var/lib/fluent-bit",
                                                    "type": "DirectoryOrCreate"}}],
             }},
         }},
    ]
    return {
        "k8s/logging/kustomization.yaml": dump_yaml([{
            **KUSTOMIZATION, "namespace": LOGGING_NAMESPACE,
            "resources": ["fluent-bit.yaml"]}], header),
        "k8s/logging/fluent-bit.yaml": dump_yaml(docs, header),
    }


def render(system: str, header: str) -> dict[str, str]:
    return {**monitoring(system, header), **logging(system, header)}
