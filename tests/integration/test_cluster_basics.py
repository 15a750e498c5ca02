"""The local cluster behaves like a real one: GPU scheduling, garbage collection, RBAC."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.support.polling import wait_for

pytestmark = pytest.mark.integration

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _pod(name: str, gpus: int, tolerate: bool = True) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "c", "image": "example.invalid/sampler:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
            "tolerations": [GPU_TOLERATION] if tolerate else [],
        },
    }


def _get(cluster, namespace, kind, name) -> dict:
    return json.loads(cluster.kubectl("-n", namespace, "get", kind, name, "-o", "json").stdout)


def test_nodes_advertise_gpus(cluster):
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    gpu_nodes = [n for n in nodes if n["status"]["allocatable"].get("nvidia.com/gpu")]
    assert len(gpu_nodes) == 2
    for n in gpu_nodes:
        assert n["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        ready = {c["type"]: c["status"] for c in n["status"]["conditions"]}
        assert ready["Ready"] == "True"


def test_gpu_pod_runs_on_gpu_node(cluster, namespace):
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(_pod("one-gpu", 1)))
    pod = wait_for(lambda: (p := _get(cluster, namespace, "pod", "one-gpu"))["status"].get("phase") == "Running" and p,
                what="pod Running")
    assert pod["spec"]["nodeName"].startswith("gpu-node-")


def test_too_many_gpus_stays_pending_unschedulable(cluster, namespace):
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(_pod("greedy", 16)))

    def unschedulable():
        st = _get(cluster, namespace, "pod", "greedy")["status"]
        conds = {c["type"]: c for c in st.get("conditions", [])}
        sched = conds.get("PodScheduled")
        return st.get("phase") == "Pending" and sched and sched.get("reason") == "Unschedulable" and sched

    cond = wait_for(unschedulable, what="PodScheduled=False/Unschedulable")
    assert "nvidia.com/gpu" in cond["message"]


def test_gpu_taint_keeps_intolerant_pods_off(cluster, namespace):
    cluster.kubectl("-n", namespace, "apply", "-f", "-",
                    input=yaml.safe_dump(_pod("no-toleration", 1, tolerate=False)))

    def unschedulable():
        conditions = _get(cluster, namespace, "pod", "no-toleration")["status"].get("conditions", [])
        return next((c for c in conditions if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"),
                    None)
    cond = wait_for(unschedulable, what="Unschedulable for the untolerated taint")
    assert "untolerated taint" in cond["message"]


def test_deleting_owner_garbage_collects_dependents(cluster, namespace):
    cm = cluster.kubectl("-n", namespace, "create", "configmap", "owner", "-o", "json").stdout
    uid = json.loads(cm)["metadata"]["uid"]
    child = {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "child", "ownerReferences": [
                 {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}}
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(child))
    cluster.kubectl("-n", namespace, "delete", "configmap", "owner")
    wait_for(lambda: cluster.kubectl("-n", namespace, "get", "configmap", "child", check=False).returncode != 0,
          what="child garbage-collected")


def test_deployment_controller_creates_running_pods(cluster, namespace):
    dep = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": _pod("x", 1)["spec"]}},
    }
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(dep))
    wait_for(lambda: _get(cluster, namespace, "deployment", "web")["status"].get("readyReplicas") == 2,
          what="2 ready replicas")


def test_rbac_is_enforced(cluster, namespace, tmp_path):
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "nobody")
    token = cluster.kubectl("-n", namespace, "create", "token", "nobody").stdout.strip()
    kc = cluster.token_kubeconfig(token, tmp_path / "nobody.kubeconfig", namespace)
    assert cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}",
                           kubeconfig=kc).stdout == f"system:serviceaccount:{namespace}:nobody"
    denied = cluster.kubectl("-n", namespace, "get", "pods", check=False, kubeconfig=kc)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
