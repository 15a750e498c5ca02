"""How real sampler pods stop and fail, as the kubelet reports it.

- Deleting a pool sends its pods SIGTERM: requests already accepted get their images, and the
  sampler container exits 0 well within ``drainTimeoutSeconds``.
- A pod that cannot start (an image tag that does not exist) shows on the pool as a condition
  with the reason and the kubelet's words, not as Ready.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from tests.conftest import REPO
from tests.node.test_real_node import PortForward, _json, _pool_ready
from tests.support.polling import wait_for

pytestmark = pytest.mark.node

DRAIN_TIMEOUT_S = 45


def _examples(ns_name: str, **pool_spec) -> str:
    docs = []
    for f in sorted((REPO / "examples" / "dev").glob("*.yaml")):
        obj = yaml.safe_load(f.read_text())
        if obj["kind"] == "InferencePool":
            obj["spec"].update(pool_spec)
        docs.append(obj)
    return yaml.safe_dump_all(docs)


class PodWatch:
    """Every version of one pod, from ``kubectl get -w``, until it is gone."""

    def __init__(self, cluster, ns: str, name: str):
        self.versions: list[dict] = []
        self.proc = subprocess.Popen(
            [str(cluster.tools.kubectl), f"--kubeconfig={cluster.kubeconfig}", "-n", ns, "get", "pod", name, "-w",
             "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        decoder, buf = json.JSONDecoder(), ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            buf += line
            try:
                obj, end = decoder.raw_decode(buf.strip())
            except ValueError:
                continue
            self.versions.append(obj)
            buf = buf.strip()[end:]

    def sampler_terminated(self) -> dict | None:
        for obj in reversed(self.versions):
            for cs in (obj.get("status") or {}).get("containerStatuses") or []:
                if cs["name"] == "sampler" and (cs.get("state") or {}).get("terminated"):
                    return cs["state"]["terminated"]
        return None

    def deletion_started(self) -> dt.datetime | None:
        """When the pod was deleted (and the kubelet sent SIGTERM): the first version with a
        deletionTimestamp, less its grace period. Later versions do not tell: once the
        containers have exited the kubelet deletes the pod again with grace 0, and the API
        server moves deletionTimestamp to that moment."""
        for obj in self.versions:
            meta = obj["metadata"]
            if meta.get("deletionTimestamp"):
                return _ts(meta["deletionTimestamp"]) - dt.timedelta(seconds=meta["deletionGracePeriodSeconds"])
        return None

    def close(self) -> None:
        self.proc.kill()


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_deleting_a_pool_drains_accepted_requests_and_the_pod_exits_zero(node_cluster, node_operator, node_ns,
                                                                          dev_model):
    node_cluster.kubectl("-n", node_ns, "apply", "-f", "-", input=_examples(
        node_ns, replicas=1, batching={"maxBatchSize": 1, "maxWaitMs": 5, "maxQueue": 8},
        server={"drainTimeoutSeconds": DRAIN_TIMEOUT_S}))
    wait_for(lambda: _pool_ready(node_cluster, node_ns, "tiny"), timeout=420, interval=2, what="the pool Ready",
             detail=lambda: node_cluster.kubectl("-n", node_ns, "get", "pods", "-o", "wide", check=False).stdout)
    pod = _json(node_cluster, "-n", node_ns, "get", "pods", "-l", "diffusion.serving.dev/pool=tiny")["items"][0]
    name = pod["metadata"]["name"]
    forward = PortForward(node_cluster, node_ns, f"pod/{name}", 8000)
    watch = PodWatch(node_cluster, node_ns, name)
    body = {"prompt": "a harbour in fog", "size": "64x64", "steps": 24, "n": 1}
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(requests.post, f"{forward.url}/v1/images/generations", json=body, timeout=120)
                       for _ in range(4)]

            def queued() -> bool:
                text = requests.get(f"{forward.url}/metrics", timeout=5).text
                depth = next(float(line.split()[-1]) for line in text.splitlines()
                             if line.startswith("diffusion_sampler_queue_depth"))
                return depth >= 2

            wait_for(queued, timeout=30, interval=0.05, what="requests queued in the sampler")
            node_cluster.kubectl("-n", node_ns, "delete", "inferencepool", "tiny", "--wait=false")
            results = [f.result() for f in futures]
        assert [r.status_code for r in results] == [200] * 4, [r.text[:200] for r in results]
        term = wait_for(watch.sampler_terminated, timeout=DRAIN_TIMEOUT_S + 30, what="the sampler container to exit")
    finally:
        watch.close()
        forward.close()
    assert term["exitCode"] == 0, term
    assert term["reason"] == "Completed"
    deleted = watch.deletion_started()
    assert deleted is not None, "the watch never saw the pod's deletion"
    drain_s = (_ts(term["finishedAt"]) - deleted).total_seconds()
    assert drain_s < DRAIN_TIMEOUT_S, f"drained in {drain_s:.1f} s, budget {DRAIN_TIMEOUT_S} s"


def test_a_pod_that_cannot_pull_its_image_shows_on_the_pool_not_as_ready(node_cluster, node_operator, node_ns,
                                                                           dev_model):
    node_cluster.kubectl("-n", node_ns, "apply", "-f", "-",
                         input=_examples(node_ns, replicas=1, image="ghcr.io/diffusion-serving/diffusion-sampler:nope"))

    def degraded():
        st = _json(node_cluster, "-n", node_ns, "get", "inferencepool", "tiny").get("status") or {}
        ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
        return st if ready.get("reason") == "ImagePullFailed" else None

    st = wait_for(degraded, timeout=90, interval=1, what="Ready=False with reason ImagePullFailed")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert "diffusion-sampler:nope" in ready["message"]
    assert st["phase"] == "Degraded"
    events = node_cluster.kubectl("-n", node_ns, "get", "events", "--field-selector",
                                  "involvedObject.kind=InferencePool,reason=ImagePullFailed", "-o", "name").stdout
    assert events.strip(), "no Warning event ImagePullFailed on the pool"


def test_a_sampler_killed_for_memory_shows_as_out_of_memory(node_cluster, node_operator, node_ns, dev_model):
    # torch alone needs more than 200 MiB: the kernel's OOM killer ends the sampler while it loads
    node_cluster.kubectl("-n", node_ns, "apply", "-f", "-", input=_examples(
        node_ns, replicas=1, resources={"requests": {"cpu": "250m", "memory": "200Mi"},
                                        "limits": {"memory": "200Mi"}}))

    def oom():
        st = _json(node_cluster, "-n", node_ns, "get", "inferencepool", "tiny").get("status") or {}
        ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
        return ready if ready.get("reason") == "OutOfMemory" else None

    ready = wait_for(oom, timeout=120, interval=1, what="Ready=False with reason OutOfMemory",
                     detail=lambda: node_cluster.kubectl("-n", node_ns, "get", "pods", "-o", "yaml",
                                                         check=False).stdout[-3000:])
    assert ready["status"] == "False" and "OOMKilled" in ready["message"]
