"""The per-pool PrometheusRule: SLI recording rules and multi-window burn-rate alerts.

Structure and exact expressions are asserted here; the e2e tests hand the rendered groups to
the real ``promtool``: ``check rules`` (syntax, PromQL parsing) and ``test rules`` (synthetic
series: a 2 % error ratio at a 99.9 % objective pages, a healthy revision does not).
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest
import yaml

from diffusion_operator.builders import LABEL_POOL
from diffusion_operator.rollout import promql
from diffusion_operator.rollout.rules import ALERT_PAIRS, record_name, rule_name
from diffusion_operator.rollout.rules import prometheus_rule as _prometheus_rule
from diffusion_operator.spec import PoolSpec

# Pure tests are marked unit; the ones that run promtool/helm/gopher-lua are marked e2e.

POOL = {"apiVersion": "diffusion.serving.dev/v1alpha1", "kind": "InferencePool",
        "metadata": {"name": "sdxl", "namespace": "prod", "uid": "uid-1"}}
FULL_SPEC = {
    "slo": {"availability": {"objective": 0.999}, "latency": {"thresholdSeconds": 2, "objective": 0.95},
            "quality": {"objective": 0.99}, "periodDays": 30},
    "monitoring": {"labels": {"release": "kube-prometheus-stack"}},
}
MINIMAL_SPEC = {"slo": {"availability": {"objective": 0.99}}}


def _pool(spec: dict) -> PoolSpec:
    """The pool spec as the operator parses it (the same parse the canary analysis reads)."""
    return PoolSpec.from_body({"modelRef": {"name": "m"}, **spec})


def prometheus_rule(pool_obj, spec: dict, revision):
    return _prometheus_rule(pool_obj, _pool(spec), revision)


def slis_of(spec: dict):
    return _pool(spec).analysis.slos


def _rules(rule, group_suffix):
    [group] = [g for g in rule["spec"]["groups"] if g["name"].endswith(group_suffix)]
    return group["rules"]


@pytest.mark.unit
def test_object_shape_owner_and_labels():
    r = prometheus_rule(POOL, FULL_SPEC, "abc123")
    assert r["apiVersion"] == "monitoring.coreos.com/v1" and r["kind"] == "PrometheusRule"
    md = r["metadata"]
    assert md["name"] == "sdxl-slo" and md["namespace"] == "prod"
    assert md["ownerReferences"] == [{"apiVersion": "diffusion.serving.dev/v1alpha1", "kind": "InferencePool",
                                      "name": "sdxl", "uid": "uid-1", "controller": True,
                                      "blockOwnerDeletion": True}]
    assert md["labels"][LABEL_POOL] == "sdxl"
    assert md["labels"]["app.kubernetes.io/managed-by"] == "diffusion-operator"
    # spec.monitoring.labels lets a Prometheus ruleSelector find it
    assert md["labels"]["release"] == "kube-prometheus-stack"
    assert [g["name"] for g in r["spec"]["groups"]] == ["prod/sdxl/sli", "prod/sdxl/burn-rate-alerts"]


@pytest.mark.unit
def test_operator_labels_win_over_user_labels():
    spec = {"monitoring": {"labels": {LABEL_POOL: "other", "team": "ml"}}}
    labels = prometheus_rule(POOL, spec, "r")["metadata"]["labels"]
    assert labels[LABEL_POOL] == "sdxl" and labels["team"] == "ml"


@pytest.mark.unit
def test_rule_name_fits_a_label_value():
    assert len(rule_name("x" * 253)) <= 63


@pytest.mark.unit
def test_no_stable_revision_gives_no_groups():
    r = prometheus_rule(POOL, FULL_SPEC, None)
    assert r["spec"] == {"groups": []}


@pytest.mark.unit
def test_slis_follow_the_spec():
    assert [s.sli for s in slis_of(MINIMAL_SPEC)] == ["availability"]
    assert [s.sli for s in slis_of({})] == ["availability"]  # CRD default objective
    assert slis_of({})[0].objective == 0.99
    assert [s.sli for s in slis_of(FULL_SPEC)] == ["availability", "latency", "quality"]
    # a latency objective without its threshold cannot be measured: refused (the CRD requires it too)
    with pytest.raises(ValueError, match="threshold"):
        slis_of({"slo": {"latency": {"objective": 0.9}}})
    with pytest.raises(ValueError):
        slis_of({"slo": {"availability": {"objective": 1.0}}})


@pytest.mark.unit
def test_recording_rules_cover_every_alert_window_per_sli():
    rec = _rules(prometheus_rule(POOL, FULL_SPEC, "abc123"), "/sli")
    names = [r["record"] for r in rec]
    for sli in ("availability", "latency", "quality"):
        assert [n for n in names if f":{sli}_" in n] == [
            f"diffusion:{sli}_error_ratio:rate{w}" for w in ("5m", "30m", "1h", "6h", "3d")]
    for r in rec:
        assert r["labels"] == {"namespace": "prod", "pool": "sdxl", "revision": "abc123",
                               "sli": r["record"].split(":")[1].removesuffix("_error_ratio")}


@pytest.mark.unit
def test_minimal_spec_records_availability_only():
    rec = _rules(prometheus_rule(POOL, MINIMAL_SPEC, "r1"), "/sli")
    assert {r["labels"]["sli"] for r in rec} == {"availability"}
    assert len(rec) == 5
    alerts = _rules(prometheus_rule(POOL, MINIMAL_SPEC, "r1"), "/burn-rate-alerts")
    assert {a["labels"]["sli"] for a in alerts} == {"availability"} and len(alerts) == 3


@pytest.mark.unit
def test_recording_expressions_are_the_analysis_queries_scoped_to_the_namespace():
    rec = {r["record"]: r["expr"] for r in _rules(prometheus_rule(POOL, FULL_SPEC, "abc123"), "/sli")}
    ep = 'endpoint=~"generations|generate|edits"'
    assert rec["diffusion:availability_error_ratio:rate5m"] == (
        '(sum(rate(diffusion_sampler_requests_total{pool="sdxl",revision="abc123",namespace="prod",' + ep
        + ',code=~"5.."}[300s])) or vector(0))'
        ' / sum(rate(diffusion_sampler_requests_total{pool="sdxl",revision="abc123",namespace="prod",' + ep
        + "}[300s]))"
    )
    # latency: the exact threshold bucket, in either spelling of le
    assert rec["diffusion:latency_error_ratio:rate1h"] == (
        '1 - (sum(rate(diffusion_sampler_request_duration_seconds_bucket{pool="sdxl",revision="abc123",'
        'namespace="prod",' + ep + r',le=~"2(\\.0)?"}[3600s]))'
        ' / sum(rate(diffusion_sampler_request_duration_seconds_count{pool="sdxl",revision="abc123",'
        'namespace="prod",' + ep + "}[3600s])))"
    )
    assert rec["diffusion:quality_error_ratio:rate3d"] == promql.quality_error_ratio(
        "sdxl", "abc123", 259200, extra_selector='namespace="prod"')


@pytest.mark.unit
def test_extra_selector_from_the_analysis_spec_is_added():
    spec = {**MINIMAL_SPEC, "rollout": {"analysis": {"extraSelector": 'cluster="eu-1"'}}}
    rec = _rules(prometheus_rule(POOL, spec, "r"), "/sli")
    assert all('namespace="prod",cluster="eu-1"' in r["expr"] for r in rec)


@pytest.mark.unit
def test_alerts_are_the_workbook_pairs_with_severities():
    alerts = _rules(prometheus_rule(POOL, FULL_SPEC, "abc123"), "/burn-rate-alerts")
    avail = [a for a in alerts if a["labels"]["sli"] == "availability"]
    got = [(a["labels"]["burn_factor"], a["labels"]["long_window"], a["labels"]["short_window"],
            a["labels"]["severity"]) for a in avail]
    assert got == [("14.4", "1h", "5m", "page"), ("6", "6h", "30m", "page"), ("1", "3d", "6h", "ticket")]
    assert {a["alert"] for a in alerts} == {"DiffusionPoolAvailabilityBudgetBurn", "DiffusionPoolLatencyBudgetBurn",
                                            "DiffusionPoolQualityBudgetBurn"}
    for a in alerts:
        assert a["labels"]["revision"] == "abc123" and a["labels"]["pool"] == "sdxl"
        assert a["labels"]["namespace"] == "prod"


@pytest.mark.unit
def test_alert_expression_is_long_and_short_window_burn_against_the_factor():
    alerts = _rules(prometheus_rule(POOL, FULL_SPEC, "abc123"), "/burn-rate-alerts")
    sel = '{namespace="prod",pool="sdxl",revision="abc123"}'
    by = {(a["labels"]["sli"], a["labels"]["long_window"]): a for a in alerts}
    assert by[("availability", "1h")]["expr"] == (
        f"(diffusion:availability_error_ratio:rate1h{sel} / 0.001 >= 14.4)"
        f" and (diffusion:availability_error_ratio:rate5m{sel} / 0.001 >= 14.4)"
    )
    assert by[("latency", "6h")]["expr"] == (
        f"(diffusion:latency_error_ratio:rate6h{sel} / 0.05 >= 6)"
        f" and (diffusion:latency_error_ratio:rate30m{sel} / 0.05 >= 6)"
    )
    assert by[("quality", "3d")]["expr"] == (
        f"(diffusion:quality_error_ratio:rate3d{sel} / 0.01 >= 1)"
        f" and (diffusion:quality_error_ratio:rate6h{sel} / 0.01 >= 1)"
    )


@pytest.mark.unit
def test_annotations_carry_burn_rate_objective_and_runbook():
    alerts = _rules(prometheus_rule(POOL, FULL_SPEC, "abc123"), "/burn-rate-alerts")
    a = next(a for a in alerts if a["labels"]["sli"] == "availability" and a["labels"]["long_window"] == "1h")
    ann = a["annotations"]
    assert "{{ $value" in ann["summary"] and "14.4x" in ann["summary"] and "prod/sdxl" in ann["summary"]
    assert "99.9%" in ann["description"] and "2% of the 30d error budget" in ann["description"]
    assert "kubectl diffusion status sdxl -n prod" in ann["description"]
    assert ann["runbook_url"].endswith("docs/operations.md#slo-burn-rate-alerts")
    lat = next(a for a in alerts if a["labels"]["sli"] == "latency")
    assert "slower than 2s" in lat["annotations"]["description"]


@pytest.mark.unit
def test_factors_follow_the_slo_period():
    assert [p.factor(30 * 86400) for p in ALERT_PAIRS] == [14.4, 6.0, 1.0]
    spec = {"slo": {"availability": {"objective": 0.999}, "periodDays": 7}}
    alerts = _rules(prometheus_rule(POOL, spec, "r"), "/burn-rate-alerts")
    assert [a["labels"]["burn_factor"] for a in alerts] == ["3.36", "1.4", "0.233333"]


@pytest.mark.unit
def test_record_name():
    assert record_name("latency", 300) == "diffusion:latency_error_ratio:rate5m"
    assert record_name("availability", 259200) == "diffusion:availability_error_ratio:rate3d"


# --- the real promtool ------------------------------------------------------------------------


def _write_rules(tmp_path, spec, revision="abc123"):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(prometheus_rule(POOL, spec, revision)["spec"], sort_keys=False))
    return path


@pytest.mark.e2e
@pytest.mark.parametrize("spec", [FULL_SPEC, MINIMAL_SPEC, {}], ids=["full", "minimal", "defaults"])
def test_promtool_check_rules_accepts_the_rendered_groups(tmp_path, promtool_bin, spec):
    path = _write_rules(tmp_path, spec)
    res = subprocess.run([str(promtool_bin), "check", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    n = 15 + 9 if spec is FULL_SPEC else 5 + 3
    assert f"{n} rules found" in res.stdout


@pytest.mark.e2e
def test_promtool_unit_test_pages_on_a_fast_burn_and_not_on_a_healthy_revision(tmp_path, promtool_bin):
    """Synthetic counters through the real rule engine: 2 % 5xx at a 99.9 % objective (burn 20)
    pages; 0.05 % 5xx (burn 0.5) trips nothing; another revision's errors are not counted."""
    rules = _write_rules(tmp_path, MINIMAL_SPEC | {"slo": {"availability": {"objective": 0.999}}})
    base = 'diffusion_sampler_requests_total{namespace="prod",pool="sdxl",revision="abc123",endpoint="generations"'
    other = base.replace('"abc123"', '"other"')
    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {   # 100 req/min, 2 of them 5xx
                "interval": "1m",
                "input_series": [
                    {"series": base + ',code="200"}', "values": "0+98x120"},
                    {"series": base + ',code="500"}', "values": "0+2x120"},
                    # another revision of the same pool burning hard must not count
                    {"series": other + ',code="500"}', "values": "0+100x120"},
                ],
                "alert_rule_test": [
                    # the series exist for the whole test, so every pair's windows hold 2 % errors:
                    # all three pairs fire, each with its own severity
                    {"eval_time": "90m", "alertname": "DiffusionPoolAvailabilityBudgetBurn", "exp_alerts": [
                        {"exp_labels": _labels(factor, lw, sw, sev), "exp_annotations": _annotations(rules, lw)}
                        for factor, lw, sw, sev in (("14.4", "1h", "5m", "page"), ("6", "6h", "30m", "page"),
                                                    ("1", "3d", "6h", "ticket"))
                    ]},
                ],
                "promql_expr_test": [{
                    "expr": 'round(diffusion:availability_error_ratio:rate5m{revision="abc123"}, 0.0001)',
                    "eval_time": "60m",
                    "exp_samples": [{"labels": '{namespace="prod",'
                                               'pool="sdxl",revision="abc123",sli="availability"}',
                                     "value": 0.02}],
                }],
            },
            {   # healthy: 0.05 % errors
                "interval": "1m",
                "input_series": [
                    {"series": base + ',code="200"}', "values": "0+1999x120"},
                    {"series": base + ',code="500"}', "values": "0+1x120"},
                ],
                "alert_rule_test": [
                    {"eval_time": "90m", "alertname": "DiffusionPoolAvailabilityBudgetBurn", "exp_alerts": []},
                ],
            },
        ],
    }
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    res = subprocess.run([str(promtool_bin), "test", "rules", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, textwrap.shorten(res.stdout + res.stderr, 4000)


def _labels(factor, long_window, short_window, severity):
    return {"severity": severity, "sli": "availability", "namespace": "prod", "pool": "sdxl",
            "revision": "abc123", "burn_factor": factor, "long_window": long_window, "short_window": short_window}


def _annotations(rules_path, long_window):
    """The alert's annotations with ``$value`` rendered as promtool will (burn 20.0)."""
    groups = yaml.safe_load(rules_path.read_text())["groups"]
    alert = next(r for g in groups for r in g["rules"]
                 if r.get("alert") and r["labels"]["long_window"] == long_window)
    return {k: v.replace('{{ $value | printf "%.1f" }}', "20.0") for k, v in alert["annotations"].items()}
