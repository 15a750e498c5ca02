"""Why a pool's pods do not start, read from their container statuses: pure, no I/O.

The Deployment only says "0/2 ready"; the kubelet says why, per container: an image it cannot
pull, a model the ``fetch-model`` init container cannot download, a container killed for memory,
one that keeps crashing. ``pod_problem`` turns that into one reason and a message naming the pod,
the container and the kubelet's own words, which the pool's ``Ready``/``Degraded`` conditions carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from .conditions import Reason

IMAGE_PULL_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                                "RegistryUnavailable", "SignatureValidationFailed"})
CONFIG_WAITING = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
FETCH_CONTAINER = "fetch-model"
# Worst first: what blocks a start outright before what merely restarts.
_SEVERITY = (Reason.IMAGE_PULL_FAILED, Reason.CONTAINER_CONFIG_INVALID, Reason.MODEL_FETCH_FAILED,
             Reason.OUT_OF_MEMORY, Reason.CONTAINER_CRASHING)


@dataclass(frozen=True)
class PodProblem:
    reason: Reason
    pod: str
    container: str
    message: str


def _terminated(cs: dict) -> dict | None:
    """The failed run of a container: the current state, else the last one."""
    for key in ("state", "lastState"):
        term = (cs.get(key) or {}).get("terminated")
        if term and (term.get("exitCode") or term.get("reason") == "OOMKilled"):
            return term
    return None


def _container_problem(pod: str, cs: dict, *, init: bool) -> PodProblem | None:
    name = cs.get("name", "?")
    waiting = (cs.get("state") or {}).get("waiting") or {}
    why = waiting.get("reason", "")
    if why in IMAGE_PULL_WAITING:
        return PodProblem(Reason.IMAGE_PULL_FAILED, pod, name,
                          f"container {name} of pod {pod} cannot get image {cs.get('image', '?')}: {why}: "
                          f"{waiting.get('message', '').strip()}".rstrip(": "))
    if why in CONFIG_WAITING:
        return PodProblem(Reason.CONTAINER_CONFIG_INVALID, pod, name,
                          f"container {name} of pod {pod} cannot be created: {why}: "
                          f"{waiting.get('message', '').strip()}".rstrip(": "))
    term = _terminated(cs)
    if term is None:
        return None
    said = (term.get("message") or "").strip().splitlines()
    tail = f": {said[-1][:300]}" if said else ""
    if term.get("reason") == "OOMKilled":
        return PodProblem(Reason.OUT_OF_MEMORY, pod, name,
                          f"container {name} of pod {pod} was killed for exceeding its memory limit (OOMKilled, "
                          f"restarted {cs.get('restartCount', 0)} times)")
    if init and name == FETCH_CONTAINER:
        return PodProblem(Reason.MODEL_FETCH_FAILED, pod, name,
                          f"the model download of pod {pod} failed (exit {term.get('exitCode')}, "
                          f"{'bad configuration' if term.get('exitCode') == 2 else 'download error'}){tail}")
    return PodProblem(Reason.CONTAINER_CRASHING, pod, name,
                      f"container {name} of pod {pod} exited with code {term.get('exitCode')} "
                      f"({term.get('reason', 'Error')}, restarted {cs.get('restartCount', 0)} times){tail}")


def pod_problem(pod: dict) -> PodProblem | None:
    """The worst reason this pod's containers cannot run, or None (also for a pod being deleted,
    whose containers are expected to stop)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") == "Succeeded":
        return None
    name = meta.get("name", "?")
    found = [p for cs in status.get("initContainerStatuses") or []
             if (p := _container_problem(name, cs, init=True))]
    found += [p for cs in status.get("containerStatuses") or [] if (p := _container_problem(name, cs, init=False))]
    return min(found, key=lambda p: _SEVERITY.index(p.reason)) if found else None


def pods_problem(pods: list[dict]) -> PodProblem | None:
    """The worst problem among a pool's pods (ties: the pod whose name sorts first)."""
    found = [p for pod in sorted(pods, key=lambda p: p["metadata"]["name"]) if (p := pod_problem(pod))]
    return min(found, key=lambda p: _SEVERITY.index(p.reason)) if found else None
