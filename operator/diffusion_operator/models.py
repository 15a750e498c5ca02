"""Reconcile a DiffusionModel: validate what the schema cannot, compute its revision, set status.

The schema and CEL rules reject most bad input at admission. What is left for the operator:
referenced Secrets must exist (and carry the key named), and the revision hash that pools use
to tell model versions apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import API_GROUP, API_VERSION
from . import conditions as cond
from .errors import DependencyMissing, SpecError
from .kube import Kube
from .spec import ModelSpec, model_revision

DM_API = f"{API_GROUP}/{API_VERSION}"


@dataclass
class ModelResult:
    status: dict
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    error: Exception | None = None


def file_sources_allowed() -> bool:
    """``file://`` reads a node's disk: only for local development, and only when asked for."""
    return os.environ.get("DIFFUSION_OPERATOR_ALLOW_FILE_SOURCES", "") in ("1", "true", "yes")


def check_references(kube: Kube, namespace: str, model: ModelSpec) -> None:
    """What the schema cannot check: file:// allowed, PVC and Secrets exist (with the key)."""
    src = model.source
    if src.scheme == "file" and not file_sources_allowed():
        raise SpecError(f"spec.source.uri {src.uri!r}: file:// sources are for local development; start the "
                        "operator with --allow-file-sources to use them", reason="FileSourceNotAllowed")
    if src.scheme == "pvc" and kube.get("v1", "PersistentVolumeClaim", src.pvc_claim, namespace) is None:
        raise DependencyMissing(f"spec.source.uri: PersistentVolumeClaim {namespace}/{src.pvc_claim} not found",
                                reason="ClaimNotFound", delay=30)
    wanted = []
    if src.token_secret:
        wanted.append((src.token_secret, src.token_key, "spec.source.tokenSecretRef"))
    if src.credentials_secret:
        wanted.append((src.credentials_secret, None, "spec.source.credentialsSecretRef"))
    for name, key, path in wanted:
        secret = kube.get("v1", "Secret", name, namespace)
        if secret is None:
            raise DependencyMissing(f"{path}: Secret {namespace}/{name} not found", reason="SecretNotFound", delay=30)
        if key and key not in (secret.get("data") or {}) and key not in (secret.get("stringData") or {}):
            raise DependencyMissing(f"{path}: Secret {namespace}/{name} has no key {key!r}",
                                    reason="SecretKeyMissing", delay=30)


def reconcile_model(kube: Kube, body: dict) -> ModelResult:
    meta = body["metadata"]
    gen = meta.get("generation")
    old = body.get("status") or {}
    conds = list(old.get("conditions") or [])
    status: dict = {"observedGeneration": gen}
    events: list[tuple[str, str, str]] = []
    error: Exception | None = None
    try:
        model = ModelSpec.from_body(meta["name"], body.get("spec") or {})
        status["revision"] = model_revision(model)
        conds = cond.set_condition(conds, cond.VALID, True, "SpecValid", "spec is valid", gen)
        check_references(kube, meta["namespace"], model)
        conds = cond.set_condition(conds, cond.RESOLVED, True, "ReferencesResolved", "all referenced objects exist", gen)
        conds = cond.set_condition(conds, cond.READY, True, "Ready", f"revision {status['revision']}", gen)
    except SpecError as exc:
        error = exc
        conds = cond.set_condition(conds, cond.VALID, False, exc.reason, str(exc), gen)
        conds = cond.set_condition(conds, cond.READY, False, exc.reason, str(exc), gen)
    except DependencyMissing as exc:
        error = exc
        conds = cond.set_condition(conds, cond.RESOLVED, False, exc.reason, str(exc), gen)
        conds = cond.set_condition(conds, cond.READY, False, exc.reason, str(exc), gen)
    status["conditions"] = conds
    if "revision" not in status and old.get("revision"):
        status["revision"] = old["revision"]
    was = cond.get_condition(old.get("conditions"), cond.READY)
    now_ready = cond.get_condition(conds, cond.READY)
    if error is not None and (not was or was.get("reason") != now_ready["reason"]):
        events.append(("Warning", now_ready["reason"], now_ready["message"]))
    elif error is None and old.get("revision") != status.get("revision"):
        events.append(("Normal", "RevisionComputed", f"model revision {status['revision']}"))
    return ModelResult(status=status, events=events, error=error)
