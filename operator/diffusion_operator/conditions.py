"""Status conditions in the ``metav1.Condition`` shape, and every type, reason and phase we set.

``set_condition`` moves ``lastTransitionTime`` only when the status flips, so re-computing
the same condition never changes the object (and never causes a write). The condition types,
reasons and phases are the single source for docs/api.md (a unit test compares them).
Rollout reasons (``RolloutStarted``, ``AvailabilityBurnRateExceeded``, ...) live with the
rollout core: ``rollout.state_machine.EventReason`` and ``rollout.verdict.Reason``.
"""

from __future__ import annotations

import datetime as dt
import enum


class ConditionType(enum.StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    VALID = "Valid"
    RESOLVED = "ReferencesResolved"
    TRAFFIC = "TrafficRouted"
    MONITORING = "MonitoringAvailable"
    ANALYSIS = "AnalysisValid"


class PoolPhase(enum.StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    PAUSED = "Paused"
    ROLLED_BACK = "RolledBack"


class Reason(enum.StrEnum):
    """Reasons of the conditions and Events the reconcilers set (not the rollout's)."""

    # Valid / ReferencesResolved
    SPEC_VALID = "SpecValid"
    INVALID_SPEC = "InvalidSpec"
    REFERENCES_RESOLVED = "ReferencesResolved"
    MODEL_NOT_FOUND = "ModelNotFound"
    FILE_SOURCE_NOT_ALLOWED = "FileSourceNotAllowed"
    FAULT_INJECTION_NOT_ALLOWED = "FaultInjectionNotAllowed"
    CLAIM_NOT_FOUND = "ClaimNotFound"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    # errors while applying (Ready=False)
    CHILD_REJECTED = "ChildRejected"
    API_UNAVAILABLE = "ApiUnavailable"
    REVISION_SNAPSHOT_MISSING = "RevisionSnapshotMissing"
    # Ready / Degraded
    READY = "Ready"
    REPLICAS_NOT_READY = "ReplicasNotReady"
    NO_READY_REPLICAS = "NoReadyReplicas"
    INSUFFICIENT_GPU = "InsufficientGPU"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CONTAINER_CONFIG_INVALID = "ContainerConfigInvalid"
    MODEL_FETCH_FAILED = "ModelFetchFailed"
    OUT_OF_MEMORY = "OutOfMemory"
    CONTAINER_CRASHING = "ContainerCrashing"
    AS_EXPECTED = "AsExpected"
    # Progressing
    STABLE = "Stable"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    # TrafficRouted
    HTTPROUTE_APPLIED = "HTTPRouteApplied"
    GATEWAY_API_MISSING = "GatewayAPIMissing"
    SERVICE_ROUTING = "ServiceRouting"
    # MonitoringAvailable
    MONITOR_APPLIED = "MonitorApplied"
    MONITORING_CRDS_MISSING = "MonitoringCRDsMissing"
    # AnalysisValid (rollout.checks)
    ANALYSIS_WINDOWS_FIT = "AnalysisWindowsFit"
    WINDOW_BELOW_SCRAPE_INTERVAL = "WindowBelowScrapeInterval"
    PAIR_CANNOT_ARM = "PairCannotArm"
    # DiffusionModel events
    REVISION_COMPUTED = "RevisionComputed"
    FAULT_INJECTION_ENABLED = "FaultInjectionEnabled"


#: Kept for the many call sites that read better as ``cond.READY``.
READY = ConditionType.READY
PROGRESSING = ConditionType.PROGRESSING
DEGRADED = ConditionType.DEGRADED
VALID = ConditionType.VALID
RESOLVED = ConditionType.RESOLVED
TRAFFIC = ConditionType.TRAFFIC
MONITORING = ConditionType.MONITORING
ANALYSIS = ConditionType.ANALYSIS


def now_iso(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict], type_: str, status: bool | str, reason: str, message: str,
                  generation: int | None, now: str | None = None) -> list[dict]:
    """Return a new list with ``type_`` set; other conditions are kept in order."""
    status_s = status if isinstance(status, str) else ("True" if status else "False")
    entry = {"type": str(type_), "status": status_s, "reason": str(reason), "message": message,
             "observedGeneration": generation}
    out = []
    found = False
    for c in conditions or []:
        if c.get("type") != type_:
            out.append(c)
            continue
        found = True
        ltt = c.get("lastTransitionTime") if c.get("status") == status_s else None
        out.append({**entry, "lastTransitionTime": ltt or now or now_iso()})
    if not found:
        out.append({**entry, "lastTransitionTime": now or now_iso()})
    return out


def get_condition(conditions: list[dict] | None, type_: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)
