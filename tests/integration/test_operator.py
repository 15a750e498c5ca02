"""The operator on the real local cluster, running as its least-privilege ServiceAccount.

Resources come from examples/dev (a file:// model the simulated nodes never read); pods are
scheduled by the real scheduler onto kwok's simulated GPU nodes.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.support.polling import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DM = REPO / "examples/dev/diffusionmodel-tiny.yaml"
POOL = REPO / "examples/dev/inferencepool-tiny.yaml"
LABEL_POOL = "diffusion.serving.dev/pool"


def get(cluster, ns, kind, name=None, selector=None, check=True):
    args = ["-n", ns, "get", kind] + ([name] if name else []) + (["-l", selector] if selector else []) + ["-o", "json"]
    res = cluster.kubectl(*args, check=check)
    return json.loads(res.stdout) if res.returncode == 0 else None


def condition(obj, type_):
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def pool_ready(cluster, ns, name="tiny", replicas=2):
    def check():
        p = get(cluster, ns, "inferencepool", name)
        st = p.get("status") or {}
        return st.get("phase") == "Ready" and st.get("readyReplicas") == replicas and p
    return wait_for(check, what=f"pool {name} Ready with {replicas} replicas")


def events(cluster, ns, name):
    return json.loads(cluster.kubectl("-n", ns, "get", "events", "--field-selector",
                                      f"involvedObject.name={name}", "-o", "json").stdout)["items"]


def apply_examples(cluster, ns, *paths):
    args = ["-n", ns, "apply"]
    for p in paths:
        args += ["-f", str(p)]
    cluster.kubectl(*args)


def test_pool_becomes_ready_with_gpu_workload(cluster, namespace, operator):
    apply_examples(cluster, namespace, DM, POOL)
    pool = pool_ready(cluster, namespace)
    dm = get(cluster, namespace, "diffusionmodel", "tiny")
    assert condition(dm, "Ready")["status"] == "True"
    st = pool["status"]
    assert st["modelRevision"] == dm["status"]["revision"]
    revision = st["desiredRevision"]
    assert st["observedGeneration"] == pool["metadata"]["generation"]
    assert st["rollout"]["stableRevision"] == revision
    assert condition(pool, "Ready")["observedGeneration"] == pool["metadata"]["generation"]

    # printer columns a user sees
    table = cluster.kubectl("-n", namespace, "get", "inferencepools.diffusion.serving.dev", "tiny").stdout
    header, row = table.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "MODEL", "PHASE", "DESIRED", "READY"]
    assert row.split()[:6] == ["tiny", "tiny", "Ready", "2", "2", revision]

    dep = get(cluster, namespace, "deployment", f"tiny-{revision}")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > 60
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["SAMPLER_POOL"] == "tiny" and env["SAMPLER_REVISION"] == revision
    assert env["SAMPLER_MAX_BATCH_SIZE"] == "4"
    owner = dep["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "InferencePool" and owner["name"] == "tiny" and owner["controller"] is True

    pods = get(cluster, namespace, "pods", selector=f"{LABEL_POOL}=tiny")["items"]
    assert len(pods) == 2
    assert all(p["status"]["phase"] == "Running" and p["spec"]["nodeName"].startswith("gpu-node-") for p in pods)
    for kind in ("service/tiny", f"service/tiny-{revision}", "poddisruptionbudget/tiny", "networkpolicy/tiny",
                 "podmonitor/tiny", "prometheusrule/tiny-slo"):
        assert cluster.kubectl("-n", namespace, "get", kind, check=False).returncode == 0, kind
    netpol = get(cluster, namespace, "networkpolicy", "tiny")
    assert netpol["spec"]["ingress"] == [{"ports": [{"port": 8000, "protocol": "TCP"}]}]


def test_scale_subresource_and_idle_quiet(cluster, namespace, operator):
    apply_examples(cluster, namespace, DM, POOL)
    pool_ready(cluster, namespace)
    cluster.kubectl("-n", namespace, "scale", "inferencepool", "tiny", "--replicas", "3")
    pool = pool_ready(cluster, namespace, replicas=3)
    assert pool["spec"]["replicas"] == 3
    # Nothing changes while nothing happens: no status write, no child write.
    time.sleep(2)
    before = get(cluster, namespace, "inferencepool", "tiny")["metadata"]["resourceVersion"]
    # Deployment status keeps moving (the controllers write it); its generation moves only on spec writes.
    deps_before = {d["metadata"]["name"]: d["metadata"]["generation"]
                   for d in get(cluster, namespace, "deployments")["items"]}
    time.sleep(6)
    assert get(cluster, namespace, "inferencepool", "tiny")["metadata"]["resourceVersion"] == before
    assert {d["metadata"]["name"]: d["metadata"]["generation"]
            for d in get(cluster, namespace, "deployments")["items"]} == deps_before
    # A hand edit of a child makes the operator reconcile; with nothing to change it writes no status.
    # (An annotation: Deployments bump their generation for it, so the operator re-checks.)
    dep_name = sorted(deps_before)[0]
    cluster.kubectl("-n", namespace, "annotate", "deployment", dep_name, "example.com/touched=yes")
    time.sleep(4)
    assert get(cluster, namespace, "inferencepool", "tiny")["metadata"]["resourceVersion"] == before


def test_drift_is_repaired(cluster, namespace, operator):
    apply_examples(cluster, namespace, DM, POOL)
    pool = pool_ready(cluster, namespace)
    rev = pool["status"]["rollout"]["stableRevision"]
    cluster.kubectl("-n", namespace, "delete", "service", "tiny")
    wait_for(lambda: get(cluster, namespace, "service", "tiny", check=False), what="pool Service recreated")
    cluster.kubectl("-n", namespace, "patch", "deployment", f"tiny-{rev}", "--type=merge",
                    "-p", json.dumps({"spec": {"replicas": 5}}))
    wait_for(lambda: get(cluster, namespace, "deployment", f"tiny-{rev}")["spec"]["replicas"] == 2,
         what="replicas put back to 2")
    cluster.kubectl("-n", namespace, "delete", "networkpolicy", "tiny")
    wait_for(lambda: get(cluster, namespace, "networkpolicy", "tiny", check=False), what="NetworkPolicy recreated")


def test_model_change_starts_canary_at_weight_zero(cluster, namespace, operator):
    apply_examples(cluster, namespace, DM, POOL)
    pool = pool_ready(cluster, namespace)
    stable = pool["status"]["rollout"]["stableRevision"]
    # Watch every version of the pool so the first canary status is seen, however brief.
    watch = subprocess.Popen([str(cluster.tools.kubectl), f"--kubeconfig={cluster.kubeconfig}", "-n", namespace,
                              "get", "inferencepool", "tiny", "-w", "--output-watch-events", "-o", "json"],
                             stdout=subprocess.PIPE, text=True)
    try:
        cluster.kubectl("-n", namespace, "patch", "diffusionmodel", "tiny", "--type=merge",
                        "-p", json.dumps({"spec": {"defaults": {"steps": 8}}}))
        new_rev = wait_for(lambda: (r := get(cluster, namespace, "inferencepool", "tiny")["status"]["desiredRevision"])
                       != stable and r, what="new pool revision")
        wait_for(lambda: get(cluster, namespace, "deployment", f"tiny-{new_rev}", check=False),
                 what="canary Deployment")
        wait_for(lambda: (get(cluster, namespace, "inferencepool", "tiny")["status"]["rollout"].get("canaryRevision")
                      == new_rev), what="canary in status")
    finally:
        time.sleep(1)
        watch.terminate()
        out, _ = watch.communicate(timeout=10)
    decoder = json.JSONDecoder()
    objs, pos = [], 0
    while pos < len(out):
        while pos < len(out) and out[pos].isspace():
            pos += 1
        if pos >= len(out):
            break
        obj, pos = decoder.raw_decode(out, pos)
        objs.append(obj["object"])
    first_canary = next(o for o in objs if (o.get("status") or {}).get("rollout", {}).get("canaryRevision") == new_rev)
    ro = first_canary["status"]["rollout"]
    assert ro["canaryWeight"] == 0
    assert ro["stableRevision"] == stable
    # stable keeps serving with its own model snapshot (old steps), canary has the new one
    def sampler_env(revision):
        deployment = get(cluster, namespace, "deployment", f"tiny-{revision}")
        return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    stable_env = sampler_env(stable)
    canary_env = sampler_env(new_rev)
    assert stable_env["SAMPLER_DEFAULT_STEPS"] == "4" and canary_env["SAMPLER_DEFAULT_STEPS"] == "8"
    assert get(cluster, namespace, "deployment", f"tiny-{stable}")["status"]["readyReplicas"] == 2
    reasons = {e["reason"] for e in events(cluster, namespace, "tiny")}
    assert "RolloutStarted" in reasons


def test_insufficient_gpus_is_reported(cluster, namespace, operator):
    apply_examples(cluster, namespace, DM)
    pool = yaml.safe_load(POOL.read_text())
    pool["spec"]["gpu"]["count"] = 16
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(pool))

    def insufficient():
        p = get(cluster, namespace, "inferencepool", "tiny")
        c = condition(p, "Ready")
        return c and c["status"] == "False" and c["reason"] == "InsufficientGPU" and c
    c = wait_for(insufficient, what="Ready=False/InsufficientGPU")
    assert "16 nvidia.com/gpu" in c["message"]
    assert any(e["reason"] == "InsufficientGPU" and e["type"] == "Warning" for e in events(cluster, namespace, "tiny"))


def test_missing_model_then_created(cluster, namespace, operator):
    apply_examples(cluster, namespace, POOL)

    def missing():
        p = get(cluster, namespace, "inferencepool", "tiny")
        c = condition(p, "ReferencesResolved")
        return c and c["status"] == "False" and c["reason"] == "ModelNotFound" and c
    c = wait_for(missing, what="ModelNotFound")
    assert "DiffusionModel" in c["message"] and "tiny" in c["message"]
    assert any(e["reason"] == "ModelNotFound" and e["type"] == "Warning" for e in events(cluster, namespace, "tiny"))
    assert not get(cluster, namespace, "deployments")["items"]
    apply_examples(cluster, namespace, DM)
    pool_ready(cluster, namespace)


def test_fault_injection_refused_without_the_flag(cluster, namespace, operator):
    """The session operator runs without --allow-fault-injection: a model asking for the
    sampler's test-only faults is refused on the model and on its pool, and nothing is deployed."""
    assert not operator.settings.allow_fault_injection
    dm = yaml.safe_load(DM.read_text())
    dm["spec"]["faultInjection"] = {"errorRate": 0.5}
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(dm))
    apply_examples(cluster, namespace, POOL)

    def refused(kind, type_):
        def check():
            c = condition(get(cluster, namespace, kind, "tiny"), type_)
            return c and c["status"] == "False" and c["reason"] == "FaultInjectionNotAllowed" and c
        return check
    for kind, type_ in (("diffusionmodel", "Ready"), ("diffusionmodel", "Valid"), ("inferencepool", "Valid"),
                        ("inferencepool", "Ready")):
        c = wait_for(refused(kind, type_), what=f"{kind} {type_}=False FaultInjectionNotAllowed")
        assert "--allow-fault-injection" in c["message"], c
    assert get(cluster, namespace, "inferencepool", "tiny")["status"]["phase"] == "Pending"

    def warned():
        kinds = {e["involvedObject"]["kind"] for e in events(cluster, namespace, "tiny")
                 if e["reason"] == "FaultInjectionNotAllowed" and e["type"] == "Warning"}
        return kinds == {"DiffusionModel", "InferencePool"}
    wait_for(warned, what="a FaultInjectionNotAllowed Warning on the model and on the pool")
    assert not get(cluster, namespace, "deployments")["items"]
    # Without the field the same model is served.
    cluster.kubectl("-n", namespace, "patch", "diffusionmodel", "tiny", "--type=merge",
                    "-p", json.dumps({"spec": {"faultInjection": None}}))
    pool_ready(cluster, namespace)


def test_missing_secret_on_model(cluster, namespace, operator):
    dm = {"apiVersion": "diffusion.serving.dev/v1alpha1", "kind": "DiffusionModel", "metadata": {"name": "gated"},
          "spec": {"source": {"uri": "hf://org/gated-model", "revision": "0123456789abcdef0123456789abcdef01234567",
                              "tokenSecretRef": {"name": "hf-token"}}}}
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(dm))

    def not_found():
        c = condition(get(cluster, namespace, "diffusionmodel", "gated"), "Ready")
        return c and c["status"] == "False" and c["reason"] == "SecretNotFound" and c
    c = wait_for(not_found, what="SecretNotFound")
    assert "hf-token" in c["message"]
    cluster.kubectl("-n", namespace, "create", "secret", "generic", "hf-token", "--from-literal=token=hf_x")

    def ready():
        return (condition(get(cluster, namespace, "diffusionmodel", "gated"), "Ready") or {}).get("status") == "True"
    wait_for(ready, timeout=90, what="Ready after the Secret exists")


def test_deleting_pool_removes_children(cluster, namespace, operator):
    apply_examples(cluster, namespace, DM, POOL)
    pool_ready(cluster, namespace)
    cluster.kubectl("-n", namespace, "delete", "inferencepool", "tiny")
    for kind in ("deployments", "services", "poddisruptionbudgets", "networkpolicies", "podmonitors",
                 "controllerrevisions"):
        wait_for(lambda k=kind: not get(cluster, namespace, k, selector=f"{LABEL_POOL}=tiny")["items"],
             what=f"{kind} garbage-collected")


def test_invalid_update_rejected_and_nothing_lost(cluster, namespace, operator):
    apply_examples(cluster, namespace, DM, POOL)
    pool_ready(cluster, namespace)
    res = cluster.kubectl("-n", namespace, "patch", "inferencepool", "tiny", "--type=merge",
                          "-p", json.dumps({"spec": {"batching": {"maxBatchSize": 0}}}), check=False)
    assert res.returncode != 0
    assert "maxBatchSize" in res.stderr
    assert get(cluster, namespace, "inferencepool", "tiny")["spec"]["batching"]["maxBatchSize"] == 4


def test_child_rejected_by_the_api_server_is_reported_not_retried_forever(cluster, namespace, operator):
    """The schema lets any string be a pod label value; the API server's Deployment validation
    does not. The pool must say so (condition and one Event with the server's message), not
    crash-loop or retry in a hot loop, and recover when the spec is fixed."""
    apply_examples(cluster, namespace, DM, POOL)
    pool_ready(cluster, namespace)
    bad = {"spec": {"podMetadata": {"labels": {"team": "not a label value!"}}}}
    cluster.kubectl("-n", namespace, "patch", "inferencepool", "tiny", "--type=merge", "-p", json.dumps(bad))

    def rejected():
        c = condition(get(cluster, namespace, "inferencepool", "tiny"), "Valid")
        return c and c["status"] == "False" and c["reason"] == "ChildRejected" and c
    c = wait_for(rejected, what="Valid=False ChildRejected")
    assert "Deployment tiny-" in c["message"] and "not a label value!" in c["message"]
    ready = condition(get(cluster, namespace, "inferencepool", "tiny"), "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ChildRejected"
    # The pool keeps serving what it served: the old Deployment is untouched.
    assert get(cluster, namespace, "inferencepool", "tiny")["status"]["readyReplicas"] == 2
    # One Warning, and no retry storm: the count stays put while nothing changes.
    def warnings():
        return [e for e in events(cluster, namespace, "tiny") if e["reason"] == "ChildRejected"]
    first = wait_for(warnings, what="a ChildRejected Event")
    time.sleep(5)
    assert sum(e.get("count", 1) for e in warnings()) == sum(e.get("count", 1) for e in first)
    fixed = {"spec": {"podMetadata": {"labels": {"team": "vision"}}}}
    cluster.kubectl("-n", namespace, "patch", "inferencepool", "tiny", "--type=merge", "-p", json.dumps(fixed))

    def valid():
        return (condition(get(cluster, namespace, "inferencepool", "tiny"), "Valid") or {}).get("status") == "True"
    wait_for(valid, what="Valid again after the fix")
    pool_ready(cluster, namespace)
