"""The operator's own Prometheus metrics (not the sampler's; those are in the contract).

Served by ``main`` on ``--metrics-port``. Names are prefixed ``diffusion_operator_``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("diffusion_operator_reconciles_total", "Reconciles by kind and result", ["kind", "result"])
RECONCILE_SECONDS = Histogram("diffusion_operator_reconcile_duration_seconds", "Reconcile duration", ["kind"],
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ERRORS = Counter("diffusion_operator_errors_total", "Reconcile errors by kind and reason", ["kind", "reason"])
POOLS_BY_PHASE = Gauge("diffusion_operator_pools", "InferencePools by phase", ["phase"])
STATUS_WRITES = Counter("diffusion_operator_status_writes_total", "Status subresource writes", ["kind"])
CANARY_WEIGHT = Gauge("diffusion_operator_canary_weight", "Canary traffic weight (percent)", ["namespace", "pool"])
ROLLOUT_PHASE = Gauge("diffusion_operator_rollout_phase", "1 for the pool's current phase",
                      ["namespace", "pool", "phase"])
BURN_RATE = Gauge("diffusion_operator_burn_rate", "Last canary burn rate per SLI and window",
                  ["namespace", "pool", "sli", "window"])
VERDICTS = Counter("diffusion_operator_analysis_verdicts_total", "Canary analysis verdicts",
                   ["namespace", "pool", "verdict"])
