#!/usr/bin/env python3
"""Grafana dashboards as code: writes ``charts/diffusion-operator/files/dashboards/*.json``.

Three dashboards, built with grafana-foundation-sdk (the ``dashboards`` extra of pyproject.toml):

- ``executive.json``: availability, latency and quality SLIs with the error budget left over the
  SLO period, and GPU-seconds and dollars per image;
- ``oncall.json``: the stable revision's burn rate for every SLI and SRE Workbook pair against the
  pair's threshold (the same recording rules the per-pool PrometheusRule writes and its alerts
  read), the canary's weight, phase, burn rates and verdicts, and errors by status and reason;
- ``debug.json``: batch size, queue depth and wait, request latency, denoising step time, GPU
  memory, safety outcomes and blank images.

Metric names come from ``docs/sampler-contract.md`` (through ``diffusion_operator.rollout.promql``),
the operator's from ``diffusion_operator.metrics``, the recording rules' names and the pairs'
thresholds from ``diffusion_operator.rollout.rules``, so a rename there shows up here as drift
(``tests/unit/test_dashboards.py``) instead of as an empty panel.

Run ``python hack/dashboards/generate.py`` after changing this file or those names;
``--check`` exits 1 when the committed JSON differs from what this script builds. Every PromQL
expression here is evaluated against a real Prometheus scraping a real sampler by
``tests/integration/test_dashboard_queries.py``. This script must not talk to Grafana.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "operator"))  # run from a checkout without installing the package

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, statetimeline, timeseries  # noqa: E402
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig  # noqa: E402
from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.models.common import GraphThresholdsStyleMode  # noqa: E402
from grafana_foundation_sdk.models.dashboard import (  # noqa: E402
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

from diffusion_operator.rollout import promql  # noqa: E402
from diffusion_operator.rollout.burnrate import format_duration  # noqa: E402
from diffusion_operator.rollout.rules import ALERT_PAIRS, record_name  # noqa: E402

OUT_DIR = REPO / "charts" / "diffusion-operator" / "files" / "dashboards"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
PERIOD_DAYS = 30  # spec.slo.periodDays default; the pairs' thresholds are computed for it

# Sampler metrics (docs/sampler-contract.md).
REQUESTS = promql.REQUESTS_TOTAL
DURATION = promql.REQUEST_DURATION
IMAGES = promql.IMAGES_GENERATED
SAFETY = promql.SAFETY_CHECKS
BLANK = promql.BLANK_IMAGES
QUEUE_DEPTH = "diffusion_sampler_queue_depth"
QUEUE_WAIT = "diffusion_sampler_queue_wait_seconds"
BATCH = "diffusion_sampler_batch_size"
STEP = "diffusion_sampler_denoise_step_seconds"
GPU_MEMORY = "diffusion_sampler_gpu_memory_bytes"

# Every sampler series is scoped to the chosen namespace (the PodMonitor's target label) and pool.
SEL = 'namespace=~"$namespace",pool=~"$pool"'
EP = 'endpoint=~"' + "|".join(promql.DEFAULT_ENDPOINTS) + '"'
# The exact histogram bucket at the latency threshold, in either spelling (1 or 1.0), as the
# rollout analysis matches it (promql.le_matcher).
LE = r'le=~"$latency_threshold(\\.0)?"'

SLIS = (promql.AVAILABILITY, promql.LATENCY, promql.QUALITY)
TITLES = {promql.AVAILABILITY: "Availability", promql.LATENCY: "Latency", promql.QUALITY: "Quality"}


# --- PromQL -----------------------------------------------------------------------------------


def error_ratio(sli: str, window: str) -> str:
    """The SLI's error ratio over ``window`` from the raw sampler series (promql.py's shape)."""
    if sli == promql.AVAILABILITY:
        return (f'((sum(rate({REQUESTS}{{{SEL},{EP},code=~"5.."}}[{window}])) or vector(0))'
                f" / sum(rate({REQUESTS}{{{SEL},{EP}}}[{window}])))")
    if sli == promql.LATENCY:
        return (f"(1 - sum(rate({DURATION}_bucket{{{SEL},{EP},{LE}}}[{window}]))"
                f" / sum(rate({DURATION}_count{{{SEL},{EP}}}[{window}])))")
    return (f'(((sum(rate({SAFETY}{{{SEL},outcome="blocked_image"}}[{window}])) or vector(0))'
            f' + (sum(rate({BLANK}{{{SEL},kind=~"blank|nan"}}[{window}])) or vector(0)))'
            f" / sum(rate({IMAGES}{{{SEL}}}[{window}])))")


def budget(sli: str) -> str:
    return f"(1 - ${sli}_objective)"


def quantile(q: float, metric: str, by: str = "", extra: str = "") -> str:
    sel = SEL + (f",{extra}" if extra else "")
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{sel}}}[$__rate_interval])))"


# GPU-seconds per image = GPUs per replica x replicas serving x seconds / images generated
#                       = GPUs per replica x average replicas / images per second.
# Replicas are counted from the queue-depth gauge: one series per sampler pod, always present.
REPLICAS_AVG = f"avg_over_time(count({QUEUE_DEPTH}{{{SEL}}})[$__range:])"
GPU_SECONDS_PER_IMAGE = f"$gpus_per_replica * {REPLICAS_AVG} / sum(rate({IMAGES}{{{SEL}}}[$__range]))"
GPU_SECONDS_PER_IMAGE_NOW = (f"$gpus_per_replica * count({QUEUE_DEPTH}{{{SEL}}})"
                             f" / sum(rate({IMAGES}{{{SEL}}}[$__rate_interval]))")
COST_FORMULA = (
    "GPU-seconds per image = GPUs per replica ($gpus_per_replica) x average sampler replicas over the "
    "range (one diffusion_sampler_queue_depth series per pod) / images generated per second "
    "(rate of diffusion_sampler_images_generated_total). Cost per image = GPU-seconds per image / 3600 "
    "x $gpu_hour_usd (dollars per GPU-hour, a dashboard constant: edit it in the dashboard settings). "
    "Idle GPUs count: a pool that serves few images costs more per image."
)


# --- builders ---------------------------------------------------------------------------------


class Ids:
    """Stable panel ids (Grafana links to a panel by id)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant()
    return q


def with_targets(panel, targets: list[tuple[str, str]], instant: bool = False):
    for i, (expr, legend) in enumerate(targets):
        panel = panel.with_target(target(expr, legend, chr(ord("A") + i), instant))
    return panel


def ts(ids: Ids, title: str, description: str, targets: list[tuple[str, str]], unit: str = "short",
       span: int = 12, thresholds: list[tuple[float, str]] | None = None) -> timeseries.Panel:
    p = (timeseries.Panel().id(ids()).title(title).description(description).datasource(DATASOURCE)
         .unit(unit).span(span).height(8))
    if thresholds:
        p = (p.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
                [Threshold(value=None, color="green")] + [Threshold(value=v, color=c) for v, c in thresholds]))
             .thresholds_style(GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE)))
    return with_targets(p, targets)


def single(ids: Ids, title: str, description: str, expr: str, unit: str, span: int = 8,
           thresholds: list[tuple[float, str]] | None = None, decimals: int | None = None) -> stat.Panel:
    p = (stat.Panel().id(ids()).title(title).description(description).datasource(DATASOURCE)
         .unit(unit).span(span).height(5))
    if decimals is not None:
        p = p.decimals(decimals)
    if thresholds:
        p = p.thresholds(dashboard.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
            [Threshold(value=None, color="red")] + [Threshold(value=v, color=c) for v, c in thresholds]))
    return with_targets(p, [(expr, "")], instant=True)


def base(title: str, uid: str, description: str, tags: list[str], extra_vars: list) -> dashboard.Dashboard:
    d = (dashboard.Dashboard(title).uid(uid).description(description).tags(["diffusion-operator", *tags])
         .time("now-6h", "now").refresh("1m").timezone("browser")
         .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
         .with_variable(dashboard.QueryVariable("namespace").label("Namespace").datasource(DATASOURCE)
                        .query(f"label_values({REQUESTS}, namespace)")
                        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC))
         .with_variable(dashboard.QueryVariable("pool").label("InferencePool").datasource(DATASOURCE)
                        .query(f'label_values({REQUESTS}{{namespace=~"$namespace"}}, pool)')
                        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)))
    for v in extra_vars:
        d = d.with_variable(v)
    return d


def objective_vars() -> list:
    """One objective per SLI (spec.slo.<sli>.objective), editable on the dashboard."""
    defaults = {promql.AVAILABILITY: "0.999", promql.LATENCY: "0.99", promql.QUALITY: "0.99"}
    return [dashboard.TextBoxVariable(f"{sli}_objective").label(f"{TITLES[sli]} objective")
            .description(f"spec.slo.{sli}.objective of the pool").default_value(defaults[sli]) for sli in SLIS]


def latency_var():
    return (dashboard.TextBoxVariable("latency_threshold").label("Latency threshold (s)")
            .description("spec.slo.latency.thresholdSeconds: the sampler has an exact histogram bucket there")
            .default_value("1"))


# --- the dashboards ---------------------------------------------------------------------------


def executive() -> dashboard.Dashboard:
    ids = Ids()
    d = base("Diffusion serving: executive", "diffusion-executive",
             "Service levels, error budget left and cost per image of the diffusion InferencePools.",
             ["slo", "cost"],
             [*objective_vars(), latency_var(),
              dashboard.ConstantVariable("slo_period").value(f"{PERIOD_DAYS}d")
              .description("spec.slo.periodDays: the error budget's period"),
              dashboard.ConstantVariable("gpu_hour_usd").value("2.50")
              .description("Dollars per GPU-hour for the cost panels"),
              dashboard.ConstantVariable("gpus_per_replica").value("1")
              .description("spec.gpu.count of the pool: GPUs per sampler replica")])

    d = d.with_row(dashboard.Row("Service levels over the selected time range").id(ids()))
    descr = {
        promql.AVAILABILITY: "Share of generation requests not answered 5xx (availability SLI).",
        promql.LATENCY: "Share of generation requests answered within $latency_threshold s (latency SLI, from "
                        "the histogram bucket exactly at the threshold).",
        promql.QUALITY: "Share of generated images neither blocked by the safety checker nor blank/NaN "
                        "(quality SLI; prompts refused by the blocklist are left out).",
    }
    for sli in SLIS:
        d = d.with_panel(single(ids, f"{TITLES[sli]} SLI", descr[sli], f"1 - {error_ratio(sli, '$__range')}",
                                "percentunit", decimals=3))

    d = d.with_row(dashboard.Row("Error budget left over the SLO period ($slo_period)").id(ids()))
    for sli in SLIS:
        d = d.with_panel(single(
            ids, f"{TITLES[sli]} error budget left",
            f"1 - (error ratio over $slo_period / (1 - ${sli}_objective)): 100 % is an untouched budget, "
            f"0 % or less means the {sli} objective is missed for the period. Computed from the raw sampler "
            f"series (the recording rules stop at 3d).",
            f"1 - {error_ratio(sli, '$slo_period')} / {budget(sli)}", "percentunit", decimals=1,
            thresholds=[(0.0, "orange"), (0.25, "green")]))

    d = d.with_row(dashboard.Row("SLIs of the stable revision (recording rules)").id(ids()))
    d = d.with_panel(ts(
        ids, "SLIs over 1h windows",
        "1 - diffusion:<sli>_error_ratio:rate1h, the recording rules of the pool's PrometheusRule (stable "
        "revision only; latency and quality only when the pool sets those SLOs).",
        [(f"1 - {record_name(sli, 3600)}{{{SEL}}}", f"{{{{pool}}}} {{{{revision}}}} {sli}") for sli in SLIS],
        unit="percentunit", span=24))

    d = d.with_row(dashboard.Row("Throughput and cost per image").id(ids()))
    d = d.with_panel(single(ids, "GPU-seconds per image", COST_FORMULA, GPU_SECONDS_PER_IMAGE, "s", span=4,
                            decimals=2))
    d = d.with_panel(single(ids, "Cost per image (USD)", COST_FORMULA,
                            f"{GPU_SECONDS_PER_IMAGE} / 3600 * $gpu_hour_usd", "currencyUSD", span=4, decimals=4))
    d = d.with_panel(single(ids, "Images generated", "Images generated over the selected time range.",
                            f"sum(increase({IMAGES}{{{SEL}}}[$__range]))", "short", span=4, decimals=0))
    d = d.with_panel(ts(ids, "Cost per image over time", COST_FORMULA + " Here with the replicas now and the "
                        "image rate over $__rate_interval.",
                        [(f"{GPU_SECONDS_PER_IMAGE_NOW} / 3600 * $gpu_hour_usd", "USD per image")],
                        unit="currencyUSD"))
    d = d.with_panel(ts(ids, "Images per second", "Images generated per second, by pool.",
                        [(f"sum by (pool) (rate({IMAGES}{{{SEL}}}[$__rate_interval]))", "{{pool}}")],
                        unit="short"))
    return d


def oncall() -> dashboard.Dashboard:
    ids = Ids()
    period_s = PERIOD_DAYS * 86400
    d = base("Diffusion serving: on-call", "diffusion-oncall",
             "Burn rates per SLI and Workbook pair against their alert thresholds, the canary rollout, "
             "and errors. Runbook: docs/operations.md#slo-burn-rate-alerts.",
             ["slo", "oncall"], objective_vars())

    d = d.with_row(dashboard.Row("Rollout").id(ids()))
    d = d.with_panel(ts(ids, "Canary weight", "diffusion_operator_canary_weight: the canary's share of "
                        "traffic in percent (0 with no rollout in flight).",
                        [(f"max by (namespace, pool) (diffusion_operator_canary_weight{{{SEL}}})",
                          "{{pool}}")], unit="percent", span=8))
    phase = (statetimeline.Panel().id(ids()).title("Rollout phase")
             .description("diffusion_operator_rollout_phase: the pool's current rollout phase (1 for the "
                          "current one). A Paused phase that lasts hours blocks the next change.")
             .datasource(DATASOURCE).span(16).height(8))
    d = d.with_panel(with_targets(phase, [(f"max by (pool, phase) (diffusion_operator_rollout_phase{{{SEL}}}) == 1",
                                           "{{pool}} {{phase}}")]))
    d = d.with_panel(ts(ids, "Canary burn rate (last analysis)",
                        "diffusion_operator_burn_rate: the canary's burn rate per SLI and window at the last "
                        "analysis (compressed windows; the verdict compares them to the pairs' factors).",
                        [(f"max by (pool, sli, window) (diffusion_operator_burn_rate{{{SEL}}})",
                          "{{pool}} {{sli}} {{window}}")], span=12))
    d = d.with_panel(ts(ids, "Analysis verdicts",
                        "diffusion_operator_analysis_verdicts_total: canary verdicts (pass, fail, "
                        "inconclusive, error) per interval.",
                        [(f"sum by (pool, verdict) (increase(diffusion_operator_analysis_verdicts_total"
                          f"{{{SEL}}}[$__rate_interval]))", "{{pool}} {{verdict}}")], span=12))

    for sli in SLIS:
        d = d.with_row(dashboard.Row(f"{TITLES[sli]} burn rate (stable revision)").id(ids()))
        for pair in ALERT_PAIRS:
            factor = pair.factor(period_s)
            long_w, short_w = format_duration(pair.long_s), format_duration(pair.short_s)
            d = d.with_panel(ts(
                ids, f"{TITLES[sli]} burn rate {long_w}/{short_w} ({pair.severity} at {factor:g}x)",
                f"Error ratio / (1 - ${sli}_objective) over {long_w} and {short_w}, from the recording rules "
                f"{record_name(sli, pair.long_s)} and {record_name(sli, pair.short_s)}. "
                f"DiffusionPool{TITLES[sli]}BudgetBurn ({pair.severity}) fires while BOTH lines are at or "
                f"above the {factor:g}x line ({pair.budget_share:.0%} of a {PERIOD_DAYS}-day budget in "
                f"{long_w}). The line is for spec.slo.periodDays {PERIOD_DAYS}.",
                [(f"{record_name(sli, w)}{{{SEL}}} / {budget(sli)}", f"{{{{pool}}}} {{{{revision}}}} {label}")
                 for w, label in ((pair.long_s, long_w), (pair.short_s, short_w))],
                span=8, thresholds=[(factor, "red")]))

    d = d.with_row(dashboard.Row("Errors").id(ids()))
    d = d.with_panel(ts(ids, "Sampler errors by status code",
                        "Generation requests not answered 2xx per second, by status code (499: the client "
                        "went away while queued; 503: draining or queue full; 504: deadline).",
                        [(f'sum by (pool, code) (rate({REQUESTS}{{{SEL},{EP},code!~"2.."}}[$__rate_interval]))',
                          "{{pool}} {{code}}")], unit="reqps"))
    d = d.with_panel(ts(ids, "Operator errors by reason",
                        "diffusion_operator_errors_total: reconcile errors per second by kind and reason "
                        "(all pools: the operator's errors carry no pool label).",
                        [("sum by (kind, reason) (rate(diffusion_operator_errors_total[$__rate_interval]))",
                          "{{kind}} {{reason}}")], unit="short"))
    return d


def debug() -> dashboard.Dashboard:
    ids = Ids()
    d = base("Diffusion serving: debug", "diffusion-debug",
             "Sampler internals: batching, queueing, step time, GPU memory, safety outcomes.", ["debug"], [])

    d = d.with_row(dashboard.Row("Batching and queueing").id(ids()))
    d = d.with_panel(ts(ids, "Batch size", "Images per pipeline call: the mean, and p50/p95 from the "
                        "diffusion_sampler_batch_size histogram.",
                        [(f"sum by (pool) (rate({BATCH}_sum{{{SEL}}}[$__rate_interval]))"
                          f" / sum by (pool) (rate({BATCH}_count{{{SEL}}}[$__rate_interval]))", "{{pool}} mean"),
                         (quantile(0.5, BATCH, "pool"), "{{pool}} p50"),
                         (quantile(0.95, BATCH, "pool"), "{{pool}} p95")]))
    d = d.with_panel(ts(ids, "Queue depth", "Requests waiting for a batch, per sampler pod (the HPA's "
                        "target metric when spec.autoscaling is set).",
                        [(f"{QUEUE_DEPTH}{{{SEL}}}", "{{pool}} {{revision}} {{pod}}")]))
    d = d.with_panel(ts(ids, "Queue wait", "Time a request waited before its batch started, p50 and p95.",
                        [(quantile(0.5, QUEUE_WAIT, "pool"), "{{pool}} p50"),
                         (quantile(0.95, QUEUE_WAIT, "pool"), "{{pool}} p95")], unit="s"))
    d = d.with_panel(ts(ids, "Request latency", "Arrival to response of generation requests, p50/p95/p99 "
                        "by endpoint.",
                        [(quantile(q, DURATION, "endpoint", EP), f"{{{{endpoint}}}} p{int(q * 100)}")
                         for q in (0.5, 0.95, 0.99)], unit="s"))

    d = d.with_row(dashboard.Row("GPU").id(ids()))
    d = d.with_panel(ts(ids, "Denoising step time", "Time per denoising step of a batch, p50 and p95 by "
                        "revision: a slower canary shows here first.",
                        [(quantile(0.5, STEP, "revision"), "{{revision}} p50"),
                         (quantile(0.95, STEP, "revision"), "{{revision}} p95")], unit="s"))
    d = d.with_panel(ts(ids, "GPU memory", "CUDA memory per sampler pod: allocated, reserved, and peak "
                        "allocated since start (CUDA only: empty for CPU samplers).",
                        [(f"max by (pod, revision, kind) ({GPU_MEMORY}{{{SEL}}})", "{{pod}} {{kind}}")],
                        unit="bytes"))

    d = d.with_row(dashboard.Row("Safety and image quality").id(ids()))
    d = d.with_panel(ts(ids, "Safety outcomes", "Safety-filter outcomes per second: passed, blocked_prompt "
                        "(the blocklist: the user's doing) and blocked_image (the checker: counts against "
                        "the quality SLO).",
                        [(f"sum by (outcome) (rate({SAFETY}{{{SEL}}}[$__rate_interval]))", "{{outcome}}")]))
    d = d.with_panel(ts(ids, "Blank and NaN images", "Images that came out blank or NaN per second (count "
                        "against the quality SLO).",
                        [(f"sum by (kind) (rate({BLANK}{{{SEL}}}[$__rate_interval]))", "{{kind}}")]))
    return d


DASHBOARDS = {"executive.json": executive, "oncall.json": oncall, "debug.json": debug}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
            for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed JSON is stale")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    if stale:
        print(f"stale dashboards: {stale}; run python hack/dashboards/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
