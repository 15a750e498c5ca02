"""The golden-render gate end to end: the canary's and the stable's sampler pods on the real
node render the model's golden prompts, asked by the operator through the API server's Service
proxy (as its least-privilege ServiceAccount), while users' load goes through the Gateway.

A canary whose model renders noise (the sampler's test-only ``faultInjection.image``) is
rolled back before the HTTPRoute ever gives it a weight, so no user request reaches it; a good
canary (same weights, another default step count: the golden renders fix their own steps)
renders what the stable renders and goes on to its steps.
"""

from __future__ import annotations

import pytest

from diffusion_operator.demo.traffic import REQUEST
from tests.e2e.test_rollouts import (
    assert_gateway_never_failed,
    assert_rolled_back_cleanly,
    assert_users_saw_no_errors,
    canary_weights_seen,
)
from tests.support.rollouts import CANARY_PATCH, DM_SPEC, LABEL_POOL, POOL, rollout_spec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

THRESHOLD = 0.02
GOLDEN = {"prompts": [{"prompt": "a red bicycle leaning on a wall", "seed": 7},
                      {"prompt": "a lighthouse at dusk", "seed": 11}],
          "maxMeanDifference": THRESHOLD, "steps": 4, "width": 64, "height": 64, "timeoutSeconds": 30}
NOISE_PATCH = {"spec": {"defaults": {"steps": 8}, "faultInjection": {"image": "noise"}}}


def test_golden_renders_keep_a_broken_canary_from_every_request_and_let_a_good_one_through(
        node_cluster, operator_ctl, scenario):
    scenario.create(rollout_spec([(50, 4), (100, 4)]), prometheus_url=node_cluster.prometheus_url,
                    model_spec={**DM_SPEC, "goldenRenders": GOLDEN})
    stable = scenario.stable_rev
    load = scenario.serve(node_cluster.prometheus_url, rps=5)

    # A canary that renders noise: judged on its renders, rolled back before any traffic.
    broken = scenario.start_rollout(NOISE_PATCH)
    scenario.wait(lambda ro, p: ro.get("phase") == "RolledBack", timeout=240, what="the golden-render rollback")
    ro = assert_rolled_back_cleanly(scenario, "GoldenRenderMismatch")
    golden = ro["goldenRender"]
    assert (golden["revision"], golden["outcome"], golden["maxMeanDifference"]) == (broken, "Failed", THRESHOLD)
    assert [r["seed"] for r in golden["renders"]] == [7, 11]
    assert all(r["meanDifference"] > 0.1 and r["canary"] == "ok" for r in golden["renders"]), golden
    assert "maxMeanDifference 0.02" in scenario.events("GoldenRenderMismatch")[0]["message"]
    assert max(canary_weights_seen(scenario)) == 0
    assert broken not in load.codes, f"users were answered by the broken canary: {dict(load.codes[broken])}"
    for prompt in GOLDEN["prompts"]:
        assert prompt["prompt"] not in str(scenario.pool()["status"]), "a prompt was written to status"
    pod_logs = [sampler_logs(scenario)]

    # A good canary (the same change without the fault: a merge patch removes it with null)
    # renders what the stable renders and goes on to take traffic.
    good = scenario.start_rollout({"spec": {**CANARY_PATCH["spec"], "faultInjection": None}})
    assert good != broken
    ro = scenario.wait(lambda ro, p: ro.get("phase") == "Succeeded", timeout=240, what="the good canary's promotion")
    golden = ro["goldenRender"]
    assert (golden["revision"], golden["outcome"]) == (good, "Passed"), golden
    differences = [r["meanDifference"] for r in golden["renders"]]
    print(f"golden renders: broken canary differences above {THRESHOLD}; good canary {differences}")
    assert all(d <= THRESHOLD for d in differences)
    passed = scenario.events("GoldenRenderPassed")
    assert passed and good in passed[0]["message"]
    assert load.codes[good][200] > 0, "the good canary served users after its renders passed"
    assert_users_saw_no_errors(load, good)
    assert_users_saw_no_errors(load, stable)
    assert_gateway_never_failed(load, scenario)

    # No prompt, golden or users', in any log: the operator's, or the samplers' (which log a hash).
    pod_logs.append(sampler_logs(scenario))
    for prompt in [p["prompt"] for p in GOLDEN["prompts"]] + [REQUEST["prompt"]]:
        assert prompt not in operator_ctl.output, f"the operator logged a prompt: {prompt!r}"
        for logs in pod_logs:
            assert prompt not in logs, f"a sampler pod logged a prompt: {prompt!r}"
    assert all('"prompt_hash"' in logs and '"golden-render"' in logs for logs in pod_logs)


def sampler_logs(scenario) -> str:
    """Everything the pool's sampler pods have logged so far."""
    return scenario.kubectl("logs", "-l", f"{LABEL_POOL}={POOL}", "--tail=-1", "--prefix", "--all-containers",
                            check=False).stdout
