"""Reconcile a DiffusionModel: validate what the schema cannot, compute its revision, set status.

The schema and CEL rules reject most bad input at admission. What is left for the operator:
referenced Secrets must exist (and carry the key named), the settings that gate development and
test features (``file://`` sources, fault injection), and the revision hash that pools use to
tell model versions apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import conditions as cond
from .conditions import Reason
from .errors import DependencyMissing, OperatorError, SpecError
from .kube import KubeAPI
from .spec import ModelSpec, model_revision


@dataclass
class ModelResult:
    status: dict
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    error: OperatorError | None = None


def check_references(kube: KubeAPI, namespace: str, model: ModelSpec, *, allow_file_sources: bool,
                     allow_fault_injection: bool = False) -> None:
    """What the schema cannot check: file:// and fault injection allowed, PVC and Secrets exist
    (with the key).

    ``file://`` reads a node's disk: only for local development, and only when the operator
    was started with ``--allow-file-sources``. ``spec.faultInjection`` makes the sampler fail
    on purpose: only for tests and demos, and only with ``--allow-fault-injection``.
    """
    src = model.source
    if src.scheme == "file" and not allow_file_sources:
        raise SpecError(f"spec.source.uri {src.uri!r}: file:// sources are for local development; start the "
                        "operator with --allow-file-sources to use them", reason=Reason.FILE_SOURCE_NOT_ALLOWED)
    if model.fault_injection and not allow_fault_injection:
        raise SpecError("spec.faultInjection: fault injection is for tests and demos only; start the operator "
                        "with --allow-fault-injection to use it", reason=Reason.FAULT_INJECTION_NOT_ALLOWED)
    if src.scheme == "pvc" and kube.get("v1", "PersistentVolumeClaim", src.pvc_claim, namespace) is None:
        raise DependencyMissing(f"spec.source.uri: PersistentVolumeClaim {namespace}/{src.pvc_claim} not found",
                                reason=Reason.CLAIM_NOT_FOUND, delay=30)
    wanted: list[tuple[str, str | None, str]] = []
    if src.token_secret:
        wanted.append((src.token_secret, src.token_key, "spec.source.tokenSecretRef"))
    if src.credentials_secret:
        wanted.append((src.credentials_secret, None, "spec.source.credentialsSecretRef"))
    for name, key, path in wanted:
        secret = kube.get("v1", "Secret", name, namespace)
        if secret is None:
            raise DependencyMissing(f"{path}: Secret {namespace}/{name} not found",
                                    reason=Reason.SECRET_NOT_FOUND, delay=30)
        if key and key not in (secret.get("data") or {}) and key not in (secret.get("stringData") or {}):
            raise DependencyMissing(f"{path}: Secret {namespace}/{name} has no key {key!r}",
                                    reason=Reason.SECRET_KEY_MISSING, delay=30)


def fault_injection_summary(model: ModelSpec) -> str:
    """What a model's fault injection does, in words (a condition message and an Event)."""
    text = (f"fault injection on (tests and demos only): errorRate {model.fault_error_rate:g} of requests "
            f"answered 500, latencySeconds {model.fault_latency_s:g} added per batch")
    return text + (f", every image rendered as {model.fault_image}" if model.fault_image else "")


def reconcile_model(kube: KubeAPI, body: dict, *, allow_file_sources: bool,
                    allow_fault_injection: bool = False) -> ModelResult:
    meta = body["metadata"]
    gen = meta.get("generation")
    old = body.get("status") or {}
    conds = list(old.get("conditions") or [])
    status: dict = {"observedGeneration": gen}
    events: list[tuple[str, str, str]] = []
    error: OperatorError | None = None
    model: ModelSpec | None = None
    try:
        model = ModelSpec.from_body(meta["name"], body.get("spec") or {})
        status["revision"] = model_revision(model)
        conds = cond.set_condition(conds, cond.VALID, True, Reason.SPEC_VALID, "spec is valid", gen)
        check_references(kube, meta["namespace"], model, allow_file_sources=allow_file_sources,
                         allow_fault_injection=allow_fault_injection)
        conds = cond.set_condition(conds, cond.RESOLVED, True, Reason.REFERENCES_RESOLVED,
                                   "all referenced objects exist", gen)
        ready = f"revision {status['revision']}"
        if model.fault_injection:
            ready += f"; {fault_injection_summary(model)}"
        conds = cond.set_condition(conds, cond.READY, True, Reason.READY, ready, gen)
    except SpecError as exc:
        error = exc
        conds = cond.set_condition(conds, cond.VALID, False, exc.reason, str(exc), gen)
        conds = cond.set_condition(conds, cond.READY, False, exc.reason, str(exc), gen)
    except OperatorError as exc:  # a missing Secret or PVC, or the API failing: retried
        error = exc
        if isinstance(exc, DependencyMissing):
            conds = cond.set_condition(conds, cond.RESOLVED, False, exc.reason, str(exc), gen)
        conds = cond.set_condition(conds, cond.READY, False, exc.reason, str(exc), gen)
    status["conditions"] = conds
    if "revision" not in status and old.get("revision"):
        status["revision"] = old["revision"]
    was = cond.get_condition(old.get("conditions"), cond.READY)
    now_ready = cond.get_condition(conds, cond.READY) or {}
    if error is not None and (not was or was.get("reason") != now_ready["reason"]):
        events.append(("Warning", now_ready["reason"], now_ready["message"]))
    elif error is None:
        new_revision = old.get("revision") != status.get("revision")
        if new_revision:
            events.append(("Normal", Reason.REVISION_COMPUTED, f"model revision {status['revision']}"))
        # Said once per change: a new revision, or one that was refused (operator without the flag).
        if model is not None and model.fault_injection and (new_revision or (was or {}).get("status") != "True"):
            events.append(("Warning", Reason.FAULT_INJECTION_ENABLED,
                           f"revision {status['revision']}: {fault_injection_summary(model)}"))
    return ModelResult(status=status, events=events, error=error)
