"""The rollout state machine: (status, spec, observations) -> (new status, actions). Pure.

All rollout state lives in :class:`RolloutStatus` (``status.rollout`` of the InferencePool),
so an operator restarted mid-rollout carries on from the status alone. Time is passed in
(``Observations.now``), never read here; nothing is mutated in place.

Phases::

    Stable --new revision--> Pending --canary Ready--> Progressing --last step passed--> Succeeded
               ^                |  not Ready by deadline      |  fail verdict, deadline,
               |                v                             v  abort, error policy
           spec reverted     RolledBack  <--------------------+
                                ^     Paused <--> Progressing/Pending (SRE pause/resume,
                                                   error policy "pause")

- A new desired revision (not stable, not the current canary, not a remembered failure)
  starts a rollout: the canary is scaled up with weight 0 (``Pending``).
- Only a Ready canary gets traffic. Not Ready within ``progressDeadlineSeconds`` of the start
  -> roll back (``CanaryNotReady``).
- Golden-render gate (when the model lists ``goldenRenders``): a Ready canary still gets no
  traffic until the operator's comparison of its renders with the stable's
  (``Observations.golden``, :mod:`.golden`) passed. Failed -> roll back with the gate's reason
  (``GoldenRenderMismatch``, ``GoldenRenderBlank``, ``GoldenRenderNaN``) before any request;
  not judged (a revision could not render) -> hold and retry every analysis interval, and roll
  back at the progress deadline (``GoldenRenderUnavailable``).
- Each step sets the weight, then waits its pause. It advances when the pause is over, the
  canary is Ready and the latest analysis, taken after the step started, passed. Inconclusive
  and error verdicts hold the weight and never promote; a step that cannot advance within
  ``pause + progressDeadlineSeconds`` rolls back (``ProgressDeadlineExceeded``).
- A fail verdict rolls back at once, also while paused: weight 0, canary scaled down, phase
  ``RolledBack``, a Warning event whose reason names the SLI and whose message carries the
  value, threshold and window. The revision is remembered in ``failedRevisions`` and not
  retried while it is the desired revision; a spec change that produces another revision
  starts a new rollout, and an SRE ``resume`` on a rolled-back pool retries it explicitly.
- ``consecutiveErrorLimit`` error verdicts in a row apply ``errorPolicy``: ``rollback`` or
  ``pause`` (held until an SRE resumes). Any other verdict resets the count.
- After the last step the canary is promoted: it becomes stable, all traffic moves to it, and
  the old stable is scaled down ``scaleDownDelaySeconds`` later (``scaleDownQueue``).
- SRE actions (``promote``, ``abort``, ``pause``, ``resume``) arrive as ``verb@id`` strings
  (the ``diffusion.serving.dev/action`` annotation written by ``kubectl diffusion``); the
  value last handled is kept in the status, so an action left on the object is applied
  exactly once. ``promote`` promotes
  fully (skipping the remaining steps and analysis) and needs a Ready canary.
- A spec reverted to the stable revision cancels the rollout; a newer revision supersedes the
  one in flight.

Restart safety: a second call with the status the first returned and the same observations
returns that status unchanged and no actions. Actions describe what changed; the operator
should in addition converge the cluster on :func:`desired_weights` and
:func:`active_revisions` at every reconcile, so a crash between writing the status and
applying an action heals itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .verdict import Outcome, Verdict

__all__ = [
    "MAX_FAILED_REVISIONS",
    "MAX_HISTORY",
    "Action",
    "Decision",
    "EventReason",
    "Observations",
    "Phase",
    "RolloutSpec",
    "RolloutStatus",
    "SREAction",
    "Step",
    "active_revisions",
    "analysis_due",
    "canary_age_s",
    "desired_weights",
    "format_time",
    "golden_retry_at",
    "next_wakeup_s",
    "parse_time",
    "transition",
]

MAX_HISTORY = 10
MAX_FAILED_REVISIONS = 10
MAX_SCALE_DOWN_QUEUE = 10
#: The CRD's maxLength for messages.
MAX_MESSAGE = 4096


def _trim(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


class Phase:
    STABLE = "Stable"
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"

    IN_FLIGHT = (PENDING, PROGRESSING, PAUSED)


class EventReason:
    """Event reasons emitted here; a fail verdict's own reason (e.g.
    ``AvailabilityBurnRateExceeded``) is used as is."""

    REVISION_DEPLOYED = "RevisionDeployed"
    ROLLOUT_STARTED = "RolloutStarted"
    TRAFFIC_WEIGHT_UPDATED = "TrafficWeightUpdated"
    ROLLOUT_PROMOTED = "RolloutPromoted"
    PROMOTED_BY_USER = "RolloutPromotedByUser"
    ROLLOUT_ABORTED = "RolloutAborted"
    ROLLOUT_PAUSED = "RolloutPaused"
    ROLLOUT_RESUMED = "RolloutResumed"
    ROLLOUT_RETRIED = "RolloutRetried"
    ROLLOUT_CANCELLED = "RolloutCancelled"
    ROLLOUT_SUPERSEDED = "RolloutSuperseded"
    CANARY_NOT_READY = "CanaryNotReady"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    ERROR_LIMIT_REACHED = "AnalysisErrorLimitReached"
    PREVIOUSLY_FAILED = "RevisionPreviouslyFailed"
    ACTION_IGNORED = "ActionIgnored"
    ANALYSIS_ARMING = "AnalysisArming"
    #: The canary's golden renders matched the stable's (:mod:`.golden`); failures use the
    #: gate's own reasons (``GoldenRenderMismatch``, ``GoldenRenderBlank``, ``GoldenRenderNaN``).
    GOLDEN_RENDER_PASSED = "GoldenRenderPassed"
    GOLDEN_RENDER_UNAVAILABLE = "GoldenRenderUnavailable"
    REVISION_SCALED_DOWN = "RevisionScaledDown"


# --------------------------------------------------------------------------- time helpers


def format_time(t: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` (microseconds kept when present)."""
    if t.tzinfo is None:
        raise ValueError("naive datetime; pass an aware one (UTC)")
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _secs(a: datetime, b: datetime) -> float:
    return (a - b).total_seconds()


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class Step:
    weight: int
    pause_s: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.weight <= 100:
            raise ValueError(f"step weight must be in 1..100, got {self.weight}")
        if self.pause_s < 0:
            raise ValueError(f"step pause must be >= 0 seconds, got {self.pause_s}")


@dataclass(frozen=True)
class RolloutSpec:
    steps: tuple[Step, ...] = (Step(10, 300), Step(25, 300), Step(50, 300), Step(100, 300))
    analysis_interval_s: int = 60
    progress_deadline_s: int = 600
    error_policy: str = "rollback"
    consecutive_error_limit: int = 4
    scale_down_delay_s: int = 30

    def __post_init__(self) -> None:
        if self.error_policy not in ("pause", "rollback"):
            raise ValueError(f"errorPolicy must be 'pause' or 'rollback', got {self.error_policy!r}")
        if self.analysis_interval_s <= 0 or self.progress_deadline_s <= 0:
            raise ValueError("analysis interval and progress deadline must be positive")
        if self.consecutive_error_limit < 1 or self.scale_down_delay_s < 0:
            raise ValueError("consecutiveErrorLimit >= 1 and scaleDownDelaySeconds >= 0 required")

    @classmethod
    def from_spec(cls, rollout: Mapping[str, Any] | None) -> RolloutSpec:
        """From ``InferencePool.spec.rollout`` (field names of the InferencePool CRD;
        ``errorPolicy`` ``Pause``/``Rollback`` in any case). Missing fields take the defaults."""
        r = dict(rollout or {})
        analysis = r.get("analysis") or {}
        kwargs: dict[str, Any] = {}
        if r.get("steps") is not None:
            kwargs["steps"] = tuple(
                Step(int(s["weight"]), int(s.get("pauseSeconds", s.get("pause", 0)) or 0)) for s in r["steps"]
            )
        for key, names, src in (
            ("analysis_interval_s", ("intervalSeconds",), analysis),
            ("progress_deadline_s", ("progressDeadlineSeconds",), r),
            ("error_policy", ("errorPolicy",), r),
            ("consecutive_error_limit", ("consecutiveErrorLimit",), analysis),
            ("scale_down_delay_s", ("scaleDownDelaySeconds",), r),
        ):
            for name in names:
                value = src.get(name, r.get(name))
                if value is not None:
                    kwargs[key] = value if key == "error_policy" else int(value)
                    break
        if "error_policy" in kwargs:
            kwargs["error_policy"] = str(kwargs["error_policy"]).lower()
        return cls(**kwargs)


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class RolloutStatus:
    """``status.rollout``. Serialize with :meth:`to_dict`, read back with :meth:`from_dict`."""

    phase: str = Phase.STABLE
    stable_revision: str | None = None
    canary_revision: str | None = None
    current_step: int | None = None
    canary_weight: int = 0
    rollout_started_at: str | None = None
    step_started_at: str | None = None
    traffic_started_at: str | None = None
    consecutive_errors: int = 0
    paused_by: str | None = None
    last_analysis: Mapping[str, Any] | None = None
    last_action: str | None = None
    reason: str | None = None
    message: str | None = None
    failed_revisions: tuple[Mapping[str, Any], ...] = ()
    history: tuple[Mapping[str, Any], ...] = ()
    scale_down_queue: tuple[Mapping[str, Any], ...] = ()
    #: The golden-render gate's last result for the canary (``golden.GoldenResult.to_status``).
    golden_render: Mapping[str, Any] | None = None

    _KEYS = {
        "phase": "phase",
        "stable_revision": "stableRevision",
        "canary_revision": "canaryRevision",
        "current_step": "currentStep",
        "canary_weight": "canaryWeight",
        "rollout_started_at": "rolloutStartedAt",
        "step_started_at": "stepStartedAt",
        "traffic_started_at": "trafficStartedAt",
        "consecutive_errors": "consecutiveErrors",
        "paused_by": "pausedBy",
        "last_analysis": "lastAnalysis",
        "last_action": "lastAction",
        "reason": "reason",
        "message": "message",
        "failed_revisions": "failedRevisions",
        "history": "history",
        "scale_down_queue": "scaleDownQueue",
        "golden_render": "goldenRender",
    }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr, key in self._KEYS.items():
            value = getattr(self, attr)
            if isinstance(value, tuple):
                value = [dict(v) for v in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            out[key] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RolloutStatus:
        data = data or {}
        kwargs: dict[str, Any] = {}
        for attr, key in cls._KEYS.items():
            if key not in data or data[key] is None:
                continue
            value = data[key]
            if attr in ("failed_revisions", "history", "scale_down_queue"):
                value = tuple(dict(v) for v in value)
            elif attr in ("current_step", "canary_weight", "consecutive_errors"):
                value = int(value)
            kwargs[attr] = value
        return cls(**kwargs)

    @property
    def failed_revision_names(self) -> tuple[str, ...]:
        return tuple(f["revision"] for f in self.failed_revisions)


# --------------------------------------------------------------------------- observations / actions


@dataclass(frozen=True)
class SREAction:
    """An SRE request: ``verb`` in promote|abort|pause|resume, ``key`` unique per request."""

    verb: str
    key: str

    VERBS = ("promote", "abort", "pause", "resume")

    @classmethod
    def parse(cls, value: str | None) -> SREAction | None:
        """``'pause@2025-01-01T00:00:00Z'`` -> ``SREAction('pause', <the whole string>)``.

        Unknown verbs give ``None`` (the operator should log them).
        """
        if not value:
            return None
        verb = value.split("@", 1)[0].strip().lower()
        if verb not in cls.VERBS:
            return None
        return cls(verb=verb, key=value.strip())


@dataclass(frozen=True)
class Observations:
    now: datetime
    desired_revision: str
    canary_ready: bool = False
    verdict: Verdict | None = None
    #: When the verdict was measured; defaults to ``now``.
    verdict_at: datetime | None = None
    action: SREAction | None = None
    #: Whether the canary's model lists golden renders: then it gets no traffic before
    #: ``golden`` (the gate's result for the canary revision) says ``Passed``.
    golden_gate: bool = False
    golden: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Action:
    """One thing for the operator to do. ``kind`` is one of:

    - ``set-weights``: route ``weights`` (revision -> percent, summing to 100);
    - ``scale-up`` / ``scale-down``: the Deployment of ``revision`` (scale-down: 0 replicas);
    - ``promote``: ``revision`` is the new stable, ``previous`` the old one;
    - ``rollback``: ``revision`` was rolled back for ``reason``;
    - ``event``: emit a Kubernetes Event (``event_type`` Normal|Warning, ``reason``, ``message``).
    """

    kind: str
    revision: str | None = None
    previous: str | None = None
    weights: Mapping[str, int] | None = None
    event_type: str | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Decision:
    status: RolloutStatus
    actions: tuple[Action, ...] = ()

    @property
    def events(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind == "event")


# --------------------------------------------------------------------------- level-based views


def desired_weights(status: RolloutStatus) -> dict[str, int]:
    """Route weights the cluster should have for this status (apply at every reconcile)."""
    if not status.stable_revision:
        return {}
    if status.canary_revision and status.canary_weight > 0:
        if status.canary_weight >= 100:
            return {status.stable_revision: 0, status.canary_revision: 100}
        return {status.stable_revision: 100 - status.canary_weight, status.canary_revision: status.canary_weight}
    return {status.stable_revision: 100}


def active_revisions(status: RolloutStatus) -> tuple[str, ...]:
    """Revisions whose Deployments should be running; any other may be deleted."""
    revs = [status.stable_revision, status.canary_revision] + [q["revision"] for q in status.scale_down_queue]
    return tuple(dict.fromkeys(r for r in revs if r))


def canary_age_s(status: RolloutStatus, now: datetime) -> float | None:
    """Seconds the canary has carried traffic (``None`` before it got any)."""
    started = parse_time(status.traffic_started_at)
    return None if started is None or not status.canary_revision else max(0.0, _secs(now, started))


def analysis_due(status: RolloutStatus, spec: RolloutSpec, now: datetime) -> bool:
    """Whether the operator should measure and pass a verdict now."""
    if not status.canary_revision or status.canary_weight <= 0 or status.phase not in Phase.IN_FLIGHT:
        return False
    last = parse_time((status.last_analysis or {}).get("at"))
    # A clock that stepped back (now before the last analysis) must not silence the analysis
    # until it catches up again: measure now, and count the interval from here.
    return last is None or now < last or _secs(now, last) >= spec.analysis_interval_s


def next_wakeup_s(status: RolloutStatus, spec: RolloutSpec, now: datetime) -> float | None:
    """Seconds until something time-driven can happen (for a timer/requeue), or ``None``."""
    times: list[float] = []
    for q in status.scale_down_queue:
        at = parse_time(q.get("at"))
        if at:
            times.append(_secs(at, now))
    if status.canary_revision and status.phase in (Phase.PENDING, Phase.PROGRESSING):
        if status.phase == Phase.PENDING:
            started = parse_time(status.rollout_started_at)
            if started:
                times.append(_secs(started, now) + spec.progress_deadline_s)
            retry = golden_retry_at(status, spec)
            if retry is not None:
                times.append(_secs(retry, now))
        else:
            step = _step(spec, status.current_step)
            started = parse_time(status.step_started_at)
            if started:
                pause = step.pause_s if step else 0
                times.append(_secs(started, now) + pause)
                times.append(_secs(started, now) + pause + spec.progress_deadline_s)
    if status.canary_revision and status.canary_weight > 0 and status.phase in Phase.IN_FLIGHT:
        last = parse_time((status.last_analysis or {}).get("at"))
        times.append(0.0 if last is None or last > now else _secs(last, now) + spec.analysis_interval_s)
    future = [max(0.0, t) for t in times]
    return min(future) if future else None


def golden_retry_at(status: RolloutStatus, spec: RolloutSpec) -> datetime | None:
    """When golden renders the canary could not make (outcome ``Pending``) are tried again: one
    analysis interval after the last try. None when there is nothing to retry."""
    golden = status.golden_render or {}
    tried = parse_time(golden.get("at"))
    if golden.get("revision") != status.canary_revision or golden.get("outcome") != "Pending" or tried is None:
        return None
    return tried + timedelta(seconds=spec.analysis_interval_s)


def _step(spec: RolloutSpec, index: int | None) -> Step | None:
    if index is None or not spec.steps:
        return None
    return spec.steps[min(index, len(spec.steps) - 1)]


# --------------------------------------------------------------------------- transition


class _Run:
    """Mutable scratchpad for one transition; the result is frozen again in ``transition``."""

    def __init__(self, status: RolloutStatus, spec: RolloutSpec, obs: Observations) -> None:
        self.s: dict[str, Any] = dataclasses.asdict(status)
        self.spec = spec
        self.obs = obs
        self.now = obs.now
        self.now_s = format_time(obs.now)
        self.actions: list[Action] = []

    # ---- helpers

    def set(self, **kw: Any) -> None:
        self.s.update(kw)

    def event(self, event_type: str, reason: str, message: str) -> None:
        self.actions.append(Action("event", event_type=event_type, reason=reason, message=message))

    def weights(self) -> None:
        self.actions.append(Action("set-weights", weights=desired_weights(RolloutStatus(**self._frozen()))))

    def _frozen(self) -> dict[str, Any]:
        d = dict(self.s)
        for key in ("failed_revisions", "history", "scale_down_queue"):
            d[key] = tuple(d[key])
        return d

    def result(self) -> RolloutStatus:
        return RolloutStatus(**self._frozen())

    def _history(self, outcome: str, reason: str, message: str) -> None:
        entry = {
            "canaryRevision": self.s["canary_revision"],
            "stableRevision": self.s["stable_revision"],
            "startedAt": self.s["rollout_started_at"],
            "finishedAt": self.now_s,
            "outcome": outcome,
            "reason": reason,
            "message": message,
        }
        self.s["history"] = (list(self.s["history"]) + [entry])[-MAX_HISTORY:]

    def _clear_canary(self, phase: str, reason: str, message: str) -> None:
        self.set(
            phase=phase,
            canary_revision=None,
            current_step=None,
            canary_weight=0,
            step_started_at=None,
            traffic_started_at=None,
            consecutive_errors=0,
            paused_by=None,
            reason=reason,
            message=message,
        )

    # ---- terminal moves

    def rollback(self, reason: str, message: str, outcome: str = "RolledBack") -> None:
        rev = self.s["canary_revision"]
        message = _trim(message)
        self._history(outcome, reason, message)
        failed = [f for f in self.s["failed_revisions"] if f["revision"] != rev]
        failed.append({"revision": rev, "reason": reason, "message": message, "at": self.now_s})
        self.s["failed_revisions"] = failed[-MAX_FAILED_REVISIONS:]
        self._drain_canary(rev)
        self._clear_canary(Phase.ROLLED_BACK, reason, message)
        self.weights()
        self.actions.append(Action("rollback", revision=rev, reason=reason, message=message))
        self.event("Warning", reason, f"rolled back revision {rev}: {message}")

    def promote(self, reason: str, message: str) -> None:
        new, old = self.s["canary_revision"], self.s["stable_revision"]
        self._history("Promoted", reason, message)
        self._clear_canary(Phase.SUCCEEDED, reason, message)
        self.set(stable_revision=new)
        if old and old != new:
            at = format_time(self.now + timedelta(seconds=self.spec.scale_down_delay_s))
            queue = [q for q in self.s["scale_down_queue"] if q["revision"] not in (old, new)]
            self.s["scale_down_queue"] = (queue + [{"revision": old, "at": at}])[-MAX_SCALE_DOWN_QUEUE:]
        self.weights()
        self.actions.append(Action("promote", revision=new, previous=old, reason=reason, message=message))
        self.event("Normal", reason, f"promoted revision {new} (previous {old}): {message}")

    def end_canary(self, outcome: str, reason: str, message: str, phase: str) -> None:
        rev = self.s["canary_revision"]
        self._history(outcome, reason, message)
        self._drain_canary(rev)
        self._clear_canary(phase, reason, message)
        self.weights()
        self.event("Normal", reason, f"revision {rev}: {message}")

    def _drain_canary(self, rev: str | None) -> None:
        """Traffic leaves the canary now (weights), its pods after ``scaleDownDelaySeconds``: the
        data plane applies a route change a moment after the HTTPRoute is written, and requests
        it still sends to a deleted Service or a terminating pod fail (measured through Traefik:
        a 500 for the missing Service, 503 from the draining sampler). The queue entry keeps the
        canary's last weight, so it keeps the replicas it had, not the stable's count."""
        if not rev:
            return
        at = format_time(self.now + timedelta(seconds=self.spec.scale_down_delay_s))
        queue = [q for q in self.s["scale_down_queue"] if q["revision"] != rev]
        entry = {"revision": rev, "at": at, "weight": self.s["canary_weight"]}
        self.s["scale_down_queue"] = (queue + [entry])[-MAX_SCALE_DOWN_QUEUE:]

    # ---- steps

    def enter_step(self, index: int) -> None:
        if index >= len(self.spec.steps):
            self.promote(EventReason.ROLLOUT_PROMOTED, "all steps passed their analysis")
            return
        step = self.spec.steps[index]
        first = self.s["traffic_started_at"] is None
        self.set(
            phase=Phase.PROGRESSING,
            current_step=index,
            canary_weight=step.weight,
            step_started_at=self.now_s,
            traffic_started_at=self.s["traffic_started_at"] or self.now_s,
            reason=EventReason.TRAFFIC_WEIGHT_UPDATED,
            message=f"step {index + 1}/{len(self.spec.steps)}: canary weight {step.weight}%",
        )
        self.weights()
        self.event(
            "Normal",
            EventReason.TRAFFIC_WEIGHT_UPDATED,
            ("canary Ready; " if first else "") + self.s["message"],
        )


def _record_verdict(run: _Run) -> None:
    """Fold a fresh verdict into the status; may roll back or apply the error policy."""
    obs, s = run.obs, run.s
    if obs.verdict is None or s["canary_weight"] <= 0 or s["phase"] not in (Phase.PROGRESSING, Phase.PAUSED):
        return
    at = obs.verdict_at or obs.now
    last_at = parse_time((s["last_analysis"] or {}).get("at"))
    clock_stepped_back = last_at is not None and obs.now < last_at
    if last_at is not None and at <= last_at and not clock_stepped_back:
        return  # already counted (restart or a repeated call), or measured before the last one
    v = obs.verdict
    s["last_analysis"] = _analysis_summary(v, at)
    if v.outcome == Outcome.FAIL:
        run.rollback(v.reason, v.message)
        return
    if v.outcome != Outcome.ERROR:
        s["consecutive_errors"] = 0
        return
    s["consecutive_errors"] += 1
    limit = run.spec.consecutive_error_limit
    if s["consecutive_errors"] < limit or s["phase"] == Phase.PAUSED:
        return
    message = f"{s['consecutive_errors']} consecutive analysis errors (limit {limit}): {v.message}"
    if run.spec.error_policy == "rollback":
        run.rollback(EventReason.ERROR_LIMIT_REACHED, message)
    else:
        run.set(phase=Phase.PAUSED, paused_by="errorPolicy", reason=EventReason.ERROR_LIMIT_REACHED, message=message)
        run.event("Warning", EventReason.ERROR_LIMIT_REACHED, f"paused: {message}")


def _sig(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.4g}")


def _analysis_summary(v: Verdict, at: datetime) -> dict[str, Any]:
    burns = []
    for p in v.pairs:
        burns.append(
            {
                "sli": p.sli,
                "factor": p.pair.factor,
                "longWindowSeconds": p.pair.long_s,
                "shortWindowSeconds": p.pair.short_s,
                "longBurnRate": _sig(p.canary_long.burn),
                "shortBurnRate": _sig(p.canary_short.burn),
                "stableLongBurnRate": _sig(p.stable_long.burn) if p.stable_long else None,
                "stableShortBurnRate": _sig(p.stable_short.burn) if p.stable_short else None,
                "requests": _sig(p.canary_requests),
                "state": "tripped" if p.tripped else (p.skipped or "ok"),
                "method": p.method or None,
                "evidence": _sig(p.evidence.log_lr) if p.evidence else None,
            }
        )
    return {
        "at": format_time(at),
        "outcome": v.outcome.value,
        "reason": v.reason,
        "message": _trim(v.message),
        "burnRates": burns,
    }


def _apply_action(run: _Run) -> None:
    act, s = run.obs.action, run.s
    if act is None or act.key == s["last_action"]:
        return
    s["last_action"] = act.key
    phase = s["phase"]
    in_flight = bool(s["canary_revision"]) and phase in Phase.IN_FLIGHT

    def ignored(why: str) -> None:
        run.event("Warning", EventReason.ACTION_IGNORED, f"{act.verb} ignored: {why}")

    if act.verb == "abort":
        if not in_flight:
            return ignored(f"no rollout in progress (phase {phase})")
        run.rollback(EventReason.ROLLOUT_ABORTED, "aborted by an SRE", outcome="Aborted")
    elif act.verb == "promote":
        if not in_flight:
            return ignored(f"no rollout in progress (phase {phase})")
        if not run.obs.canary_ready:
            return ignored(f"canary {s['canary_revision']} is not Ready")
        if _fresh_fail(run):
            # The analysis of this very pass failed: it rolls the canary back below. Say so
            # instead of promoting over it (and dropping the failure without trace).
            assert run.obs.verdict is not None
            return ignored(f"the analysis measured now failed ({run.obs.verdict.reason}: {run.obs.verdict.message}); "
                           "the canary is rolled back; resume to retry it, then promote")
        run.promote(EventReason.PROMOTED_BY_USER, "promoted by an SRE, remaining steps skipped")
    elif act.verb == "pause":
        if not in_flight or phase == Phase.PAUSED:
            return ignored(f"nothing to pause (phase {phase})")
        run.set(phase=Phase.PAUSED, paused_by="user", reason=EventReason.ROLLOUT_PAUSED, message="paused by an SRE")
        run.event("Normal", EventReason.ROLLOUT_PAUSED, f"rollout of {s['canary_revision']} paused by an SRE")
    elif act.verb == "resume":
        if in_flight and phase == Phase.PAUSED:
            # The step (or the wait for Ready) starts over: its pause and deadline exclude the pause.
            if s["current_step"] is None:
                run.set(phase=Phase.PENDING, rollout_started_at=run.now_s)
            else:
                run.set(phase=Phase.PROGRESSING, step_started_at=run.now_s)
            run.set(paused_by=None, consecutive_errors=0, reason=EventReason.ROLLOUT_RESUMED,
                    message="resumed by an SRE")
            run.event("Normal", EventReason.ROLLOUT_RESUMED, f"rollout of {s['canary_revision']} resumed")
        elif phase == Phase.ROLLED_BACK and run.obs.desired_revision in [f["revision"] for f in s["failed_revisions"]]:
            rev = run.obs.desired_revision
            s["failed_revisions"] = [f for f in s["failed_revisions"] if f["revision"] != rev]
            run.event("Normal", EventReason.ROLLOUT_RETRIED, f"revision {rev} will be retried")
        else:
            ignored(f"nothing to resume (phase {phase})")


def _fresh_fail(run: _Run) -> bool:
    """Whether this pass carries a FAIL verdict that ``_record_verdict`` will act on."""
    v, s = run.obs.verdict, run.s
    if v is None or v.outcome != Outcome.FAIL or s["canary_weight"] <= 0:
        return False
    last_at = parse_time((s["last_analysis"] or {}).get("at"))
    return last_at is None or (run.obs.verdict_at or run.obs.now) > last_at or run.obs.now < last_at


def _track_revision(run: _Run) -> None:
    s, desired = run.s, run.obs.desired_revision
    if not s["stable_revision"]:
        run.set(stable_revision=desired, phase=Phase.STABLE, reason=EventReason.REVISION_DEPLOYED,
                message=f"first revision {desired} deployed without a canary")
        run.actions.append(Action("scale-up", revision=desired))
        run.weights()
        run.event("Normal", EventReason.REVISION_DEPLOYED, s["message"])
        return
    if desired == s["stable_revision"]:
        if s["canary_revision"]:
            run.end_canary(
                "Cancelled", EventReason.ROLLOUT_CANCELLED, "spec reverted to the stable revision", Phase.STABLE
            )
        return
    if desired == s["canary_revision"]:
        return
    if desired in [f["revision"] for f in s["failed_revisions"]]:
        # Already rolled back (by this revision or another): keep the reason that explains it.
        if s["canary_revision"]:
            run.end_canary("Superseded", EventReason.ROLLOUT_SUPERSEDED, f"superseded by {desired}", Phase.STABLE)
        if s["phase"] != Phase.ROLLED_BACK:
            msg = f"revision {desired} failed before and is not retried; change the spec or resume to retry"
            run.set(phase=Phase.ROLLED_BACK, reason=EventReason.PREVIOUSLY_FAILED, message=msg)
            run.event("Warning", EventReason.PREVIOUSLY_FAILED, msg)
        return
    paused_by_sre = s["phase"] == Phase.PAUSED and s["paused_by"] == "user"
    if s["canary_revision"]:
        run.end_canary("Superseded", EventReason.ROLLOUT_SUPERSEDED, f"superseded by {desired}", Phase.STABLE)
    run.set(
        phase=Phase.PENDING,
        canary_revision=desired,
        current_step=None,
        canary_weight=0,
        rollout_started_at=run.now_s,
        step_started_at=None,
        traffic_started_at=None,
        consecutive_errors=0,
        paused_by=None,
        last_analysis=None,
        golden_render=None,
        reason=EventReason.ROLLOUT_STARTED,
        message=f"canary {desired} scaling up; no traffic until Ready",
    )
    run.actions.append(Action("scale-up", revision=desired))
    run.event("Normal", EventReason.ROLLOUT_STARTED, f"rollout of {desired} over {s['stable_revision']} started")
    if paused_by_sre:
        # An SRE paused the rollout; a newer revision pushed meanwhile (GitOps keeps syncing)
        # must not silently lift that pause. The canary warms up, but gets no traffic.
        run.set(phase=Phase.PAUSED, paused_by="user", reason=EventReason.ROLLOUT_PAUSED,
                message=f"canary {desired} waits at weight 0: the rollout was paused by an SRE; resume to continue")
        run.event("Normal", EventReason.ROLLOUT_PAUSED, s["message"])


def _progress(run: _Run) -> None:
    s, spec, obs = run.s, run.spec, run.obs
    if not s["canary_revision"]:
        return
    if s["phase"] == Phase.PENDING:
        started = parse_time(s["rollout_started_at"]) or obs.now
        # Readiness observed at the very instant the rollout started was taken before the
        # canary was scaled up (a reused Deployment, a retry): wait for a later observation.
        gate = None
        if obs.canary_ready and obs.now > started:
            gate = _golden_gate(run)
            if gate == "open":
                run.enter_step(0)
            if gate != "held":
                return
        if _secs(obs.now, started) >= spec.progress_deadline_s:
            if gate == "held":
                run.rollback(
                    EventReason.GOLDEN_RENDER_UNAVAILABLE,
                    f"golden renders not judged within progressDeadlineSeconds={spec.progress_deadline_s}: "
                    f"{(s['golden_render'] or {}).get('message') or 'no result'}",
                )
                return
            run.rollback(
                EventReason.CANARY_NOT_READY,
                f"canary not Ready within progressDeadlineSeconds={spec.progress_deadline_s}",
            )
        return
    if s["phase"] != Phase.PROGRESSING:
        return
    # Steps removed from the spec mid-rollout: past the last step means "ready to promote".
    index = s["current_step"] or 0
    step = spec.steps[index] if index < len(spec.steps) else None
    started = parse_time(s["step_started_at"]) or obs.now
    pause = step.pause_s if step else 0
    last = s["last_analysis"] or {}
    last_at = parse_time(last.get("at"))
    passed = last.get("outcome") == Outcome.PASS.value and last_at is not None and last_at > started
    if _secs(obs.now, started) >= pause and passed and obs.canary_ready:
        waiting = unarmed_pairs_blocking(spec, index, last)
        if not waiting:
            run.enter_step(index + 1)
            return
        run.set(reason=EventReason.ANALYSIS_ARMING,
                message=f"step {index + 1} holds until {waiting[0]} has seen its short window of canary traffic")
    if _secs(obs.now, started) >= pause + spec.progress_deadline_s:
        why = last.get("reason") or "no analysis"
        if not obs.canary_ready:
            why = "canary not Ready"
        run.rollback(
            EventReason.PROGRESS_DEADLINE_EXCEEDED,
            f"step {index + 1} could not advance within pause + progressDeadlineSeconds "
            f"({pause}+{spec.progress_deadline_s}s); last analysis: {why}: {last.get('message', '')}".rstrip(": "),
        )


def _golden_gate(run: _Run) -> str:
    """For a Ready canary in Pending: ``open`` (no gate, or its renders passed), ``failed``
    (rolled back here: the renders failed) or ``held`` (not judged yet)."""
    obs, s = run.obs, run.s
    if not obs.golden_gate:
        return "open"
    rev = s["canary_revision"]
    stored = s["golden_render"] or {}
    if stored.get("revision") == rev and stored.get("outcome") == "Passed":
        return "open"
    got = obs.golden
    if got is None or got.get("revision") != rev:
        run.set(message=f"canary {rev} Ready; no traffic until its golden renders are judged")
        return "held"
    run.set(golden_render=dict(got))
    if got.get("outcome") == "Passed":
        run.event("Normal", EventReason.GOLDEN_RENDER_PASSED, f"revision {rev}: {got.get('message')}")
        return "open"
    if got.get("outcome") == "Failed":
        run.rollback(got.get("reason") or "GoldenRenderMismatch", got.get("message") or "golden renders failed")
        return "failed"
    run.set(reason=got.get("reason") or EventReason.GOLDEN_RENDER_UNAVAILABLE,
            message=_trim(f"canary {rev} Ready; no traffic until its golden renders are judged: {got.get('message')}"))
    return "held"


def traffic_seconds(spec: RolloutSpec, after_step: int = -1) -> int:
    """Seconds of canary traffic the steps after ``after_step`` guarantee (their pauses)."""
    return sum(step.pause_s for step in spec.steps[after_step + 1:])


def unarmed_pairs_blocking(spec: RolloutSpec, index: int, last_analysis: Mapping[str, Any]) -> list[str]:
    """Paging pairs the last analysis could not judge yet (warming up) and that the steps after
    ``index`` are too short to arm: advancing now would promote without them.

    A pair arms once the canary has carried traffic for its short window. Without this hold, a
    canary burning 10x its budget is promoted on the 14.4x pair's pass alone whenever the 6x
    pair's short window is longer than the steps (three 60 s steps at a 60 s interval). Pairs
    with a factor above 1 gate: they stand for burning the budget faster than it accrues; the
    1x pair catches slow burns that a canary of minutes cannot judge, so it never holds a step.
    The pool's ``AnalysisValid`` condition warns at apply time when a gating pair cannot arm
    within the steps (the rollout then holds at that step until it does).
    """
    remaining = traffic_seconds(spec, index)
    out = []
    for br in last_analysis.get("burnRates") or ():
        short = br.get("shortWindowSeconds") or 0
        if br.get("state") == "warming-up" and (br.get("factor") or 0) > 1 and short > remaining:
            out.append(f"{br.get('sli')} {br.get('factor'):g}x ({br.get('longWindowSeconds')}s/{short}s)")
    return sorted(set(out))


def _scale_down_due(run: _Run) -> None:
    keep = []
    in_use = (run.s["stable_revision"], run.s["canary_revision"])
    for q in run.s["scale_down_queue"]:
        if q["revision"] in in_use:  # rolled forward onto it again: keep it running
            continue
        at = parse_time(q.get("at"))
        if at is not None and at <= run.now:
            run.actions.append(Action("scale-down", revision=q["revision"]))
            run.event("Normal", EventReason.REVISION_SCALED_DOWN, f"old revision {q['revision']} scaled down")
        else:
            keep.append(q)
    run.s["scale_down_queue"] = keep


def transition(status: RolloutStatus, spec: RolloutSpec, obs: Observations) -> Decision:
    """One reconcile of the rollout. Pure: same inputs, same output; inputs untouched."""
    if obs.now.tzinfo is None:
        raise ValueError("Observations.now must be timezone-aware")
    run = _Run(status, spec, obs)
    _apply_action(run)
    _track_revision(run)
    _record_verdict(run)
    _progress(run)
    _scale_down_due(run)
    return Decision(run.result(), tuple(run.actions))
