"""``kubectl diffusion``: the pure parts (action values, patches, status formatting, arguments)."""

from __future__ import annotations

import copy
from datetime import datetime, timezone

import pytest

from diffusion_operator.plugin import (
    ACTION_ANNOTATION,
    VERBS,
    action_hint,
    action_patch,
    action_value,
    build_parser,
    format_status,
)
from diffusion_operator.rollout.state_machine import SREAction

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 12, 30, 5, tzinfo=timezone.utc)

POOL = {
    "metadata": {"name": "sdxl", "namespace": "prod", "annotations": {ACTION_ANNOTATION: "pause@1"}},
    "spec": {"modelRef": {"name": "sdxl-base"}, "replicas": 3,
             "rollout": {"steps": [{"weight": 10}, {"weight": 25}, {"weight": 50}, {"weight": 100}]}},
    "status": {
        "phase": "Progressing",
        "desiredRevision": "new222",
        "replicas": 4, "readyReplicas": 4,
        "conditions": [{"type": "Ready", "status": "True"}, {"type": "Progressing", "status": "True"}],
        "rollout": {
            "phase": "Progressing", "stableRevision": "old111", "canaryRevision": "new222",
            "currentStep": 1, "canaryWeight": 25, "lastAction": "pause@1",
            "reason": "StepAdvanced", "message": "step 2 of 4",
            "lastAnalysis": {
                "at": "2025-03-01T12:29:00Z", "outcome": "pass", "reason": "BurnRateWithinBudget",
                "message": "all pairs within budget",
                "burnRates": [
                    {"sli": "availability", "factor": 14.4, "longWindowSeconds": 720, "shortWindowSeconds": 60,
                     "longBurnRate": 0.5, "shortBurnRate": 0.25, "stableLongBurnRate": 0.1,
                     "stableShortBurnRate": 0.0, "requests": 120.0, "state": "ok"},
                    {"sli": "latency", "factor": 6, "longWindowSeconds": 4320, "shortWindowSeconds": 360,
                     "longBurnRate": None, "shortBurnRate": 7.125, "requests": 30, "state": "warming-up"},
                ],
            },
            "history": [
                {"canaryRevision": f"c{i}", "stableRevision": f"s{i}", "startedAt": f"2025-02-0{i}T00:00:00Z",
                 "finishedAt": f"2025-02-0{i}T00:20:00Z", "outcome": "Succeeded" if i % 2 else "RolledBack",
                 "reason": "Promoted" if i % 2 else "AvailabilityBurnRateExceeded"}
                for i in range(1, 8)
            ],
        },
    },
}


def test_action_value_is_verb_at_unique_id_and_parses_as_sre_action():
    v = action_value("abort", now=NOW, nonce="deadbeef")
    assert v == "abort@20250301T123005Z-deadbeef"
    parsed = SREAction.parse(v)
    assert parsed is not None and parsed.verb == "abort" and parsed.key == v


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_is_understood_by_the_state_machine(verb):
    assert SREAction.parse(action_value(verb)).verb == verb
    assert VERBS == SREAction.VERBS


def test_two_requests_get_different_ids():
    assert action_value("promote", now=NOW) != action_value("promote", now=NOW)


def test_unknown_verb_is_refused():
    with pytest.raises(ValueError):
        action_value("restart")


def test_patch_touches_only_the_annotation():
    assert action_patch("abort@x") == {"metadata": {"annotations": {"diffusion.serving.dev/action": "abort@x"}}}


def test_status_shows_phase_step_revisions_weights():
    out = format_status(POOL)
    assert out.splitlines()[0] == "InferencePool prod/sdxl"
    assert "Phase:         Progressing" in out
    assert "Ready=True, Progressing=True" in out
    assert "step 2/4 (step weight 25%)" in out
    assert "Stable:        old111   weight 75%" in out
    assert "Canary:        new222   weight 25%" in out
    assert "4 ready / 4" in out
    assert "Last action:   pause@1" in out


def test_status_shows_burn_rate_per_sli_and_window_against_threshold():
    lines = format_status(POOL).splitlines()
    header = next(line for line in lines if "LONG BURN" in line)
    assert header.split() == ["SLI", "WINDOWS", "LONG", "BURN", "SHORT", "BURN", "THRESHOLD", "STABLE", "L/S",
                              "REQUESTS", "STATE"]
    avail = next(line for line in lines if line.strip().startswith("availability"))
    assert avail.split() == ["availability", "12m/1m", "0.50", "0.25", "14.4x", "0.10/0.00", "120", "ok"]
    lat = next(line for line in lines if line.strip().startswith("latency"))
    assert lat.split() == ["latency", "1h12m/6m", "-", "7.12", "6x", "-/-", "30", "warming-up"]
    assert "Last analysis: pass BurnRateWithinBudget at 2025-03-01T12:29:00Z" in "\n".join(lines)


def test_status_shows_the_last_five_history_entries():
    out = format_status(POOL)
    assert "History (last 5 of 7):" in out
    assert "c7" in out and "c3" in out and " c2 " not in out and " c1 " not in out
    row = next(line for line in out.splitlines() if " c6 " in line)
    assert row.split() == ["2025-02-06T00:00:00Z", "2025-02-06T00:20:00Z", "s6", "c6", "RolledBack",
                           "AvailabilityBurnRateExceeded"]


def test_pending_action_is_flagged():
    pool = copy.deepcopy(POOL)
    pool["metadata"]["annotations"][ACTION_ANNOTATION] = "abort@2"
    assert "Last action:   abort@2 (pending: not handled yet)" in format_status(pool)


@pytest.mark.parametrize("pool", [
    {"metadata": {"name": "p", "namespace": "n"}},
    {"metadata": {"name": "p", "namespace": "n"}, "spec": {}, "status": {}},
    {"metadata": {"name": "p", "namespace": "n"}, "status": {"rollout": {"lastAnalysis": {}, "history": []}}},
    {"metadata": {"name": "p", "namespace": "n"},
     "status": {"conditions": [{}], "rollout": {"currentStep": "x", "canaryRevision": "c", "canaryWeight": "?",
                                                "lastAnalysis": {"burnRates": [{}, "junk"]}, "history": [{}, 3]}}},
    {},
])
def test_status_never_crashes_and_prints_dashes_for_missing_fields(pool):
    out = format_status(pool)
    assert "Phase:         -" in out
    assert "Stable:        -" in out
    assert "Traceback" not in out


def test_status_of_a_stable_pool():
    pool = {"metadata": {"name": "p", "namespace": "n"},
            "status": {"phase": "Ready", "rollout": {"phase": "Stable", "stableRevision": "r1"}}}
    out = format_status(pool)
    assert "Stable:        r1   weight 100%" in out
    assert "Canary:        -   weight -" in out
    assert "Last analysis: -" in out and "History: -" in out


def test_hints_when_the_operator_will_ignore_the_action():
    stable = {"status": {"rollout": {"phase": "Stable"}}}
    assert "no rollout in flight" in action_hint("promote", stable)
    assert action_hint("abort", POOL) is None
    assert action_hint("resume", {"status": {"rollout": {"phase": "RolledBack"}}}) is None
    assert action_hint("resume", POOL) is not None
    assert action_hint("abort", {}) is None  # no status yet: say nothing


def test_arguments_global_flags_before_or_after_the_command():
    p = build_parser()
    a = p.parse_args(["abort", "sdxl", "-n", "prod", "--context", "c1", "--kubeconfig", "/k"])
    assert (a.verb, a.pool, a.namespace, a.context, a.kubeconfig) == ("abort", "sdxl", "prod", "c1", "/k")
    a = p.parse_args(["-n", "prod", "--context", "c2", "status", "sdxl"])
    assert (a.command, a.pool, a.namespace, a.context) == ("status", "sdxl", "prod", "c2")


def test_kubeconfig_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("KUBECONFIG", "/from/env")
    assert build_parser().parse_args(["status", "p"]).kubeconfig == "/from/env"
    monkeypatch.delenv("KUBECONFIG")
    a = build_parser().parse_args(["status", "p"])
    assert a.kubeconfig is None and a.namespace is None


def test_help_explains_why_an_annotation(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["abort", "--help"])
    out = capsys.readouterr().out
    assert "diffusion.serving.dev/action" in out and "Git" in out and "drift" in out
