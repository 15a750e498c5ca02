"""Metrics providers: where the analysis gets its numbers, and ``measure()``.

The one place in :mod:`diffusion_operator.rollout` that does I/O. A provider answers one
PromQL expression with one float; ``measure()`` runs every query an analysis needs and packs
the answers into :class:`.verdict.AnalysisInputs`, keeping the three kinds of answer apart:

- a number (possibly NaN for 0/0): a measurement; the verdict sanitizes it;
- :class:`NoDataError`: the query ran but matched no series -> ``None`` ("no traffic");
- :class:`ProviderError`: the provider could not answer -> the whole analysis is an *error*
  (never a failure of the canary); ``measure()`` stops at the first one so a dead Prometheus
  costs one timeout, not forty.

Error tree (catch the base to handle any metrics problem)::

    MetricsError                 base class
    +-- NoDataError              empty result; not retried, means "nothing measured"
    +-- ProviderError            unreachable, timeout, HTTP/PromQL error, malformed answer;
                                 temporary: retry at the next analysis interval

This module must not decide anything: no thresholds, no burn rates.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from . import promql
from .verdict import AnalysisConfig, AnalysisInputs, RevisionMeasurements

__all__ = [
    "MetricsError",
    "MetricsProvider",
    "NoDataError",
    "PrometheusProvider",
    "ProviderError",
    "measure",
]

logger = logging.getLogger("diffusion_operator.rollout")


class MetricsError(Exception):
    """Base class of every metrics-provider error."""


class NoDataError(MetricsError):
    """The query succeeded and matched no series."""


class ProviderError(MetricsError):
    """The provider could not answer (network, timeout, HTTP status, bad query, bad answer)."""


@runtime_checkable
class MetricsProvider(Protocol):
    """Answers one instant query with one float (may be NaN or inf)."""

    def query(self, promql: str) -> float:
        """Raise :class:`NoDataError` for an empty result, :class:`ProviderError` otherwise."""
        ...


def _parse_result(result: Any, query: str) -> float:
    """One float from the ``data.result`` of an instant query (vector or scalar)."""
    # scalar: [timestamp, "value"]
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict) and isinstance(result[1], str):
        return float(result[1])
    if not isinstance(result, list):
        raise ProviderError(f"unexpected result type {type(result).__name__} for {query!r}")
    if not result:
        raise NoDataError(f"no series for {query!r}")
    if len(result) > 1:
        raise ProviderError(f"{len(result)} series for {query!r}, expected one (missing sum()?)")
    try:
        return float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProviderError(f"malformed sample for {query!r}: {result[0]!r}") from exc


class PrometheusProvider:
    """:class:`MetricsProvider` backed by ``prometheus_api_client.PrometheusConnect``.

    ``timeout_s`` bounds every request (Flagger's default is 5 s). ``retries`` are urllib3
    retries for connection errors and 502/503/504, kept low: the next analysis interval is
    the real retry. Authentication: ``bearer_token`` or ``basic_auth=(user, password)``;
    ``headers`` are added as given.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        bearer_token: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        verify_tls: bool = True,
        retries: int = 1,
    ) -> None:
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        all_headers = dict(headers or {})
        if bearer_token:
            all_headers["Authorization"] = f"Bearer {bearer_token}"
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._client = PrometheusConnect(
            url=self.url,
            headers=all_headers or None,
            disable_ssl=not verify_tls,
            auth=basic_auth,
            timeout=timeout_s,
            retry=Retry(total=retries, connect=retries, read=0, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
        )

    def query(self, promql: str) -> float:
        import requests
        from prometheus_api_client.exceptions import PrometheusApiClientException

        try:
            result = self._client.custom_query(promql, timeout=self.timeout_s)
        except PrometheusApiClientException as exc:
            raise ProviderError(f"Prometheus at {self.url} rejected {promql!r}: {exc}") from exc
        except requests.RequestException as exc:
            raise ProviderError(f"Prometheus at {self.url} unreachable: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:  # JSON decoding
            raise ProviderError(f"Prometheus at {self.url} sent a malformed answer: {exc}") from exc
        return _parse_result(result, promql)

    def close(self) -> None:
        self._client.close()


def _ask(provider: MetricsProvider, query: str) -> float | None:
    """``None`` for no data; NaN/inf are returned as they are for the verdict to sanitize."""
    try:
        value = provider.query(query)
    except NoDataError:
        return None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _measure_revision(
    provider: MetricsProvider, pool: str, revision: str, config: AnalysisConfig, spans: Mapping[int, int]
) -> RevisionMeasurements:
    """Every window of the config, each queried over ``spans[window]`` seconds (see ``measure``)."""
    windows = config.windows
    requests = {
        w: _ask(
            provider,
            promql.request_count(pool, revision, spans[w], extra_selector=config.extra_selector,
                                 endpoints=config.endpoints),
        )
        for w in windows
    }
    ratios: dict[str, dict[int, float | None]] = {}
    for slo in config.slos:
        ratios[slo.sli] = {
            w: _ask(
                provider,
                promql.error_ratio(
                    slo.sli,
                    pool,
                    revision,
                    spans[w],
                    latency_threshold_s=slo.threshold_s,
                    extra_selector=config.extra_selector,
                    endpoints=config.endpoints,
                ),
            )
            for w in windows
        }
    return RevisionMeasurements(error_ratios=ratios, requests=requests)


def same_spans(windows: tuple[int, ...], canary_age_s: float | None) -> dict[int, int]:
    """The span each window is queried over, for canary and stable alike: the window, cut to
    the canary's age. A young canary's ``rate()`` over a long window only covers its life while
    the stable's covers healthy history too, so a shared outage looked like the canary's fault
    (both at 100% 5xx: canary 1000x, stable diluted to a fraction of that). Over the same span
    both are judged on the same minutes."""
    if canary_age_s is None:
        return {w: w for w in windows}
    age = max(1, math.ceil(canary_age_s))
    return {w: min(w, age) for w in windows}


def measure(
    provider: MetricsProvider,
    pool: str,
    canary_rev: str,
    stable_rev: str | None,
    config: AnalysisConfig,
    *,
    canary_age_s: float | None = None,
) -> AnalysisInputs:
    """Run every query the analysis needs; never raises :class:`MetricsError`.

    Both revisions are measured over the same spans (:func:`same_spans`); the results stay
    keyed by the configured windows, so the verdict's pairs read them as before.

    ``stable_rev`` ``None`` (no stable to compare with) skips the stable queries. A
    :class:`ProviderError` anywhere gives ``AnalysisInputs(error=...)``.
    """
    spans = same_spans(config.windows, canary_age_s)
    try:
        canary = _measure_revision(provider, pool, canary_rev, config, spans)
        stable = _measure_revision(provider, pool, stable_rev, config, spans) if stable_rev else None
    except ProviderError as exc:
        logger.warning("rollout analysis of pool %s revision %s: metrics provider failed: %s", pool, canary_rev, exc)
        return AnalysisInputs(canary_age_s=canary_age_s, error=str(exc))
    return AnalysisInputs(canary=canary, stable=stable, canary_age_s=canary_age_s)
