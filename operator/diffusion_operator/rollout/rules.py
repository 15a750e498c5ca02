"""PrometheusRule for one InferencePool: SLI recording rules and burn-rate alerts (pure).

The canary analysis (``verdict.py``) judges a canary for minutes with compressed windows; this
module covers the other half of the SLO story, the STABLE revision in steady state, with the
Google SRE Workbook's multi-window multi-burn-rate alerts evaluated by Prometheus itself:

========== ======= ======= ======== ===========================================
budget      long    short   factor   severity (factor for a 30-day period)
========== ======= ======= ======== ===========================================
2 %         1h      5m      14.4     page
5 %         6h      30m     6        page
10 %        3d      6h      1        ticket
========== ======= ======= ======== ===========================================

A pair fires when the error ratio burns at or above ``factor x (1 - objective)`` in BOTH its
windows (the same ``>=`` the canary analysis uses); the pairs are separate alerts, so the
"OR across pairs" is Alertmanager's. The factor is derived from the share of budget the pair
stands for: ``factor = budget share x SLO period / long window``, which is exactly the Workbook's
14.4 / 6 / 1 for ``spec.slo.periodDays: 30`` and stays honest for other periods.

Recording rules (group ``<namespace>/<pool>/sli``), one series per SLI and window, labelled
``namespace``, ``pool``, ``revision`` and ``sli``::

    diffusion:availability_error_ratio:rate5m     (5m 30m 1h 6h 3d)
    diffusion:latency_error_ratio:rate5m          only with spec.slo.latency
    diffusion:quality_error_ratio:rate5m          only with spec.slo.quality

The expressions are ``promql.error_ratio`` verbatim (the exact histogram bucket at the latency
threshold, ``or vector(0)`` numerators), so what pages the on-call and what judges a canary
are the same queries. Every expression is scoped to the pool's namespace (the PodMonitor and
ServiceMonitor the operator creates add that label) plus ``spec.rollout.analysis.extraSelector``.

Only the revision passed in is recorded: the reconciler passes the stable revision and
re-applies the rule when it changes (a promotion); a new stable revision starts with fresh
series, and ``rate()`` over a window longer than its life covers its whole life. With no stable
revision yet the rule has no groups.

This module must not talk to the API server or decide whether the PrometheusRule CRD exists
(the reconciler does, and skips the rule when ``spec.monitoring.prometheusRule`` is false).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..builders import LABEL_POOL, owner_reference, pool_labels
from . import promql
from .burnrate import format_duration
from .promql import namespaced_selector
from .verdict import SLO

if TYPE_CHECKING:
    from ..spec import PoolSpec

__all__ = [
    "ALERT_PAIRS",
    "AlertPair",
    "RECORD_PREFIX",
    "alert_rules",
    "prometheus_rule",
    "record_name",
    "recording_rules",
    "rule_name",
]

RECORD_PREFIX = "diffusion"
RUNBOOK_URL = "https://github.com/diffusion-serving/diffusion-operator/blob/main/docs/operations.md#slo-burn-rate-alerts"

_TITLES = {
    promql.AVAILABILITY: "Availability",
    promql.LATENCY: "Latency",
    promql.QUALITY: "Quality",
}
_WHAT = {
    promql.AVAILABILITY: "requests answered 5xx",
    promql.LATENCY: "requests slower than {threshold}s",
    promql.QUALITY: "images blocked by the safety checker, blank or NaN",
}


@dataclass(frozen=True)
class AlertPair:
    """A Workbook pair expressed as the share of the SLO period's budget it stands for."""

    long_s: int
    short_s: int
    budget_share: float
    severity: str

    def factor(self, period_s: int) -> float:
        """Burn rate that spends ``budget_share`` of the budget in ``long_s``."""
        return round(self.budget_share * period_s / self.long_s, 6)


_H = 3600
#: SRE Workbook: page at 2 % of the budget in 1h (and 5m), page at 5 % in 6h (and 30m),
#: ticket at 10 % in 3d (and 6h).
ALERT_PAIRS: tuple[AlertPair, ...] = (
    AlertPair(long_s=1 * _H, short_s=300, budget_share=0.02, severity="page"),
    AlertPair(long_s=6 * _H, short_s=1800, budget_share=0.05, severity="page"),
    AlertPair(long_s=72 * _H, short_s=6 * _H, budget_share=0.10, severity="ticket"),
)


def _budget(slo: SLO) -> str:
    """``1 - objective`` as a clean PromQL literal (``0.999 -> '0.001'``)."""
    return _num(1.0 - slo.objective)


def _num(value: float) -> str:
    return f"{value:.12g}"


def record_name(sli: str, window_s: int) -> str:
    """``diffusion:availability_error_ratio:rate5m``."""
    return f"{RECORD_PREFIX}:{sli}_error_ratio:rate{format_duration(window_s)}"


def rule_name(pool_name: str) -> str:
    """Name of the PrometheusRule object (within the 63 characters a label value allows)."""
    return f"{pool_name[:58]}-slo"


def _windows() -> tuple[int, ...]:
    return tuple(sorted({w for p in ALERT_PAIRS for w in (p.long_s, p.short_s)}))


def recording_rules(namespace: str, pool_name: str, revision: str, slis: tuple[SLO, ...],
                    extra_selector: str) -> list[dict]:
    """One recording rule per SLI and alert window, labelled with what ``sum()`` dropped."""
    rules = []
    for sli in slis:
        for w in _windows():
            expr = promql.error_ratio(sli.sli, pool_name, revision, w, latency_threshold_s=sli.threshold_s,
                                      extra_selector=extra_selector)
            rules.append({
                "record": record_name(sli.sli, w),
                "expr": expr,
                "labels": {"namespace": namespace, "pool": pool_name, "revision": revision, "sli": sli.sli},
            })
    return rules


def _series(sli: str, window_s: int, selector: str) -> str:
    return f"{record_name(sli, window_s)}{{{selector}}}"


def alert_rules(namespace: str, pool_name: str, revision: str, slis: tuple[SLO, ...], period_s: int) -> list[dict]:
    """Multi-window burn-rate alerts for ``revision`` (the stable one), one per SLI and pair.

    The expression divides by the budget so ``$value`` is the long window's burn rate.
    """
    selector = f'namespace="{namespace}",pool="{pool_name}",revision="{revision}"'
    period = format_duration(period_s)
    rules = []
    for sli in slis:
        title = _TITLES[sli.sli]
        what = _WHAT[sli.sli].format(threshold=_num(sli.threshold_s or 0))
        for pair in ALERT_PAIRS:
            factor = _num(pair.factor(period_s))
            long_w, short_w = format_duration(pair.long_s), format_duration(pair.short_s)
            expr = (
                f"({_series(sli.sli, pair.long_s, selector)} / {_budget(sli)} >= {factor})"
                f" and ({_series(sli.sli, pair.short_s, selector)} / {_budget(sli)} >= {factor})"
            )
            objective = _num(sli.objective * 100)
            share = _num(pair.budget_share * 100)
            rules.append({
                "alert": f"DiffusionPool{title}BudgetBurn",
                "expr": expr,
                "labels": {
                    "severity": pair.severity,
                    "sli": sli.sli,
                    "namespace": namespace,
                    "pool": pool_name,
                    "revision": revision,
                    "burn_factor": factor,
                    "long_window": long_w,
                    "short_window": short_w,
                },
                "annotations": {
                    "summary": (
                        f"InferencePool {namespace}/{pool_name}: {sli.sli} error budget burning at "
                        f"{{{{ $value | printf \"%.1f\" }}}}x (threshold {factor}x over {long_w} and {short_w})"
                    ),
                    "description": (
                        f"The stable revision {revision} of InferencePool {namespace}/{pool_name} has had "
                        f"{what} at {{{{ $value | printf \"%.1f\" }}}} times the rate its {objective}% "
                        f"{sli.sli} objective allows, over the last {long_w} and still over the last "
                        f"{short_w}. At {factor}x, {share}% of the {period} error budget is gone in {long_w}.\n"
                        f"Runbook: 1) `kubectl diffusion status {pool_name} -n {namespace}` - is a rollout "
                        f"in flight, and is the canary burning too? 2) check the sampler pods "
                        f"(`kubectl -n {namespace} get pods -l {LABEL_POOL}={pool_name}`), their "
                        f"logs, GPU health and queue depth (diffusion_sampler_queue_depth). "
                        f"3) if a recent promotion caused it, roll the DiffusionModel back in Git; the "
                        f"operator rolls out the previous revision as a canary. "
                        f"4) {'page: act now' if pair.severity == 'page' else 'ticket: fix within the working day'}."
                    ),
                    "runbook_url": RUNBOOK_URL,
                },
            })
    return rules


def prometheus_rule(pool_obj: dict, pool: PoolSpec, revision: str | None) -> dict:
    """The PrometheusRule of one InferencePool for its stable ``revision``.

    ``pool`` is the parsed spec: its ``analysis.slos`` are the SLOs the canary analysis judges
    (one SLO model for both), ``slo_period_s`` the budget period. ``revision`` is
    ``status.rollout.stableRevision`` or ``None`` before the first one (no groups then).
    Owned by the pool, so deleting the pool deletes the rule.
    """
    meta = pool_obj["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    labels = {**pool.monitoring_labels, **pool_labels(name)}
    groups: list[dict] = []
    if revision:
        slis = pool.analysis.slos
        extra = namespaced_selector(namespace, pool.analysis.extra_selector)
        groups = [
            {"name": f"{namespace}/{name}/sli", "rules": recording_rules(namespace, name, revision, slis, extra)},
            {"name": f"{namespace}/{name}/burn-rate-alerts",
             "rules": alert_rules(namespace, name, revision, slis, pool.slo_period_s)},
        ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": rule_name(name), "namespace": namespace, "labels": labels,
                     "ownerReferences": [owner_reference(pool_obj)]},
        "spec": {"groups": groups},
    }
