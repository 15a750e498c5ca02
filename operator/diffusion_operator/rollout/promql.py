"""PromQL for the rollout analysis, built from the sampler contract (pure string building).

Metric names and labels come from ``docs/sampler-contract.md``: every series carries ``pool``
and ``revision``; requests carry ``endpoint`` and ``code``. Each SLI is queried as an *error
ratio* (bad / total) over one window, summed over all pods of the revision, so the verdict
can turn it into a burn rate without knowing PromQL:

- availability: 5xx / all requests;
- latency: 1 - (requests under the threshold / all requests), from the histogram bucket whose
  ``le`` is exactly the threshold (the sampler adds one per ``SAMPLER_SLO_LATENCY_THRESHOLDS_S``;
  a missing bucket gives an empty result -> "no data", never a neighbouring bucket);
- quality: (images blocked by the safety checker + blank + NaN images) / images generated.
  Prompts blocked by the blocklist are the user's doing, not the model's, and are left out.

Numerators are ``or vector(0)``: a labelled counter series only appears after its first
increment, so "no 5xx series yet" means zero errors, not "no data". Denominators are not:
no traffic stays an empty result (or NaN for 0/0), which the provider maps to "no data".

This module must not run queries or decide anything; scoping beyond pool and revision (a
namespace, a job) goes in ``extra_selector``, e.g. ``'namespace="prod"'``.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "AVAILABILITY",
    "DEFAULT_ENDPOINTS",
    "LATENCY",
    "QUALITY",
    "SLI_NAMES",
    "availability_error_ratio",
    "duration",
    "error_ratio",
    "label_selector",
    "latency_error_ratio",
    "le_matcher",
    "quality_error_ratio",
    "request_count",
]

AVAILABILITY = "availability"
LATENCY = "latency"
QUALITY = "quality"
#: SLIs in the order the verdict reports them.
SLI_NAMES = (AVAILABILITY, LATENCY, QUALITY)

REQUESTS_TOTAL = "diffusion_sampler_requests_total"
REQUEST_DURATION = "diffusion_sampler_request_duration_seconds"
IMAGES_GENERATED = "diffusion_sampler_images_generated_total"
SAFETY_CHECKS = "diffusion_sampler_safety_checks_total"
BLANK_IMAGES = "diffusion_sampler_blank_images_total"

#: The contract's serving endpoints; health and metrics scrapes are not user traffic.
DEFAULT_ENDPOINTS = ("generations", "generate", "edits")

_MATCHER = r'\s*[a-zA-Z_][a-zA-Z0-9_]*\s*(?:=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*'
_EXTRA_OK = re.compile(rf"^{_MATCHER}(?:,{_MATCHER})*,?\s*$")


def _quote(value: str) -> str:
    """A PromQL double-quoted string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def duration(seconds: float) -> str:
    """PromQL range duration in whole seconds (at least 1s): ``720 -> '720s'``."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"window must be a positive number of seconds, got {seconds!r}")
    return f"{max(1, int(round(seconds)))}s"


def label_selector(pool: str, revision: str, extra_selector: str = "", **matchers: str) -> str:
    """Inside of ``{...}``: ``pool="p",revision="r"`` plus ``extra_selector`` and exact matchers.

    ``extra_selector`` must be a comma-separated list of complete matchers; anything else
    (a brace, a bare word) raises ``ValueError`` so a typo cannot widen or break every query.
    """
    parts = [f"pool={_quote(pool)}", f"revision={_quote(revision)}"]
    parts += [f"{name}={_quote(value)}" for name, value in matchers.items()]
    extra = extra_selector.strip()
    if extra:
        if not _EXTRA_OK.match(extra):
            raise ValueError(f"extra selector is not a list of label matchers: {extra_selector!r}")
        parts.append(extra.rstrip(", "))
    return ",".join(parts)


def _endpoint_matcher(endpoints: tuple[str, ...] | None) -> str:
    if not endpoints:
        return ""
    return "endpoint=~" + _quote("|".join(re.escape(e) for e in endpoints))


def _sel(pool: str, revision: str, extra_selector: str, *more: str) -> str:
    parts = [label_selector(pool, revision, extra_selector)] + [m for m in more if m]
    return "{" + ",".join(parts) + "}"


def le_matcher(threshold_s: float) -> str:
    """``le`` matcher for exactly ``threshold_s``, in either spelling an exporter may use.

    The Python client writes ``1.0`` for 1 s while others write ``1``; both are accepted, no
    other bucket is.
    """
    if not math.isfinite(threshold_s) or threshold_s <= 0:
        raise ValueError(f"latency threshold must be a positive number of seconds, got {threshold_s!r}")
    if float(threshold_s).is_integer():
        n = int(threshold_s)
        return f'le=~"{n}(\\\\.0)?"'
    text = repr(float(threshold_s))
    return "le=~" + _quote(re.escape(text))


def availability_error_ratio(
    pool: str,
    revision: str,
    window_s: float,
    *,
    extra_selector: str = "",
    endpoints: tuple[str, ...] | None = DEFAULT_ENDPOINTS,
) -> str:
    """Share of requests answered 5xx over the window."""
    w = duration(window_s)
    ep = _endpoint_matcher(endpoints)
    bad = _sel(pool, revision, extra_selector, ep, 'code=~"5.."')
    total = _sel(pool, revision, extra_selector, ep)
    return f"(sum(rate({REQUESTS_TOTAL}{bad}[{w}])) or vector(0)) / sum(rate({REQUESTS_TOTAL}{total}[{w}]))"


def latency_error_ratio(
    pool: str,
    revision: str,
    window_s: float,
    threshold_s: float,
    *,
    extra_selector: str = "",
    endpoints: tuple[str, ...] | None = DEFAULT_ENDPOINTS,
) -> str:
    """Share of requests slower than ``threshold_s`` over the window (exact ``le`` bucket)."""
    w = duration(window_s)
    ep = _endpoint_matcher(endpoints)
    good = _sel(pool, revision, extra_selector, ep, le_matcher(threshold_s))
    total = _sel(pool, revision, extra_selector, ep)
    return (
        f"1 - (sum(rate({REQUEST_DURATION}_bucket{good}[{w}]))"
        f" / sum(rate({REQUEST_DURATION}_count{total}[{w}])))"
    )


def quality_error_ratio(pool: str, revision: str, window_s: float, *, extra_selector: str = "") -> str:
    """Share of generated images that were blocked by the safety checker, blank or NaN."""
    w = duration(window_s)
    blocked = _sel(pool, revision, extra_selector, 'outcome="blocked_image"')
    blank = _sel(pool, revision, extra_selector, 'kind=~"blank|nan"')
    images = _sel(pool, revision, extra_selector)
    return (
        f"((sum(rate({SAFETY_CHECKS}{blocked}[{w}])) or vector(0))"
        f" + (sum(rate({BLANK_IMAGES}{blank}[{w}])) or vector(0)))"
        f" / sum(rate({IMAGES_GENERATED}{images}[{w}]))"
    )


def request_count(
    pool: str,
    revision: str,
    window_s: float,
    *,
    extra_selector: str = "",
    endpoints: tuple[str, ...] | None = DEFAULT_ENDPOINTS,
) -> str:
    """Requests served over the window (``increase`` corrects counter resets)."""
    w = duration(window_s)
    sel = _sel(pool, revision, extra_selector, _endpoint_matcher(endpoints))
    return f"sum(increase({REQUESTS_TOTAL}{sel}[{w}]))"


def error_ratio(
    sli: str,
    pool: str,
    revision: str,
    window_s: float,
    *,
    latency_threshold_s: float | None = None,
    extra_selector: str = "",
    endpoints: tuple[str, ...] | None = DEFAULT_ENDPOINTS,
) -> str:
    """Dispatch on the SLI name (one of :data:`SLI_NAMES`)."""
    if sli == AVAILABILITY:
        return availability_error_ratio(pool, revision, window_s, extra_selector=extra_selector, endpoints=endpoints)
    if sli == LATENCY:
        if latency_threshold_s is None:
            raise ValueError("the latency SLI needs a threshold")
        return latency_error_ratio(
            pool, revision, window_s, latency_threshold_s, extra_selector=extra_selector, endpoints=endpoints
        )
    if sli == QUALITY:
        return quality_error_ratio(pool, revision, window_s, extra_selector=extra_selector)
    raise ValueError(f"unknown SLI {sli!r}; expected one of {SLI_NAMES}")


def namespaced_selector(namespace: str, extra: str | None) -> str:
    """Scope queries to the pool's namespace (the label PodMonitor/ServiceMonitor scraping adds),
    plus the user's ``extraSelector``. Two pools with the same name in two namespaces serve the
    same revision hash; without this one pool's canary analysis would read the other's traffic."""
    extra = (extra or "").strip().rstrip(", ")
    if re.search(r"(^|,)\s*namespace\s*=", extra):
        return extra
    return ",".join(p for p in (f'namespace="{namespace}"', extra) if p)
