"""``kubectl diffusion``: SRE actions on an InferencePool's rollout, and its status at a glance.

Installed as the ``kubectl-diffusion`` console script, so kubectl finds it on the PATH as the
``diffusion`` plugin::

    kubectl diffusion status  POOL [-n NS]
    kubectl diffusion promote POOL [-n NS]   # skip the remaining steps, promote the canary now
    kubectl diffusion abort   POOL [-n NS]   # roll the canary back now
    kubectl diffusion pause   POOL [-n NS]   # hold the current weight until resumed
    kubectl diffusion resume  POOL [-n NS]   # continue (or retry a rolled-back revision)

Why an annotation, not the spec or the status
---------------------------------------------
An action is written as the annotation ``diffusion.serving.dev/action: "<verb>@<unique id>"``
on the live InferencePool. The spec belongs to Git: a plugin that edited it would make Argo CD
or Flux report drift (OutOfSync) and, with self-heal, revert the SRE's abort (argo-cd#12967,
flagger#1504). Annotations the Git manifest does not set are not part of the diff Argo CD and
Flux compute, so they see no drift. The status belongs to the operator, which rewrites it
whole every reconcile; a user's write there would race the operator's. The unique id makes an
action idempotent: the operator records the last value it handled in
``status.rollout.lastAction`` and applies each id exactly once, so the annotation can stay on
the object and an operator restart does not replay it, while a second ``promote`` (a new id)
is a new request.

This module must not decide anything about the rollout: it only writes the request and reads
the status. The pure formatting functions (:func:`format_status`, :func:`action_value`) are
tested without a cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from . import API_GROUP, API_VERSION

__all__ = [
    "ACTION_ANNOTATION",
    "VERBS",
    "action_patch",
    "action_value",
    "build_parser",
    "format_status",
    "main",
]

ACTION_ANNOTATION = f"{API_GROUP}/action"
PLURAL = "inferencepools"
#: Same verbs as ``rollout.state_machine.SREAction.VERBS``.
VERBS = ("promote", "abort", "pause", "resume")
HISTORY_ROWS = 5
MISSING = "-"

_VERB_HELP = {
    "promote": "promote the canary now: skip the remaining steps and analysis (needs a Ready canary)",
    "abort": "abort the rollout: canary weight 0, canary scaled down, phase RolledBack",
    "pause": "hold the current step and weight until resumed (analysis keeps running)",
    "resume": "continue a paused rollout, or retry a rolled-back revision",
}
_ANNOTATION_WHY = (
    f"The request is written as the annotation {ACTION_ANNOTATION}=<verb>@<unique id> on the live "
    "InferencePool, never into its spec: the spec is owned by Git, and Argo CD or Flux would "
    "otherwise report drift and revert it. The operator applies each id once and records it "
    "in status.rollout.lastAction."
)


# --------------------------------------------------------------------------- pure helpers


def action_value(verb: str, now: datetime | None = None, nonce: str | None = None) -> str:
    """``'abort@20250101T120000Z-1a2b3c4d'``: the verb and an id unique per request.

    The time makes the id readable in ``kubectl get -o yaml``; the random suffix keeps two
    requests within the same second apart.
    """
    if verb not in VERBS:
        raise ValueError(f"unknown action {verb!r}; expected one of {', '.join(VERBS)}")
    now = now or datetime.now(timezone.utc)
    nonce = nonce or uuid.uuid4().hex[:8]
    return f"{verb}@{now.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{nonce}"


def action_patch(value: str) -> dict:
    """JSON merge patch that sets (replaces) the action annotation."""
    return {"metadata": {"annotations": {ACTION_ANNOTATION: value}}}


def _get(obj: Any, *path: str | int) -> Any:
    for key in path:
        if isinstance(obj, Mapping):
            obj = obj.get(key)
        elif isinstance(obj, Sequence) and not isinstance(obj, str) and isinstance(key, int):
            obj = obj[key] if -len(obj) <= key < len(obj) else None
        else:
            return None
        if obj is None:
            return None
    return obj


def _s(value: Any) -> str:
    """A value for display; ``-`` for missing or empty."""
    if value is None or value == "" or value == [] or value == {}:
        return MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _burn(value: Any) -> str:
    if value is None:
        return MISSING
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return MISSING


def _duration(seconds: Any) -> str:
    from .rollout.burnrate import format_duration

    try:
        return format_duration(float(seconds))
    except (TypeError, ValueError):
        return MISSING


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "    ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [indent + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return lines


def _conditions(status: Mapping) -> str:
    conds = status.get("conditions") or []
    shown = [f"{_s(c.get('type'))}={_s(c.get('status'))}" for c in conds if isinstance(c, Mapping)]
    return ", ".join(shown) if shown else MISSING


def _step(rollout: Mapping, spec: Mapping) -> str:
    step = rollout.get("currentStep")
    steps = _get(spec, "rollout", "steps")
    if step is None:
        return MISSING
    try:
        step = int(step)
    except (TypeError, ValueError):
        return MISSING
    total = len(steps) if isinstance(steps, list) else None
    weight = _get(steps, step, "weight") if total else None
    text = f"{step + 1}/{total}" if total else str(step + 1)
    if weight is not None:
        text += f" (step weight {weight}%)"
    return text


def _weights(rollout: Mapping) -> tuple[str, str]:
    canary = rollout.get("canaryRevision")
    cw = rollout.get("canaryWeight")
    if not rollout.get("stableRevision") and not canary:
        return MISSING, MISSING
    if not canary:
        return "100%", MISSING
    try:
        cw = int(cw or 0)
    except (TypeError, ValueError):
        return MISSING, MISSING
    return f"{100 - cw}%", f"{cw}%"


def _analysis_lines(analysis: Mapping | None) -> list[str]:
    if not isinstance(analysis, Mapping) or not analysis:
        return ["  Last analysis: -"]
    head = f"  Last analysis: {_s(analysis.get('outcome'))} {_s(analysis.get('reason'))} at {_s(analysis.get('at'))}"
    lines = [head]
    if analysis.get("message"):
        lines.append(f"    {analysis['message']}")
    rows = []
    for b in analysis.get("burnRates") or []:
        if not isinstance(b, Mapping):
            continue
        factor = b.get("factor")
        window = f"{_duration(b.get('longWindowSeconds'))}/{_duration(b.get('shortWindowSeconds'))}"
        rows.append([
            _s(b.get("sli")),
            window,
            _burn(b.get("longBurnRate")),
            _burn(b.get("shortBurnRate")),
            f"{float(factor):g}x" if isinstance(factor, (int, float)) else MISSING,
            f"{_burn(b.get('stableLongBurnRate'))}/{_burn(b.get('stableShortBurnRate'))}",
            _s(b.get("requests") if not isinstance(b.get("requests"), float)
               else int(b["requests"])),
            _s(b.get("state")) + (f" (sequential, evidence {b['evidence']:g})"
                                  if b.get("method") == "sequential" and isinstance(b.get("evidence"), (int, float))
                                  else ""),
        ])
    if rows:
        lines += _table(["SLI", "WINDOWS", "LONG BURN", "SHORT BURN", "THRESHOLD", "STABLE L/S", "REQUESTS", "STATE"],
                        rows)
    return lines


def _history_lines(rollout: Mapping, limit: int = HISTORY_ROWS) -> list[str]:
    history = [h for h in (rollout.get("history") or []) if isinstance(h, Mapping)]
    if not history:
        return ["  History: -"]
    rows = [[_s(h.get("startedAt")), _s(h.get("finishedAt")), _s(h.get("stableRevision")),
             _s(h.get("canaryRevision")), _s(h.get("outcome")), _s(h.get("reason"))]
            for h in history[-limit:]]
    return [f"  History (last {len(rows)} of {len(history)}):"] + _table(
        ["STARTED", "FINISHED", "FROM", "TO", "OUTCOME", "REASON"], rows)


def format_status(pool: Mapping) -> str:
    """Human summary of an InferencePool; every missing field prints ``-``, nothing raises."""
    meta = pool.get("metadata") or {}
    spec = pool.get("spec") or {}
    status = pool.get("status") or {}
    rollout = status.get("rollout") or {}
    stable_w, canary_w = _weights(rollout)
    ready, total = status.get("readyReplicas"), status.get("replicas")
    pending = (meta.get("annotations") or {}).get(ACTION_ANNOTATION)
    handled = rollout.get("lastAction")
    if pending and pending != handled:
        action = f"{pending} (pending: not handled yet)"
    else:
        action = _s(handled)
    lines = [
        f"InferencePool {_s(meta.get('namespace'))}/{_s(meta.get('name'))}",
        f"  Phase:         {_s(status.get('phase'))}",
        f"  Conditions:    {_conditions(status)}",
        f"  Model:         {_s(_get(spec, 'modelRef', 'name'))}   revision {_s(status.get('desiredRevision'))}",
        f"  Replicas:      {_s(ready)} ready / {_s(total)}   (spec {_s(spec.get('replicas'))})",
        f"  Rollout:       {_s(rollout.get('phase'))}   step {_step(rollout, spec)}",
        f"  Stable:        {_s(rollout.get('stableRevision'))}   weight {stable_w}",
        f"  Canary:        {_s(rollout.get('canaryRevision'))}   weight {canary_w}",
        f"  Reason:        {_s(rollout.get('reason'))}: {_s(rollout.get('message'))}",
        f"  Last action:   {action}",
    ]
    failed = [f.get("revision") for f in rollout.get("failedRevisions") or [] if isinstance(f, Mapping)]
    if failed:
        lines.append(f"  Failed revs:   {', '.join(_s(r) for r in failed)}")
    lines += _analysis_lines(rollout.get("lastAnalysis"))
    lines += _history_lines(rollout)
    return "\n".join(lines)


def action_hint(verb: str, pool: Mapping) -> str | None:
    """A warning when the action will most likely be ignored by the operator, else ``None``."""
    phase = _get(pool, "status", "rollout", "phase")
    in_flight = phase in ("Pending", "Progressing", "Paused")
    if verb in ("promote", "abort", "pause") and phase is not None and not in_flight:
        return f"note: no rollout in flight (rollout phase {phase}); the operator will ignore '{verb}'"
    if verb == "resume" and phase is not None and phase not in ("Paused", "RolledBack"):
        return f"note: rollout phase is {phase}, not Paused or RolledBack; 'resume' may be ignored"
    return None


# --------------------------------------------------------------------------- cluster access


def _client(args: argparse.Namespace):
    from kubernetes import client, config

    config_file = args.kubeconfig or None
    try:
        config.load_kube_config(config_file=config_file, context=args.context)
        namespace = args.namespace or _context_namespace(config_file, args.context)
    except config.ConfigException:
        config.load_incluster_config()
        namespace = args.namespace or _incluster_namespace()
    return client.CustomObjectsApi(), namespace


def _context_namespace(config_file: str | None, context: str | None) -> str:
    from kubernetes import config

    contexts, active = config.list_kube_config_contexts(config_file=config_file)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    return (chosen or {}).get("context", {}).get("namespace") or "default"


def _incluster_namespace() -> str:
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def _fetch(api, namespace: str, name: str) -> dict:
    return api.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)


def _api_error(exc: Exception, namespace: str, name: str) -> str:
    status = getattr(exc, "status", None)
    if status == 404:
        return f"error: inferencepools.{API_GROUP} \"{name}\" not found in namespace \"{namespace}\""
    if status == 403:
        return f"error: forbidden: cannot access inferencepools.{API_GROUP} \"{name}\" in \"{namespace}\""
    reason = getattr(exc, "reason", None) or str(exc)
    return f"error: {reason}"


def cmd_status(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException

    api, ns = _client(args)
    try:
        pool = _fetch(api, ns, args.pool)
    except ApiException as exc:
        print(_api_error(exc, ns, args.pool), file=sys.stderr)
        return 1
    print(format_status(pool))
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException

    api, ns = _client(args)
    value = action_value(args.verb)
    try:
        pool = _fetch(api, ns, args.pool)
        # A dict body is sent as a JSON merge patch: only this one annotation changes.
        api.patch_namespaced_custom_object(API_GROUP, API_VERSION, ns, PLURAL, args.pool, action_patch(value))
    except ApiException as exc:
        print(_api_error(exc, ns, args.pool), file=sys.stderr)
        return 1
    print(f"inferencepool.{API_GROUP}/{args.pool} {args.verb} requested ({ACTION_ANNOTATION}={value})")
    hint = action_hint(args.verb, pool)
    if hint:
        print(hint, file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- CLI


def _common(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    p.add_argument("-n", "--namespace", default=default,
                   help="namespace of the pool (default: the kubeconfig context's namespace)")
    p.add_argument("--kubeconfig", default=default if suppress else os.environ.get("KUBECONFIG") or None,
                   help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    p.add_argument("--context", default=default, help="kubeconfig context (default: the current context)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl diffusion",
        description="Act on the canary rollout of an InferencePool (inferencepools." + API_GROUP + ") and show "
                    "its status. " + _ANNOTATION_WHY,
    )
    # Global flags may come before or after the subcommand (kubectl passes them through as typed).
    _common(p, suppress=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    st = sub.add_parser("status", help="phase, step, revisions, weights, last analysis burn rates, history",
                        description="Print phase, step, stable/canary revisions and weights, the last "
                                    "analysis's burn rate per SLI and window pair against its threshold, "
                                    "and the last rollouts.")
    st.add_argument("pool", metavar="POOL")
    _common(st, suppress=True)
    st.set_defaults(func=cmd_status)
    for verb in VERBS:
        sp = sub.add_parser(verb, help=_VERB_HELP[verb], description=f"{_VERB_HELP[verb][0].upper()}"
                            f"{_VERB_HELP[verb][1:]}. {_ANNOTATION_WHY}")
        sp.add_argument("pool", metavar="POOL")
        _common(sp, suppress=True)
        sp.set_defaults(func=cmd_action, verb=verb)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a CLI prints one line, not a traceback
        if os.environ.get("KUBECTL_DIFFUSION_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
