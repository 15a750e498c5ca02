"""PrometheusProvider and measure() against a real Prometheus with backfilled series.

Series are written as OpenMetrics (timestamps in seconds, ending just before now), turned into
TSDB blocks with ``promtool tsdb create-blocks-from openmetrics`` and served by a Prometheus
started on a free 127.0.0.1 port with its own config and data directory. The increments are
chosen so every SLI ratio is exact whatever ``rate()`` extrapolates, including across a
counter reset in the canary's series.

The binaries come from ``toolchain.ensure_prometheus()`` (the Debian packages cached under
``~/.cache/diffusion-operator``), not from the whole cluster toolchain: this test needs no
Kubernetes.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from diffusion_operator.devcluster import toolchain
from diffusion_operator.rollout import promql
from diffusion_operator.rollout.burnrate import WindowPair
from diffusion_operator.rollout.metrics_provider import (
    MetricsProvider,
    NoDataError,
    PrometheusProvider,
    ProviderError,
    measure,
)
from diffusion_operator.rollout.verdict import SLO, AnalysisConfig, Outcome, Reason, decide
from tests.support.polling import wait_for

pytestmark = pytest.mark.e2e

POOL = "pool-a"
STEP_S = 5
SPAN_S = 900
# Per step increments. Canary: 30 % 5xx, 10 % slower than 2 s (20 % slower than 0.5 s), 20 % bad images.
CANARY = {"ok": 7, "err": 3, "le_0_5": 8, "le_2": 9, "count": 10, "images": 10, "blocked": 1, "blank": 1}
# Stable: no 5xx series and no blank-image series at all (they were never incremented).
STABLE = {"ok": 10, "err": 0, "le_0_5": 10, "le_2": 10, "count": 10, "images": 10, "blocked": 0, "blank": 0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openmetrics(end: int) -> str:
    """Counters for both revisions from ``end - SPAN_S`` to ``end``; the canary resets halfway."""
    times = list(range(end - SPAN_S, end + 1, STEP_S))
    reset_at = times[len(times) // 2]
    base = {"pool": POOL, "endpoint": "generations"}

    def series(name: str, labels: dict[str, str], rev: str, key: str, inc: dict[str, int], reset: bool) -> list[str]:
        if inc[key] == 0:
            return []
        lbl = ",".join(f'{k}="{v}"' for k, v in {**labels, "revision": rev}.items())
        out, value = [], 0
        for ts in times:
            if reset and ts == reset_at:
                value = 0  # the process restarted
            value += inc[key]
            out.append(f"{name}{{{lbl}}} {value} {ts}")
        return out

    lines: list[str] = []

    def family(name: str, typ: str, rows: list[tuple[str, dict[str, str], str]]) -> None:
        lines.append(f"# TYPE {name} {typ}")
        for rev, inc, reset in (("canary", CANARY, True), ("stable", STABLE, False)):
            for sample, labels, key in rows:
                lines.extend(series(sample, labels, rev, key, inc, reset))

    family("diffusion_sampler_requests", "counter", [
        ("diffusion_sampler_requests_total", {**base, "code": "200"}, "ok"),
        ("diffusion_sampler_requests_total", {**base, "code": "500"}, "err"),
    ])
    # Histogram samples written as plain series ("unknown" type): PromQL only sees the names.
    family("diffusion_sampler_request_duration_seconds_bucket", "unknown", [
        ("diffusion_sampler_request_duration_seconds_bucket", {**base, "le": "0.5"}, "le_0_5"),
        ("diffusion_sampler_request_duration_seconds_bucket", {**base, "le": "2.0"}, "le_2"),
        ("diffusion_sampler_request_duration_seconds_bucket", {**base, "le": "+Inf"}, "count"),
    ])
    family("diffusion_sampler_request_duration_seconds_count", "unknown", [
        ("diffusion_sampler_request_duration_seconds_count", base, "count"),
    ])
    family("diffusion_sampler_images_generated", "counter", [
        ("diffusion_sampler_images_generated_total", {"pool": POOL}, "images"),
    ])
    family("diffusion_sampler_safety_checks", "counter", [
        ("diffusion_sampler_safety_checks_total", {"pool": POOL, "outcome": "blocked_image"}, "blocked"),
        ("diffusion_sampler_safety_checks_total", {"pool": POOL, "outcome": "passed"}, "images"),
    ])
    family("diffusion_sampler_blank_images", "counter", [
        ("diffusion_sampler_blank_images_total", {"pool": POOL, "kind": "blank"}, "blank"),
    ])
    lines.extend(_shared_outage(end))
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


OUTAGE_POOL = "pool-outage"
OUTAGE_S = 60


def _shared_outage(end: int) -> list[str]:
    """``pool-outage``: the stable served 2 requests/s without errors for 14 minutes, then both
    revisions answered every request with a 500 for the last 60 s, the canary's whole life
    (a shared dependency died just as the canary came up)."""
    times = list(range(end - SPAN_S, end + 1, STEP_S))
    outage_from = end - OUTAGE_S
    base = f'pool="{OUTAGE_POOL}",endpoint="generations"'
    out = []
    for rev in ("stable", "canary"):
        ok = err = 0
        for ts in times:
            if ts < outage_from:
                if rev == "canary":
                    continue
                ok += 10
            else:
                err += 10
            if rev == "stable":
                out.append(f'diffusion_sampler_requests_total{{{base},code="200",revision="{rev}"}} {ok} {ts}')
            if ts >= outage_from:
                out.append(f'diffusion_sampler_requests_total{{{base},code="500",revision="{rev}"}} {err} {ts}')
    def series_then_time(line: str) -> tuple[str, int]:
        return line.split("}")[0], int(line.rsplit(" ", 1)[1])
    return ["# TYPE diffusion_sampler_requests_outage counter"] + sorted(out, key=series_then_time)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory) -> str:
    prometheus, promtool = toolchain.ensure_prometheus()
    root: Path = tmp_path_factory.mktemp("prometheus")
    data = root / "data"
    data.mkdir()
    src = root / "series.om"
    src.write_text(_openmetrics(int(time.time()) - 2))
    subprocess.run([str(promtool), "tsdb", "create-blocks-from", "openmetrics", str(src), str(data)],
                   check=True, capture_output=True, timeout=120)
    config = root / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n")
    port = _free_port()
    log = (root / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [str(prometheus), f"--config.file={config}", f"--storage.tsdb.path={data}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=100y"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            if proc.poll() is not None:  # waiting longer cannot help
                raise RuntimeError(f"Prometheus exited:\n{(root / 'prometheus.log').read_text()[-3000:]}")
            return requests.get(f"{url}/-/ready", timeout=1).status_code == 200

        wait_for(ready, timeout=60, interval=0.2, what="Prometheus to become ready",
                 ignoring=(requests.RequestException,),
                 detail=lambda: f"its log ends:\n{(root / 'prometheus.log').read_text()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def provider(prometheus_url) -> PrometheusProvider:
    p = PrometheusProvider(prometheus_url, timeout_s=5)
    yield p
    p.close()


def test_is_a_metrics_provider(provider):
    assert isinstance(provider, MetricsProvider)


@pytest.mark.parametrize(
    ("sli", "revision", "threshold", "expected"),
    [
        ("availability", "canary", None, 0.3),
        ("availability", "stable", None, 0.0),  # no 5xx series at all: zero, not "no data"
        ("latency", "canary", 2.0, 0.1),
        ("latency", "canary", 0.5, 0.2),
        ("latency", "stable", 2.0, 0.0),
        ("quality", "canary", None, 0.2),
        ("quality", "stable", None, 0.0),
    ],
)
@pytest.mark.parametrize("window", [60, 600])
def test_error_ratios(provider, sli, revision, threshold, expected, window):
    q = promql.error_ratio(sli, POOL, revision, window, latency_threshold_s=threshold)
    assert provider.query(q) == pytest.approx(expected, abs=1e-9)


def test_missing_latency_bucket_is_no_data(provider):
    with pytest.raises(NoDataError):
        provider.query(promql.latency_error_ratio(POOL, "canary", 60, 1.0))


def test_unknown_revision_is_no_data(provider):
    with pytest.raises(NoDataError):
        provider.query(promql.availability_error_ratio(POOL, "never-deployed", 60))


def test_request_count_survives_the_counter_reset(provider):
    # 10 requests per 5 s -> 2/s, for both revisions, the canary's reset notwithstanding.
    for rev in ("canary", "stable"):
        assert provider.query(promql.request_count(POOL, rev, 600)) == pytest.approx(1200, rel=0.05)


def test_scalar_results(provider):
    assert provider.query("scalar(vector(0.25))") == 0.25


def test_bad_query_is_a_provider_error(provider):
    with pytest.raises(ProviderError, match="rejected"):
        provider.query("sum(rate(")


def test_unreachable_prometheus_is_a_provider_error():
    p = PrometheusProvider(f"http://127.0.0.1:{_free_port()}", timeout_s=2, retries=0)
    started = time.monotonic()
    with pytest.raises(ProviderError, match="unreachable"):
        p.query("vector(1)")
    assert time.monotonic() - started < 5


def test_several_series_are_refused(provider):
    with pytest.raises(ProviderError, match="series"):
        provider.query('sum by (revision) (rate(diffusion_sampler_requests_total{pool="pool-a"}[60s]))')


def _config(**kw) -> AnalysisConfig:
    return AnalysisConfig(
        slos=(SLO("availability", 0.999), SLO("latency", 0.95, threshold_s=2.0), SLO("quality", 0.9)),
        pairs=(WindowPair(600, 60, 14.4),),
        interval_s=60,
        min_requests=50,
        **kw,
    )


def test_measure_and_decide_roll_back_the_canary(provider):
    config = _config()
    inputs = measure(provider, POOL, "canary", "stable", config, canary_age_s=900)
    assert inputs.error is None
    assert inputs.canary.error_ratios["availability"][60] == pytest.approx(0.3)
    assert inputs.canary.error_ratios["latency"][600] == pytest.approx(0.1)
    assert inputs.canary.error_ratios["quality"][60] == pytest.approx(0.2)
    assert inputs.stable.error_ratios["availability"][600] == pytest.approx(0.0)
    assert inputs.canary.requests[60] == pytest.approx(120, rel=0.1)

    verdict = decide(inputs, config)
    assert verdict.outcome == Outcome.FAIL and verdict.reason == Reason.AVAILABILITY_EXCEEDED
    assert verdict.decisive.canary_short.burn == pytest.approx(300)
    # latency: 0.1 / 0.05 = 2x, below 14.4x; quality: 0.2 / 0.1 = 2x
    latency = [p for p in verdict.pairs if p.sli == "latency"][0]
    assert latency.canary_short.burn == pytest.approx(2.0) and not latency.tripped


def test_measure_the_stable_against_itself_passes(provider):
    config = _config()
    verdict = decide(measure(provider, POOL, "stable", "stable", config), config)
    assert verdict.outcome == Outcome.PASS, verdict.message


def test_measure_without_traffic_is_inconclusive(provider):
    config = _config()
    inputs = measure(provider, POOL, "never-deployed", "stable", config)
    assert inputs.error is None and inputs.canary.requests[60] is None
    assert decide(inputs, config).reason == Reason.INSUFFICIENT_TRAFFIC


def test_measure_maps_a_dead_provider_to_error():
    config = _config()
    p = PrometheusProvider(f"http://127.0.0.1:{_free_port()}", timeout_s=1, retries=0)
    inputs = measure(p, POOL, "canary", "stable", config)
    assert inputs.error and "unreachable" in inputs.error
    assert decide(inputs, config).outcome == Outcome.ERROR


def test_auth_headers_are_sent():
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server API)
            seen.append(self.headers.get("Authorization"))
            body = b'{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"2"]}]}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert PrometheusProvider(url, bearer_token="tok").query("vector(2)") == 2.0
        assert PrometheusProvider(url, basic_auth=("u", "p")).query("vector(2)") == 2.0
    finally:
        server.shutdown()
    assert seen == ["Bearer tok", "Basic dTpw"]


def test_a_shared_outage_is_not_blamed_on_a_young_canary(provider):
    """Both revisions at 100% 5xx for the canary's whole 61 s life. Over a 10-minute window the
    stable's 14 healthy minutes diluted its burn (about 100x against the canary's 1000x), so the
    canary was blamed, rolled back and blacklisted for an outage it did not cause. Measured over
    the same span, both burn alike: inconclusive, the canary is not to blame."""
    config = AnalysisConfig(slos=(SLO("availability", 0.999),), pairs=(WindowPair(600, 60, 14.4),),
                            interval_s=60, min_requests=50)
    inputs = measure(provider, OUTAGE_POOL, "canary", "stable", config, canary_age_s=61)
    assert inputs.canary.error_ratios["availability"][600] == pytest.approx(1.0)
    assert inputs.stable.error_ratios["availability"][600] == pytest.approx(1.0, abs=0.1)
    verdict = decide(inputs, config)
    assert verdict.outcome == Outcome.INCONCLUSIVE and verdict.reason == Reason.STABLE_ALSO_BURNING, verdict.message
    # An old canary (spans not cut) still sees the diluted stable: the shape of the fault.
    diluted = measure(provider, OUTAGE_POOL, "canary", "stable", config, canary_age_s=None)
    assert diluted.stable.error_ratios["availability"][600] < 0.2
