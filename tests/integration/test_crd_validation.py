"""The CRDs against the real API server: invalid resources are rejected with a message that
names the field, every example applies, and the status and scale subresources behave.

Uses the session ``cluster`` fixture (CRDs from crds/ installed) and a fresh ``namespace`` per
test. The kind is always written fully qualified (``inferencepools.diffusion.serving.dev``)
because the Gateway API Inference Extension ships another InferencePool.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
GROUP = "diffusion.serving.dev"
API = f"{GROUP}/v1alpha1"
POOLS = f"inferencepools.{GROUP}"
MODELS = f"diffusionmodels.{GROUP}"

MODEL = {"apiVersion": API, "kind": "DiffusionModel", "metadata": {"name": "m"},
         "spec": {"source": {"uri": "pvc://models/sd"}}}
POOL = {"apiVersion": API, "kind": "InferencePool", "metadata": {"name": "p"},
        "spec": {"modelRef": {"name": "m"}}}


def with_spec(base: dict, **changes) -> dict:
    """A copy of ``base`` with spec paths set: ``with_spec(POOL, **{"batching.maxBatchSize": 0})``."""
    doc = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = doc["spec"]
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return doc


def apply(cluster, namespace: str, doc: dict, check: bool = False):
    return cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc), check=check)


# (id, manifest, substrings that must all appear in the API server's answer)
INVALID = [
    ("model-unknown-scheme",
     with_spec(MODEL, **{"source.uri": "gs://bucket/sd"}),
     ["spec.source.uri", "unknown scheme"]),
    ("model-malformed-pvc-uri",
     with_spec(MODEL, **{"source.uri": "pvc://Bad_Claim"}),
     ["spec.source.uri", "pvc://CLAIM"]),
    ("model-hf-without-revision",
     with_spec(MODEL, **{"source.uri": "hf://stabilityai/sd-turbo"}),
     ["spec.source.revision", "required for hf://"]),
    ("model-token-secret-on-pvc",
     with_spec(MODEL, **{"source.tokenSecretRef": {"name": "t"}}),
     ["spec.source.tokenSecretRef", "only valid for hf://"]),
    ("model-credentials-on-hf",
     with_spec(MODEL, **{"source.uri": "hf://org/name", "source.revision": "main",
                         "source.credentialsSecretRef": {"name": "c"}}),
     ["spec.source.credentialsSecretRef", "only valid for s3://"]),
    ("model-unknown-scheduler",
     with_spec(MODEL, **{"defaults.scheduler": "k-diffusion-magic"}),
     ["spec.defaults.scheduler", "Unsupported value"]),
    ("model-unknown-precision",
     with_spec(MODEL, precision="fp8"),
     ["spec.precision", "Unsupported value"]),
    ("model-width-not-multiple-of-8",
     with_spec(MODEL, **{"limits.maxWidth": 1020}),
     ["spec.limits.maxWidth", "multiple of 8"]),
    ("model-default-steps-above-limit",
     with_spec(MODEL, **{"defaults.steps": 80, "limits.maxSteps": 50}),
     ["spec.defaults.steps", "limits.maxSteps"]),
    ("model-default-width-above-limit",
     with_spec(MODEL, **{"defaults.width": 1024, "limits.maxWidth": 512}),
     ["spec.defaults.width", "limits.maxWidth"]),
    ("model-blocklist-term-with-comma",
     with_spec(MODEL, **{"safety.blocklist": ["a,b"]}),
     ["spec.safety.blocklist[0]"]),
    ("model-zero-images",
     with_spec(MODEL, **{"limits.maxImagesPerRequest": 0}),
     ["spec.limits.maxImagesPerRequest"]),
    ("model-fault-error-rate-above-one",
     with_spec(MODEL, **{"faultInjection.errorRate": 1.5}),
     ["spec.faultInjection.errorRate", "less than or equal to 1"]),
    ("model-fault-negative-latency",
     with_spec(MODEL, **{"faultInjection.latencySeconds": -1}),
     ["spec.faultInjection.latencySeconds", "greater than or equal to 0"]),
    ("model-fault-latency-above-60",
     with_spec(MODEL, **{"faultInjection.latencySeconds": 61}),
     ["spec.faultInjection.latencySeconds", "less than or equal to 60"]),
    ("model-fault-injection-empty",
     with_spec(MODEL, faultInjection={}),
     ["spec.faultInjection", "needs errorRate, latencySeconds or image"]),
    ("model-fault-image-unknown",
     with_spec(MODEL, **{"faultInjection.image": "garbage"}),
     ["spec.faultInjection.image", "Unsupported value"]),
    ("model-golden-renders-without-prompts",
     with_spec(MODEL, goldenRenders={"prompts": []}),
     ["spec.goldenRenders.prompts", "at least 1 items"]),
    ("model-golden-render-without-seed",
     with_spec(MODEL, goldenRenders={"prompts": [{"prompt": "a bird"}]}),
     ["spec.goldenRenders.prompts[0].seed", "Required value"]),
    ("model-golden-renders-steps-above-limit",
     with_spec(MODEL, goldenRenders={"prompts": [{"prompt": "a bird", "seed": 1}], "steps": 200}),
     ["spec.goldenRenders.steps", "must not exceed limits.maxSteps"]),
    ("model-golden-render-prompt-beyond-prompt-limit",
     with_spec(MODEL, goldenRenders={"prompts": [{"prompt": "a bird" * 10, "seed": 1}]},
               **{"limits.maxPromptLength": 20}),
     ["spec.goldenRenders.prompts", "limits.maxPromptLength"]),
    ("model-golden-threshold-above-one",
     with_spec(MODEL, goldenRenders={"prompts": [{"prompt": "a bird", "seed": 1}], "maxMeanDifference": 2}),
     ["spec.goldenRenders.maxMeanDifference", "less than or equal to 1"]),
    ("pool-negative-replicas",
     with_spec(POOL, replicas=-1),
     ["spec.replicas", "greater than or equal to 0"]),
    ("pool-max-batch-size-zero",
     with_spec(POOL, **{"batching.maxBatchSize": 0}),
     ["spec.batching.maxBatchSize", "greater than or equal to 1"]),
    ("pool-queue-below-batch",
     with_spec(POOL, **{"batching.maxBatchSize": 16, "batching.maxQueue": 8}),
     ["spec.batching.maxQueue", "at least batching.maxBatchSize"]),
    ("pool-autoscaling-min-above-max",
     with_spec(POOL, autoscaling={"minReplicas": 5, "maxReplicas": 2}),
     ["spec.autoscaling.minReplicas", "must not exceed autoscaling.maxReplicas"]),
    ("pool-step-weights-not-increasing",
     with_spec(POOL, **{"rollout.steps": [{"weight": 50}, {"weight": 20}]}),
     ["spec.rollout.steps", "strictly increasing"]),
    ("pool-step-weights-repeated",
     with_spec(POOL, **{"rollout.steps": [{"weight": 20}, {"weight": 20}]}),
     ["spec.rollout.steps", "strictly increasing"]),
    ("pool-step-weight-above-100",
     with_spec(POOL, **{"rollout.steps": [{"weight": 50}, {"weight": 120}]}),
     ["spec.rollout.steps[1].weight", "less than or equal to 100"]),
    ("pool-availability-objective-one",
     with_spec(POOL, **{"slo.availability.objective": 1}),
     ["spec.slo.availability.objective", "less than 1"]),
    ("pool-latency-objective-above-one",
     with_spec(POOL, **{"slo.latency": {"thresholdSeconds": 5, "objective": 1.5}}),
     ["spec.slo.latency.objective", "less than 1"]),
    ("pool-latency-without-threshold",
     with_spec(POOL, **{"slo.latency": {"objective": 0.9}}),
     ["spec.slo.latency.thresholdSeconds", "Required value"]),
    ("pool-short-window-not-shorter",
     with_spec(POOL, **{"rollout.analysis.windows": [
         {"factor": 14.4, "longWindowSeconds": 300, "shortWindowSeconds": 300}]}),
     ["spec.rollout.analysis.windows[0].shortWindowSeconds", "shorter than longWindowSeconds"]),
    ("pool-unknown-error-policy",
     with_spec(POOL, **{"rollout.errorPolicy": "Ignore"}),
     ["spec.rollout.errorPolicy", "Unsupported value"]),
    ("pool-unknown-no-data-policy",
     with_spec(POOL, **{"rollout.analysis.onNoData": "Pass"}),
     ["spec.rollout.analysis.onNoData", "Unsupported value"]),
    ("pool-gateway-api-without-parent",
     with_spec(POOL, traffic={"provider": "gateway-api"}),
     ["spec.traffic.parentRefs", "needs at least one Gateway"]),
    ("pool-hostnames-with-service-provider",
     with_spec(POOL, traffic={"provider": "service", "hostnames": ["a.example.com"]}),
     ["spec.traffic", "only valid with provider gateway-api"]),
    ("pool-unknown-traffic-provider",
     with_spec(POOL, traffic={"provider": "istio"}),
     ["spec.traffic.provider", "Unsupported value"]),
    ("pool-prometheus-url-not-http",
     with_spec(POOL, prometheus={"url": "ftp://prometheus:9090"}),
     ["spec.prometheus.url", "http:// or https://"]),
    ("pool-too-many-gpus",
     with_spec(POOL, **{"gpu.count": 32}),
     ["spec.gpu.count", "less than or equal to 16"]),
    ("pool-bad-quantity",
     with_spec(POOL, **{"resources.requests": {"memory": "lots"}}),
     ["spec.resources.requests.memory"]),
    ("pool-exists-toleration-with-value",
     with_spec(POOL, **{"gpu.tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
     ["spec.gpu.tolerations[0].value", "operator Exists"]),
    ("pool-missing-model-ref",
     {**copy.deepcopy(POOL), "spec": {"replicas": 1}},
     ["spec.modelRef", "Required value"]),
    ("pool-name-too-long",
     {**copy.deepcopy(POOL), "metadata": {"name": "p" * 45}},
     ["metadata.name", "at most 40 characters"]),
    ("pool-unknown-field",
     with_spec(POOL, replica=3),
     ['unknown field "spec.replica"']),
]


@pytest.mark.parametrize("case_id, doc, needles", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_resource_is_rejected(cluster, namespace, case_id, doc, needles):
    result = apply(cluster, namespace, doc)
    answer = result.stdout + result.stderr
    assert result.returncode != 0, f"{case_id}: accepted, but should have been rejected:\n{answer}"
    for needle in needles:
        assert needle in answer, f"{case_id}: {needle!r} not in the API server's answer:\n{answer}"


def test_defaults_are_applied(cluster, namespace):
    apply(cluster, namespace, MODEL, check=True)
    apply(cluster, namespace, POOL, check=True)
    model = json.loads(cluster.kubectl("get", MODELS, "m", "-n", namespace, "-o", "json").stdout)["spec"]
    assert model["pipeline"] == "text-to-image" and model["precision"] == "fp16"
    assert model["defaults"] == {"scheduler": "dpm-solver-multistep", "steps": 30, "guidanceScale": 7.5,
                                 "width": 512, "height": 512}
    assert model["limits"]["maxSteps"] == 100 and model["safety"]["checker"] == "auto"
    pool = json.loads(cluster.kubectl("get", POOLS, "p", "-n", namespace, "-o", "json").stdout)["spec"]
    assert pool["replicas"] == 1
    assert pool["gpu"] == {"resourceName": "nvidia.com/gpu", "count": 1, "productLabel": "nvidia.com/gpu.product"}
    assert pool["batching"] == {"maxBatchSize": 8, "maxWaitMs": 50, "maxQueue": 64}
    assert [s["weight"] for s in pool["rollout"]["steps"]] == [10, 25, 50, 100]
    assert [w["factor"] for w in pool["rollout"]["analysis"]["windows"]] == [14.4, 6, 1]
    assert pool["rollout"]["errorPolicy"] == "Rollback"
    assert pool["traffic"]["provider"] == "service"
    assert pool["slo"]["availability"]["objective"] == 0.99


def test_fault_injection_within_bounds_is_stored_as_written(cluster, namespace):
    """The schema accepts it (the operator, not admission, decides whether it is allowed) and
    defaults nothing into it: a model without it stays without it."""
    apply(cluster, namespace, with_spec(MODEL, faultInjection={"errorRate": 0.3, "latencySeconds": 1.5}), check=True)
    model = json.loads(cluster.kubectl("get", MODELS, "m", "-n", namespace, "-o", "json").stdout)["spec"]
    assert model["faultInjection"] == {"errorRate": 0.3, "latencySeconds": 1.5}
    cluster.kubectl("patch", MODELS, "m", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"faultInjection": None}}))
    model = json.loads(cluster.kubectl("get", MODELS, "m", "-n", namespace, "-o", "json").stdout)["spec"]
    assert "faultInjection" not in model


def test_invalid_update_is_rejected(cluster, namespace):
    apply(cluster, namespace, POOL, check=True)
    result = cluster.kubectl("patch", POOLS, "p", "-n", namespace, "--type=merge",
                             "-p", json.dumps({"spec": {"batching": {"maxBatchSize": 0}}}), check=False)
    assert result.returncode != 0 and "spec.batching.maxBatchSize" in result.stderr


@pytest.mark.parametrize("path", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_applies(cluster, namespace, path):
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / path))
    for doc in yaml.safe_load_all((EXAMPLES / path).read_text()):
        if doc and doc["kind"] in ("DiffusionModel", "InferencePool"):
            plural = MODELS if doc["kind"] == "DiffusionModel" else POOLS
            cluster.kubectl("get", plural, doc["metadata"]["name"], "-n", namespace)


def test_all_examples_apply_together_and_category_lists_both(cluster, namespace):
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    out = cluster.kubectl("get", "diffusion", "-n", namespace, "-o", "name").stdout.split()
    assert any(o.startswith(f"diffusionmodel.{GROUP}/") for o in out), out
    assert any(o.startswith(f"inferencepool.{GROUP}/") for o in out), out
    for short in ("dpool", "ipool", "dm", "diffmodel"):
        cluster.kubectl("get", short, "-n", namespace)


def test_kubectl_scale_changes_spec_replicas(cluster, namespace):
    apply(cluster, namespace, POOL, check=True)
    cluster.kubectl("scale", POOLS, "p", "-n", namespace, "--replicas", "3")
    spec = json.loads(cluster.kubectl("get", POOLS, "p", "-n", namespace, "-o", "json").stdout)["spec"]
    assert spec["replicas"] == 3
    # The plain resource name works too while no other InferencePool CRD is installed.
    cluster.kubectl("scale", "inferencepool", "p", "-n", namespace, "--replicas", "2")
    spec = json.loads(cluster.kubectl("get", POOLS, "p", "-n", namespace, "-o", "json").stdout)["spec"]
    assert spec["replicas"] == 2
    negative = cluster.kubectl("scale", POOLS, "p", "-n", namespace, "--replicas", "-1", check=False)
    assert negative.returncode != 0


def test_status_subresource_and_printer_columns(cluster, namespace):
    apply(cluster, namespace, POOL, check=True)
    status = {"status": {
        "observedGeneration": 1, "phase": "Progressing", "replicas": 3, "readyReplicas": 2,
        "selector": "diffusion.serving.dev/pool=p",
        "rollout": {"phase": "Progressing", "stableRevision": "aaaaaaaaaa", "canaryRevision": "bbbbbbbbbb",
                    "canaryWeight": 25, "currentStep": 1,
                    "lastAnalysis": {"at": "2030-01-01T00:00:00Z", "outcome": "pass",
                                     "reason": "BurnRateWithinBudget", "message": "ok",
                                     "burnRates": [{"sli": "availability", "factor": 14.4,
                                                    "longWindowSeconds": 720, "shortWindowSeconds": 60,
                                                    "longBurnRate": 0.5, "shortBurnRate": 0.2,
                                                    "requests": 120, "state": "ok"}]}},
        "kopf": {"progress": {}},  # not in the schema: pruned
    }}
    cluster.kubectl("patch", POOLS, "p", "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps(status))
    obj = json.loads(cluster.kubectl("get", POOLS, "p", "-n", namespace, "-o", "json").stdout)
    assert obj["status"]["rollout"]["canaryWeight"] == 25
    assert "kopf" not in obj["status"]
    assert obj["metadata"]["generation"] == 1, "a status write must not bump the generation"
    row = cluster.kubectl("get", POOLS, "p", "-n", namespace, "--no-headers").stdout.split()
    # NAME MODEL PHASE DESIRED READY STABLE CANARY WEIGHT AGE
    assert row[:8] == ["p", "m", "Progressing", "1", "2", "aaaaaaaaaa", "bbbbbbbbbb", "25"], row
    scale = json.loads(cluster.kubectl(
        "get", "--raw", f"/apis/{API}/namespaces/{namespace}/inferencepools/p/scale").stdout)
    assert scale["status"] == {"replicas": 3, "selector": "diffusion.serving.dev/pool=p"}
    bad = cluster.kubectl("patch", POOLS, "p", "-n", namespace, "--subresource=status", "--type=merge",
                          "-p", json.dumps({"status": {"phase": "Exploded"}}), check=False)
    assert bad.returncode != 0 and "status.phase" in bad.stderr
