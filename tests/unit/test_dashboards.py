"""The Grafana dashboards: the committed JSON is what ``hack/dashboards/generate.py`` builds now,
every panel has a title and a query, the panels the dashboards promise are there, and the chart
ships them as ConfigMaps the Grafana sidecar picks up.

Every PromQL expression in them is run against a real Prometheus and sampler by
``tests/integration/test_dashboard_queries.py``. The generator needs the ``dashboards`` extra
(``pip install -e '.[dashboards]'``); without it the drift test fails, it is not skipped.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from tests.unit.test_chart import CHART, _render, helm  # noqa: F401 - helm is a fixture

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "hack" / "dashboards" / "generate.py"
DASHBOARD_DIR = CHART / "files" / "dashboards"
NAMES = ("executive", "oncall", "debug")


def _generator():
    if importlib.util.find_spec("grafana_foundation_sdk") is None:
        pytest.fail("grafana-foundation-sdk is missing: pip install -e '.[dashboards]'")
    spec = importlib.util.spec_from_file_location("dashboards_generate", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboard(name: str) -> dict:
    return json.loads((DASHBOARD_DIR / f"{name}.json").read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel but rows (including panels nested in collapsed rows)."""
    out = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            out += p.get("panels") or []
        else:
            out.append(p)
    return out


def _titles(name: str) -> list[str]:
    return [p["title"] for p in panels(_dashboard(name))]


@pytest.mark.unit
def test_committed_dashboards_are_what_the_generator_builds():
    rendered = _generator().render()
    assert sorted(rendered) == sorted(f"{n}.json" for n in NAMES)
    assert sorted(p.name for p in DASHBOARD_DIR.glob("*.json")) == sorted(rendered)
    stale = [n for n, text in rendered.items() if (DASHBOARD_DIR / n).read_text() != text]
    assert not stale, f"dashboards drifted from the generator: {stale}; run python hack/dashboards/generate.py"


@pytest.mark.unit
@pytest.mark.parametrize("name", NAMES)
def test_every_panel_has_a_title_a_description_and_a_query(name):
    d = _dashboard(name)
    assert d["uid"] == f"diffusion-{name}" and d["title"]
    for p in panels(d):
        assert p.get("title"), p
        assert p.get("description"), p["title"]
        assert p.get("targets"), f"{p['title']}: no query"
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"], p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
    rows = [p for p in d["panels"] if p["type"] == "row"]
    ids = [p["id"] for p in rows + panels(d)]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"


@pytest.mark.unit
@pytest.mark.parametrize("name", NAMES)
def test_datasource_namespace_and_pool_variables(name):
    variables = {v["name"]: v for v in _dashboard(name)["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["query"] == "label_values(diffusion_sampler_requests_total, namespace)"
    assert variables["pool"]["query"] == 'label_values(diffusion_sampler_requests_total{namespace=~"$namespace"}, pool)'
    for v in ("namespace", "pool"):
        assert variables[v]["type"] == "query" and variables[v]["datasource"]["uid"] == "${datasource}"
    # every $variable a query uses is defined (or one of Grafana's own)
    used = {m for p in panels(_dashboard(name)) for t in p["targets"] for m in re.findall(r"\$(\w+)", t["expr"])}
    builtin = {"__rate_interval", "__range", "__interval"}
    assert used - builtin <= set(variables), used - builtin - set(variables)


def _has(titles: list[str], *words: str) -> bool:
    return any(all(w.lower() in t.lower() for w in words) for t in titles)


@pytest.mark.unit
def test_executive_shows_slos_budget_left_and_cost_per_image():
    titles = _titles("executive")
    for sli in ("Availability", "Latency", "Quality"):
        assert _has(titles, sli, "SLI"), titles
        assert _has(titles, sli, "budget left"), titles
    assert _has(titles, "cost per image") and _has(titles, "GPU-seconds per image"), titles
    d = _dashboard("executive")
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["gpu_hour_usd"]["type"] == "constant"
    assert variables["availability_objective"]["query"] == "0.999"
    [cost] = [p for p in panels(d) if p["title"] == "Cost per image (USD)"]
    assert "$gpu_hour_usd" in cost["targets"][0]["expr"] and "GPU-seconds per image =" in cost["description"]
    [budget] = [p for p in panels(d) if p["title"] == "Availability error budget left"]
    assert budget["targets"][0]["expr"].endswith("/ (1 - $availability_objective)")
    assert "[$slo_period]" in budget["targets"][0]["expr"]


@pytest.mark.unit
def test_oncall_shows_burn_rates_per_pair_rollout_and_errors():
    from diffusion_operator.rollout.rules import ALERT_PAIRS, record_name

    d = _dashboard("oncall")
    titles = _titles("oncall")
    assert _has(titles, "canary weight") and _has(titles, "rollout phase"), titles
    assert _has(titles, "errors by reason") and _has(titles, "errors by status code"), titles
    for sli in ("availability", "latency", "quality"):
        for pair in ALERT_PAIRS:
            factor = pair.factor(30 * 86400)
            [p] = [p for p in panels(d) if p["title"].lower().startswith(f"{sli} burn rate")
                   and f"at {factor:g}x" in p["title"]]
            exprs = [t["expr"] for t in p["targets"]]
            assert any(record_name(sli, pair.long_s) + "{" in e for e in exprs), exprs
            assert any(record_name(sli, pair.short_s) + "{" in e for e in exprs), exprs
            steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert steps[-1]["value"] == factor
            assert p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    exprs = " ".join(t["expr"] for p in panels(d) for t in p["targets"])
    for metric in ("diffusion_operator_canary_weight", "diffusion_operator_rollout_phase",
                   "diffusion_operator_burn_rate", "diffusion_operator_errors_total"):
        assert metric in exprs, metric


@pytest.mark.unit
def test_debug_shows_batching_queue_steps_gpu_memory_and_safety():
    titles = _titles("debug")
    for words in (("batch size",), ("queue depth",), ("step time",), ("gpu memory",), ("safety outcomes",)):
        assert _has(titles, *words), (words, titles)


@pytest.mark.e2e
def test_chart_ships_one_configmap_per_dashboard_with_the_sidecar_label(helm):  # noqa: F811
    docs = _render(helm)
    maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    assert sorted(maps) == [f"ops-diffusion-operator-dashboard-{n}" for n in sorted(NAMES)]
    for name in NAMES:
        cm = maps[f"ops-diffusion-operator-dashboard-{name}"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == "diffusion-system"
        assert json.loads(cm["data"][f"diffusion-{name}.json"]) == _dashboard(name)

    docs = _render(helm, "dashboards.label=my_dash", "dashboards.labelValue=yes", "dashboards.namespace=monitoring",
                   "dashboards.annotations.grafana_folder=Diffusion")
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(maps) == 3
    for cm in maps:
        assert cm["metadata"]["labels"]["my_dash"] == "yes" and "grafana_dashboard" not in cm["metadata"]["labels"]
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Diffusion"}

    assert not [d for d in _render(helm, "dashboards.enabled=false") if d["kind"] == "ConfigMap"]
