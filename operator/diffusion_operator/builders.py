"""Pure builders: InferencePool + DiffusionModel specs -> Kubernetes manifests.

No API calls and no clock: every function maps typed specs to a dict that ``kube.apply``
server-side-applies as is. Children are named from the pool and revision hash, carry the
``pool``/``revision`` labels the sampler's metrics and the rollout analysis rely on, and have
an ownerReference to the pool so deleting the pool removes them.
"""

from __future__ import annotations

import math
from typing import Any

from . import API_GROUP, API_VERSION
from .settings import DEFAULT_SAMPLER_IMAGE
from .spec import ModelSpec, PoolSpec

SAMPLER_PORT = 8000
SAMPLER_UID = 10001
MODEL_MOUNT = "/models"
LABEL_POOL = f"{API_GROUP}/pool"
LABEL_REVISION = f"{API_GROUP}/revision"
LABEL_ROLE = f"{API_GROUP}/role"
MANAGED_BY = {"app.kubernetes.io/managed-by": "diffusion-operator"}
STARTUP_BUDGET_SECONDS = 1800  # model download + load + warm-up before liveness applies


def owner_reference(pool: dict) -> dict:
    return {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "InferencePool", "name": pool["metadata"]["name"],
            "uid": pool["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def revision_name(pool_name: str, revision: str) -> str:
    return f"{pool_name[:52]}-{revision}"


def pool_labels(pool_name: str) -> dict:
    return {"app.kubernetes.io/name": "diffusion-sampler", "app.kubernetes.io/instance": pool_name,
            LABEL_POOL: pool_name, **MANAGED_BY}


def revision_labels(pool_name: str, revision: str) -> dict:
    return {**pool_labels(pool_name), LABEL_REVISION: revision}


def _meta(pool: dict, name: str, labels: dict, annotations: dict | None = None) -> dict:
    m = {"name": name, "namespace": pool["metadata"]["namespace"], "labels": labels,
         "ownerReferences": [owner_reference(pool)]}
    if annotations:
        m["annotations"] = annotations
    return m


# --- the sampler pod -----------------------------------------------------------------------

def sampler_env(pool_name: str, revision: str, pool: PoolSpec, model: ModelSpec, model_dir: str) -> list[dict]:
    env = {
        "SAMPLER_HOST": "0.0.0.0",  # inside the pod; the NetworkPolicy limits who reaches it
        "SAMPLER_PORT": str(SAMPLER_PORT),
        "SAMPLER_MODEL_DIR": model_dir,
        "SAMPLER_MODEL_NAME": model.name,
        "SAMPLER_POOL": pool_name,
        "SAMPLER_REVISION": revision,
        "SAMPLER_PIPELINE_KIND": model.pipeline,
        "SAMPLER_DTYPE": model.precision,
        "SAMPLER_DEFAULT_SCHEDULER": model.scheduler,
        "SAMPLER_DEFAULT_STEPS": str(model.steps),
        "SAMPLER_DEFAULT_GUIDANCE_SCALE": str(model.guidance_scale),
        "SAMPLER_DEFAULT_WIDTH": str(model.width),
        "SAMPLER_DEFAULT_HEIGHT": str(model.height),
        "SAMPLER_MAX_STEPS": str(model.max_steps),
        "SAMPLER_MAX_WIDTH": str(model.max_width),
        "SAMPLER_MAX_HEIGHT": str(model.max_height),
        "SAMPLER_MAX_IMAGES": str(model.max_images),
        "SAMPLER_MAX_PROMPT_LENGTH": str(model.max_prompt_length),
        "SAMPLER_MAX_BODY_BYTES": str(model.max_request_bytes),
        "SAMPLER_MAX_BATCH_SIZE": str(pool.max_batch_size),
        "SAMPLER_MAX_WAIT_MS": str(pool.max_wait_ms),
        "SAMPLER_MAX_QUEUE": str(pool.max_queue),
        "SAMPLER_REQUEST_TIMEOUT_S": str(pool.request_timeout),
        "SAMPLER_DRAIN_TIMEOUT_S": str(pool.drain_timeout),
        "SAMPLER_SAFETY_CHECKER": model.safety_checker,
        "SAMPLER_SAFETY_BLOCKLIST": ",".join(model.blocklist),
        "SAMPLER_SAFETY_REPLACEMENT": model.replacement,
        "SAMPLER_WARMUP": "1" if pool.warmup else "0",
        "SAMPLER_COMPILE": "1" if pool.compile_enabled else "0",
        "SAMPLER_LOG_LEVEL": pool.log_level,
        "HF_HUB_OFFLINE": "1",
        "HOME": "/tmp",
    }
    if pool.compile_buckets:
        env["SAMPLER_COMPILE_BUCKETS"] = ";".join(
            f"{b.width}x{b.height}:{','.join(str(s) for s in b.batch_sizes)}" for b in pool.compile_buckets)
    if pool.latency_threshold:
        env["SAMPLER_SLO_LATENCY_THRESHOLDS_S"] = repr(pool.latency_threshold)
    # spec.faultInjection (tests and demos only: models.check_references refuses it unless the
    # operator runs with --allow-fault-injection); absent, not zero, when off.
    if model.fault_error_rate:
        env["SAMPLER_FAULT_ERROR_RATE"] = repr(model.fault_error_rate)
    if model.fault_latency_s:
        env["SAMPLER_FAULT_LATENCY_S"] = repr(model.fault_latency_s)
    if model.fault_image:
        env["SAMPLER_FAULT_IMAGE"] = model.fault_image
    return [{"name": k, "value": v} for k, v in env.items()]


def _model_volumes(pool: PoolSpec, model: ModelSpec, image: str) -> tuple[list[dict], list[dict], str]:
    """Volumes, init containers and the model directory inside the sampler container."""
    src = model.source
    if src.scheme == "pvc":
        vols = [{"name": "model", "persistentVolumeClaim": {"claimName": src.pvc_claim, "readOnly": True}}]
        return vols, [], f"{MODEL_MOUNT}/{src.pvc_subpath}".rstrip("/")
    if src.scheme == "file":
        vols = [{"name": "model", "hostPath": {"path": src.local_path, "type": "Directory"}}]
        return vols, [], MODEL_MOUNT
    # hf:// and s3://: an init container downloads into a cache volume the sampler mounts read-only.
    vols = [{"name": "model", "emptyDir": {"sizeLimit": pool.cache_size_limit}}]
    env: list[dict[str, Any]] = [
        {"name": "MODEL_SOURCE", "value": src.uri},
        {"name": "MODEL_DEST", "value": MODEL_MOUNT},
        {"name": "HOME", "value": "/tmp"},
    ]
    if src.revision:
        env.append({"name": "MODEL_REVISION", "value": src.revision})
    if src.token_secret:
        env.append({"name": "HF_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": src.token_secret, "key": src.token_key}}})
    env_from = []
    if src.credentials_secret:
        env_from.append({"secretRef": {"name": src.credentials_secret}})
    if src.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": src.endpoint})
    if src.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": src.region})
    init = {
        "name": "fetch-model",
        "image": pool.downloader_image or image,
        "command": ["python", "-m", "diffusion_sampler.fetch"],
        "env": env,
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _container_security(),
        # the download's last log lines become the status message when it fails
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from:
        init["envFrom"] = env_from
    return vols, [init], MODEL_MOUNT


def _container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _probe(path: str, period: int, failures: int, timeout: int = 3) -> dict:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": timeout}


def deployment(pool_obj: dict, pool: PoolSpec, model: ModelSpec, revision: str, replicas: int | None,
               image: str | None = None) -> dict:
    """The sampler Deployment of one revision (model snapshot + image). ``replicas=None`` leaves
    the count alone."""
    name = pool_obj["metadata"]["name"]
    labels = revision_labels(name, revision)
    image = image or pool.image or DEFAULT_SAMPLER_IMAGE
    vols, init, model_dir = _model_volumes(pool, model, image)
    vols = vols + [{"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}]
    limits = {pool.gpu.resource: str(pool.gpu.count)}
    requests: dict = {}
    limits.update({k: str(v) for k, v in (pool.resources.get("limits") or {}).items()})
    requests.update({k: str(v) for k, v in (pool.resources.get("requests") or {}).items()})
    container = {
        "name": "sampler",
        "image": image,
        "ports": [{"name": "http", "containerPort": SAMPLER_PORT, "protocol": "TCP"}],
        "env": sampler_env(name, revision, pool, model, model_dir),
        "resources": {"limits": limits, **({"requests": requests} if requests else {})},
        "readinessProbe": _probe("/readyz", 5, 3),
        "livenessProbe": _probe("/healthz", 10, 3),
        "startupProbe": _probe("/readyz", 10, math.ceil(STARTUP_BUDGET_SECONDS / 10)),
        "volumeMounts": [{"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if pool.image_pull_policy:
        container["imagePullPolicy"] = pool.image_pull_policy
    gpu_toleration = {"key": pool.gpu.resource, "operator": "Exists", "effect": "NoSchedule"}
    tolerations = [gpu_toleration] + [t for t in pool.gpu.tolerations if t != gpu_toleration]
    node_selector = dict(pool.node_selector)
    affinity = None
    if len(pool.gpu.products) == 1:
        node_selector[pool.gpu.product_label] = pool.gpu.products[0]
    elif pool.gpu.products:
        affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": pool.gpu.product_label, "operator": "In",
                                   "values": list(pool.gpu.products)}]}]}}}
    pod_spec = {
        "containers": [container],
        "volumes": vols,
        "tolerations": tolerations,
        # longer than the sampler's drain, so SIGKILL never cuts an accepted request short
        "terminationGracePeriodSeconds": pool.drain_timeout + 15,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        # the sampler image's own user (inference_image/Dockerfile: uid and gid 10001)
        "securityContext": {"runAsNonRoot": True, "runAsUser": SAMPLER_UID, "runAsGroup": SAMPLER_UID,
                            "fsGroup": SAMPLER_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {LABEL_POOL: name}}}],
    }
    if init:
        pod_spec["initContainers"] = init
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if affinity:
        pod_spec["affinity"] = affinity
    if pool.gpu.runtime_class:
        pod_spec["runtimeClassName"] = pool.gpu.runtime_class
    if pool.priority_class:
        pod_spec["priorityClassName"] = pool.priority_class
    if pool.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in pool.image_pull_secrets]
    spec = {
        "selector": {"matchLabels": {LABEL_POOL: name, LABEL_REVISION: revision}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": STARTUP_BUDGET_SECONDS + 300,
        "template": {
            "metadata": {"labels": {**pool.pod_labels, **labels},
                         **({"annotations": pool.pod_annotations} if pool.pod_annotations else {})},
            "spec": pod_spec,
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _meta(pool_obj, revision_name(name, revision), labels,
                              {f"{API_GROUP}/model": model.name}),
            "spec": spec}


# --- services and traffic ------------------------------------------------------------------

def _service(pool_obj: dict, name: str, labels: dict, selector: dict, port: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(pool_obj, name, labels),
            "spec": {"type": "ClusterIP", "selector": selector,
                     "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]}}


def revision_service(pool_obj: dict, pool: PoolSpec, revision: str) -> dict:
    name = pool_obj["metadata"]["name"]
    return _service(pool_obj, revision_name(name, revision), revision_labels(name, revision),
                    {LABEL_POOL: name, LABEL_REVISION: revision}, pool.service_port)


def pool_service(pool_obj: dict, pool: PoolSpec) -> dict:
    """One Service for the whole pool. With the ``service`` provider it is the entry point and
    selects every ready revision, so traffic follows replica counts."""
    name = pool_obj["metadata"]["name"]
    return _service(pool_obj, name, pool_labels(name), {LABEL_POOL: name}, pool.service_port)


def httproute(pool_obj: dict, pool: PoolSpec, weights: dict[str, int]) -> dict:
    """Gateway API HTTPRoute splitting traffic across revision Services by weight."""
    name = pool_obj["metadata"]["name"]
    backends = [{"group": "", "kind": "Service", "name": revision_name(name, rev), "port": pool.service_port,
                 "weight": w} for rev, w in sorted(weights.items())]
    spec: dict = {"rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}]}
    if pool.parent_refs:
        spec["parentRefs"] = [dict(p) for p in pool.parent_refs]
    if pool.hostnames:
        spec["hostnames"] = list(pool.hostnames)
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": _meta(pool_obj, name, pool_labels(name)), "spec": spec}


# --- autoscaling, disruption, network, monitoring ------------------------------------------

QUEUE_DEPTH_METRIC = "diffusion_sampler_queue_depth"


def hpa(pool_obj: dict, pool: PoolSpec) -> dict:
    """HPA on the InferencePool itself, through its scale subresource (so ``kubectl scale`` and
    the HPA move the same field, spec.replicas), on queue depth per pod. The Pods metric is
    served by a custom-metrics adapter such as prometheus-adapter (see docs/operations.md)."""
    name = pool_obj["metadata"]["name"]
    a = pool.autoscaling
    assert a is not None
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(pool_obj, name, pool_labels(name)),
        "spec": {
            "scaleTargetRef": {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "InferencePool", "name": name},
            "minReplicas": a.min_replicas, "maxReplicas": a.max_replicas,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": QUEUE_DEPTH_METRIC},
                                                  "target": {"type": "AverageValue",
                                                             "averageValue": str(a.target_queue_depth)}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": a.scale_down_stabilization}},
        },
    }


def pdb(pool_obj: dict) -> dict:
    name = pool_obj["metadata"]["name"]
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(pool_obj, name, pool_labels(name)),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {LABEL_POOL: name}},
                     "unhealthyPodEvictionPolicy": "AlwaysAllow"}}


def network_policy(pool_obj: dict) -> dict:
    """Admit traffic to the sampler pods on the sampler port only (from anywhere in-cluster);
    everything else inbound is denied."""
    name = pool_obj["metadata"]["name"]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(pool_obj, name, pool_labels(name)),
            "spec": {"podSelector": {"matchLabels": {LABEL_POOL: name}}, "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"protocol": "TCP", "port": SAMPLER_PORT}]}]}}


def monitor(pool_obj: dict, pool: PoolSpec) -> dict:
    """PodMonitor (default) or ServiceMonitor scraping /metrics of every revision's pods.

    ``honorLabels``: the Prometheus Operator labels every target with ``endpoint`` (the port
    name), which would rename the sampler's own ``endpoint`` label (generate, generations, ...)
    to ``exported_endpoint`` and leave the analysis queries with no requests at all. The sampler
    sets no other target label (namespace, pod, container, job), so honouring its labels
    overrides nothing else."""
    name = pool_obj["metadata"]["name"]
    labels = {**pool_labels(name), **pool.monitoring_labels}
    endpoint = {"port": "http", "path": "/metrics", "interval": f"{pool.scrape_interval}s", "honorLabels": True}
    selector: dict[str, Any] = {"matchLabels": {LABEL_POOL: name}}
    if pool.monitoring_kind == "ServiceMonitor":
        # Only revision Services carry the revision label; the pool Service would double-count.
        selector = {"matchLabels": {LABEL_POOL: name},
                    "matchExpressions": [{"key": LABEL_REVISION, "operator": "Exists"}]}
        spec = {"selector": selector, "endpoints": [endpoint]}
    else:
        spec = {"selector": selector, "podMetricsEndpoints": [endpoint]}
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": pool.monitoring_kind,
            "metadata": _meta(pool_obj, name, labels), "spec": spec}


def controller_revision(pool_obj: dict, revision: str, number: int, model: ModelSpec, image: str) -> dict:
    """A snapshot of the model spec that defines ``revision`` (apps/v1 ControllerRevision, as
    StatefulSets keep theirs), so the stable Deployment keeps its weights while the
    DiffusionModel already describes the canary."""
    name = pool_obj["metadata"]["name"]
    return {"apiVersion": "apps/v1", "kind": "ControllerRevision",
            "metadata": _meta(pool_obj, revision_name(name, revision), revision_labels(name, revision)),
            "data": {"model": model.to_snapshot(), "image": image}, "revision": number}
