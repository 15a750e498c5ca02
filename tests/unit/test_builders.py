"""Spec -> manifest builders, and the revision hashes that decide when a canary starts."""

from __future__ import annotations

import pytest
import yaml

from diffusion_operator import builders
from diffusion_operator.errors import SpecError
from diffusion_operator.spec import ModelSpec, PoolSpec, model_revision, pool_revision

pytestmark = pytest.mark.unit

POOL_OBJ = {"metadata": {"name": "sdxl", "namespace": "ml", "uid": "u-1"}}


def model(**spec):
    base = {"source": {"uri": "pvc://models/sdxl/base"}}
    base.update(spec)
    return ModelSpec.from_body("sdxl-base", base)


def pool(**spec):
    base = {"modelRef": {"name": "sdxl-base"}}
    base.update(spec)
    return PoolSpec.from_body(base)


def container(dep):
    return dep["spec"]["template"]["spec"]["containers"][0]


def env(dep):
    return {e["name"]: e.get("value") for e in container(dep)["env"]}


def test_pvc_model_is_mounted_read_only_at_its_subpath():
    dep = builders.deployment(POOL_OBJ, pool(), model(), "abc1234567", 2)
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in container(dep)["volumeMounts"]
    assert env(dep)["SAMPLER_MODEL_DIR"] == "/models/sdxl/base"
    assert "initContainers" not in dep["spec"]["template"]["spec"]


def test_hf_model_downloads_in_an_init_container_with_the_token_secret():
    m = model(source={"uri": "hf://stabilityai/sdxl", "revision": "f" * 40,
                      "tokenSecretRef": {"name": "hf-token", "key": "token"}})
    dep = builders.deployment(POOL_OBJ, pool(modelCache={"sizeLimit": "80Gi"}), m, "abc1234567", 1)
    spec = dep["spec"]["template"]["spec"]
    init = spec["initContainers"][0]
    init_env = {e["name"]: e for e in init["env"]}
    assert init_env["MODEL_SOURCE"]["value"] == "hf://stabilityai/sdxl"
    assert init_env["MODEL_REVISION"]["value"] == "f" * 40
    assert init_env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}
    assert {v["name"]: v for v in spec["volumes"]}["model"]["emptyDir"] == {"sizeLimit": "80Gi"}
    assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_gpu_scheduling_and_restricted_security():
    p = pool(gpu={"resourceName": "nvidia.com/gpu", "count": 2, "products": ["NVIDIA-H100-80GB-HBM3"],
                  "runtimeClassName": "nvidia",
                  "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]},
             server={"drainTimeoutSeconds": 90})
    dep = builders.deployment(POOL_OBJ, p, model(), "abc1234567", 3)
    spec = dep["spec"]["template"]["spec"]
    assert container(dep)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert spec["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["tolerations"][0] == {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert spec["tolerations"][1]["key"] == "dedicated"
    assert spec["terminationGracePeriodSeconds"] > 90
    sc = container(dep)["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container(dep)["startupProbe"]["failureThreshold"] * container(dep)["startupProbe"]["periodSeconds"] >= 900
    assert dep["spec"]["replicas"] == 3


def test_several_gpu_products_become_node_affinity():
    dep = builders.deployment(POOL_OBJ, pool(gpu={"products": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H200"]}),
                              model(), "abc1234567", 1)
    terms = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H200"]


def test_sampler_env_follows_the_specs():
    m = model(defaults={"scheduler": "euler", "steps": 25}, limits={"maxSteps": 60, "maxImagesPerRequest": 2},
              safety={"blocklist": ["gore", "violence"], "replacement": "blur"})
    p = pool(batching={"maxBatchSize": 16, "maxWaitMs": 30, "maxQueue": 128},
             slo={"latency": {"thresholdSeconds": 8, "objective": 0.95}})
    e = env(builders.deployment(POOL_OBJ, p, m, "abc1234567", 1))
    assert e["SAMPLER_DEFAULT_SCHEDULER"] == "euler" and e["SAMPLER_DEFAULT_STEPS"] == "25"
    assert e["SAMPLER_MAX_STEPS"] == "60" and e["SAMPLER_MAX_IMAGES"] == "2"
    assert e["SAMPLER_MAX_BATCH_SIZE"] == "16" and e["SAMPLER_MAX_QUEUE"] == "128"
    assert e["SAMPLER_SAFETY_BLOCKLIST"] == "gore,violence" and e["SAMPLER_SAFETY_REPLACEMENT"] == "blur"
    assert e["SAMPLER_SLO_LATENCY_THRESHOLDS_S"] == "8.0"
    assert e["SAMPLER_POOL"] == "sdxl" and e["SAMPLER_REVISION"] == "abc1234567"


def test_children_are_owned_and_labelled():
    dep = builders.deployment(POOL_OBJ, pool(), model(), "abc1234567", 1)
    assert dep["metadata"]["name"] == "sdxl-abc1234567"
    assert dep["metadata"]["ownerReferences"] == [{
        "apiVersion": "diffusion.serving.dev/v1alpha1", "kind": "InferencePool", "name": "sdxl", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True}]
    assert dep["spec"]["selector"]["matchLabels"] == {"diffusion.serving.dev/pool": "sdxl",
                                                      "diffusion.serving.dev/revision": "abc1234567"}


def test_httproute_weights_and_parents():
    p = pool(traffic={"provider": "gateway-api", "hostnames": ["img.example.com"],
                      "parentRefs": [{"name": "gw", "namespace": "gateways"}]})
    route = builders.httproute(POOL_OBJ, p, {"aaaaaaaaaa": 80, "bbbbbbbbbb": 20})
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("sdxl-aaaaaaaaaa", 80), ("sdxl-bbbbbbbbbb", 20)]
    assert route["spec"]["parentRefs"] == [{"name": "gw", "namespace": "gateways"}]
    assert route["spec"]["hostnames"] == ["img.example.com"]


def test_hpa_scales_the_pool_through_its_scale_subresource():
    hpa = builders.hpa(POOL_OBJ, pool(autoscaling={"minReplicas": 2, "maxReplicas": 8,
                                                   "targetQueueDepthPerReplica": 4}))
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "diffusion.serving.dev/v1alpha1",
                                             "kind": "InferencePool", "name": "sdxl"}
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == "diffusion_sampler_queue_depth"
    assert metric["target"] == {"type": "AverageValue", "averageValue": "4"}


def test_network_policy_admits_only_the_sampler_port():
    np = builders.network_policy(POOL_OBJ)
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert np["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8000}]}]


def test_service_monitor_selects_revision_services_only():
    sm = builders.monitor(POOL_OBJ, pool(monitoring={"kind": "ServiceMonitor", "labels": {"release": "prom"}}))
    assert sm["kind"] == "ServiceMonitor"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert {"key": "diffusion.serving.dev/revision", "operator": "Exists"} in sm["spec"]["selector"]["matchExpressions"]
    pm = builders.monitor(POOL_OBJ, pool())
    assert pm["kind"] == "PodMonitor" and pm["spec"]["podMetricsEndpoints"][0]["port"] == "http"


def test_revision_ignores_limits_but_not_outputs():
    base = model()
    assert model_revision(base) == model_revision(model(limits={"maxSteps": 150}))
    assert model_revision(base) != model_revision(model(defaults={"steps": 31}))
    assert model_revision(base) != model_revision(model(precision="bf16"))
    assert pool_revision("r1", "img:1") != pool_revision("r1", "img:2")


def test_snapshot_round_trip_rebuilds_the_same_deployment():
    m = model(safety={"blocklist": ["x"]})
    snap = ModelSpec.from_snapshot(yaml.safe_load(yaml.safe_dump(m.to_snapshot())))
    assert snap == m


def test_unknown_scheme_is_a_spec_error():
    with pytest.raises(SpecError, match="scheme"):
        model(source={"uri": "ftp://host/model"})


def test_status_patch_is_empty_when_only_nulls_differ():
    from diffusion_operator.handlers.outcome import merge_patch as _changed

    stored = {"phase": "Ready", "rollout": {"stableRevision": "a"}}
    computed = {"phase": "Ready", "rollout": {"stableRevision": "a", "canaryRevision": None}}
    assert _changed(stored, computed) == {}
    assert _changed(stored, {"phase": "Degraded", "rollout": {"stableRevision": "a"}}) == {"phase": "Degraded"}
    assert _changed({"phase": "Ready", "selector": "x"}, {"phase": "Ready"}) == {"selector": None}


def test_status_patch_clears_nested_fields():
    from diffusion_operator.handlers.outcome import merge_patch as _changed

    stored = {"rollout": {"stableRevision": "a", "canaryRevision": "b", "currentStep": 2}}
    computed = {"rollout": {"stableRevision": "b", "canaryRevision": None, "currentStep": None}}
    assert _changed(stored, computed) == {"rollout": {"stableRevision": "b", "canaryRevision": None,
                                                      "currentStep": None}}


def test_analysis_is_scoped_to_the_pool_namespace():
    from diffusion_operator.rollout.promql import namespaced_selector

    assert namespaced_selector("prod", "") == 'namespace="prod"'
    assert namespaced_selector("prod", 'cluster="eu-1"') == 'namespace="prod",cluster="eu-1"'
    assert namespaced_selector("prod", 'namespace="other"') == 'namespace="other"'


# --------------------------------------------------------------------------- fault injection (tests and demos only)


def test_fault_injection_is_parsed_with_defaults_off():
    assert (model().fault_error_rate, model().fault_latency_s, model().fault_injection) == (0.0, 0.0, False)
    m = model(faultInjection={"errorRate": 0.3})
    assert (m.fault_error_rate, m.fault_latency_s, m.fault_injection) == (0.3, 0.0, True)
    m = model(faultInjection={"latencySeconds": 1.5})
    assert (m.fault_error_rate, m.fault_latency_s, m.fault_injection) == (0.0, 1.5, True)


def test_fault_injection_is_a_new_revision_and_leaves_other_revisions_alone():
    base = model()
    assert "faults" not in base.output_defining()  # models without it keep the revision they had
    errors, slow = model(faultInjection={"errorRate": 0.3}), model(faultInjection={"latencySeconds": 1.5})
    assert len({model_revision(base), model_revision(errors), model_revision(slow),
                model_revision(model(faultInjection={"errorRate": 0.5}))}) == 4
    assert model_revision(model(faultInjection={"errorRate": 0, "latencySeconds": 0})) == model_revision(base)


def test_fault_injection_env_only_when_set():
    plain = env(builders.deployment(POOL_OBJ, pool(), model(), "abc1234567", 1))
    assert not {k for k in plain if k.startswith("SAMPLER_FAULT_")}
    e = env(builders.deployment(POOL_OBJ, pool(), model(faultInjection={"errorRate": 0.3}), "abc1234567", 1))
    assert e["SAMPLER_FAULT_ERROR_RATE"] == "0.3" and "SAMPLER_FAULT_LATENCY_S" not in e
    e = env(builders.deployment(POOL_OBJ, pool(), model(faultInjection={"errorRate": 1, "latencySeconds": 2.5}),
                                "abc1234567", 1))
    assert e["SAMPLER_FAULT_ERROR_RATE"] == "1.0" and e["SAMPLER_FAULT_LATENCY_S"] == "2.5"


def test_snapshot_round_trip_keeps_fault_injection_and_reads_older_snapshots():
    m = model(faultInjection={"errorRate": 0.3, "latencySeconds": 1.5})
    snap = ModelSpec.from_snapshot(yaml.safe_load(yaml.safe_dump(m.to_snapshot())))
    assert snap == m and model_revision(snap) == model_revision(m)
    # a ControllerRevision written before the field existed: the stable it restores injects nothing
    old = {k: v for k, v in model().to_snapshot().items() if not k.startswith("fault_")}
    restored = ModelSpec.from_snapshot(old)
    assert restored == model() and not restored.fault_injection
