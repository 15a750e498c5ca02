"""Every PromQL expression of the Grafana dashboards, run against a real Prometheus that scrapes a
real sampler (the tiny model, on the CPU) and evaluates the pool's real recording rules.

The sampler serves a few generations (one refused by the blocklist, one rejected with 422) so
its series exist; the rules are ``diffusion_operator.rollout.rules.prometheus_rule``'s groups
for one pool, written as a rule file. Each query has the dashboard's variables replaced by
concrete values (the target's namespace, the pool, each variable's default, Grafana's
``$__rate_interval``/``$__range``) and must parse, execute and return at least one series.

No operator runs here: the operator's own metric objects (``diffusion_operator.metrics``) are set
in this process to what a rollout at 25 % would show and served to the same Prometheus, so the
on-call panels' label matchers are checked too. Only GPU memory may be empty (CUDA-only gauge).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import start_http_server

from diffusion_operator import metrics as operator_metrics
from diffusion_operator.devcluster.cluster import free_port
from diffusion_operator.rollout.rules import prometheus_rule
from diffusion_operator.spec import PoolSpec
from tests.support.polling import wait_for
from tests.support.prometheus import PrometheusServer, TargetFile, prom_query, wait_scraped
from tests.support.samplers import ROLLOUT_SAMPLER_ENV, SamplerProcess, build_tiny_model

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "charts" / "diffusion-operator" / "files" / "dashboards"
NAMESPACE, POOL, REVISION = "dash-ns", "dash-pool", "rev-1"
BLOCKED = "forbiddenword"
SPEC = {"modelRef": {"name": "m"},
        "slo": {"availability": {"objective": 0.999}, "latency": {"thresholdSeconds": 1, "objective": 0.99},
                "quality": {"objective": 0.99}}}
# Grafana's own variables, as a 1h dashboard range would set them.
BUILTINS = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}
# May be empty here: the sampler only sets it on CUDA.
MAY_BE_EMPTY = re.compile(r"diffusion_sampler_gpu_memory_bytes")


def _dashboards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def _queries() -> list[tuple[str, str, str, dict]]:
    """(dashboard, panel title, expr, variables) for every target of every panel."""
    out = []
    for name, d in _dashboards().items():
        variables = {"namespace": NAMESPACE, "pool": POOL}
        for v in d["templating"]["list"]:
            if v["type"] in ("textbox", "constant", "custom"):
                variables[v["name"]] = v["query"]
        panels = [p for top in d["panels"] for p in ([top] if top["type"] != "row" else top.get("panels") or [])]
        for p in panels:
            for t in p["targets"]:
                out.append((name, p["title"], t["expr"], variables))
    return out


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's interpolation for single values: ``$name`` and ``${name}``."""
    values = {**BUILTINS, **variables}

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"undefined variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


@pytest.fixture(scope="module")
def prometheus(prometheus_bin, tmp_path_factory):
    """Prometheus with the pool's recording rules, scraping one sampler that has served traffic."""
    work = tmp_path_factory.mktemp("dashboards")
    model = build_tiny_model(tmp_path_factory.mktemp("dash-model") / "tiny-sd")
    sampler = SamplerProcess("dash", model, work, pool=POOL, revision=REVISION,
                             **{**ROLLOUT_SAMPLER_ENV, "SAMPLER_SAFETY_BLOCKLIST": BLOCKED})
    prom = PrometheusServer(prometheus_bin, work / "prometheus", file_targets=True)
    pool_obj = {"apiVersion": "diffusion.serving.dev/v1alpha1", "kind": "InferencePool",
                "metadata": {"name": POOL, "namespace": NAMESPACE, "uid": "uid-1"}}
    groups = prometheus_rule(pool_obj, PoolSpec.from_body(SPEC), REVISION)["spec"]["groups"]
    rules = work / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    config = yaml.safe_load(prom.config.read_text())
    prom.config.write_text(yaml.safe_dump({**config, "rule_files": [str(rules)]}))
    _set_operator_metrics()
    op_port = free_port()
    op_server, _ = start_http_server(op_port, addr="127.0.0.1")
    try:
        prom.start()
        sampler.wait_ready()
        # The PodMonitor adds the pool's namespace to sampler series; the operator's series carry
        # their own (a conflicting target label would rename it to exported_namespace).
        targets = [TargetFile(prom.targets_dir, "dash", sampler.port, {"namespace": NAMESPACE}),
                   TargetFile(prom.targets_dir, "operator", op_port, {"component": "operator"})]
        wait_scraped(prom.url, targets)
        url = sampler.url + "/v1/generate"
        body = {"prompt": "a lighthouse at dusk", "width": 32, "height": 32, "steps": 1}
        for _ in range(4):
            assert requests.post(url, json=body, timeout=60).status_code == 200
        assert requests.post(url, json={**body, "prompt": f"a {BLOCKED}"}, timeout=60).status_code != 500
        assert requests.post(url, json={**body, "steps": 10_000}, timeout=60).status_code == 422
        # rate() needs two scrapes after the traffic; the rules then need one evaluation.
        wait_for(lambda: all(prom_query(prom.url, f'{q}{{pool="{POOL}",namespace="{NAMESPACE}"}}') for q in (
            "diffusion:availability_error_ratio:rate5m", "diffusion:latency_error_ratio:rate5m",
            "diffusion:quality_error_ratio:rate5m")), 30, 0.5, "the recording rules to have values",
            ignoring=(requests.RequestException,))
        # The operator's counters were set before its first scrape: rate() and increase() need two
        # samples of them in their window (CI once queried after one and found no series).
        wait_for(lambda: prom_query(prom.url, "count_over_time(diffusion_operator_errors_total[1m]) >= 2"),
                 30, 0.5, "two scrapes of the operator's metrics", ignoring=(requests.RequestException,))
        yield prom
    finally:
        op_server.shutdown()
        op_server.server_close()
        sampler.stop()
        prom.stop()


def _set_operator_metrics() -> None:
    """What the operator exposes for a pool with a canary at 25 % under analysis."""
    m, labels = operator_metrics, {"namespace": NAMESPACE, "pool": POOL}
    m.CANARY_WEIGHT.labels(**labels).set(25)
    m.ROLLOUT_PHASE.labels(**labels, phase="Progressing").set(1)
    m.ROLLOUT_PHASE.labels(**labels, phase="Paused").set(0)
    for sli in ("availability", "latency", "quality"):
        m.BURN_RATE.labels(**labels, sli=sli, window="60s").set(0.5)
    m.VERDICTS.labels(**labels, verdict="pass").inc()
    m.ERRORS.labels(kind="InferencePool", reason="TemporaryError").inc()


def _run(url: str, query: str) -> dict:
    resp = requests.get(f"{url}/api/v1/query", params={"query": query, "time": f"{time.time():.3f}"}, timeout=10)
    return {"http": resp.status_code, **resp.json()}


def test_every_dashboard_query_parses_executes_and_finds_sampler_series(prometheus):
    queries = _queries()
    assert len(queries) > 40  # three dashboards' worth
    problems = []
    for dash, title, expr, variables in queries:
        query = substitute(expr, variables)
        res = _run(prometheus.url, query)
        if res.get("status") != "success":
            problems.append(f"{dash} / {title}: {res.get('error')}\n  {query}")
        elif not res["data"]["result"] and not MAY_BE_EMPTY.search(expr):
            problems.append(f"{dash} / {title}: no series\n  {query}")
    assert not problems, "\n".join(problems)


def test_namespace_and_pool_variables_find_the_sampler(prometheus):
    for d in _dashboards().values():
        variables = {v["name"]: v for v in d["templating"]["list"]}
        for var, want in (("namespace", NAMESPACE), ("pool", POOL)):
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", variables[var]["query"])
            assert m and m.group(2) == var
            match = substitute(m.group(1), {"namespace": NAMESPACE})
            resp = requests.get(f"{prometheus.url}/api/v1/label/{var}/values", params={"match[]": match},
                                timeout=10)
            assert resp.json()["status"] == "success" and want in resp.json()["data"], resp.text

