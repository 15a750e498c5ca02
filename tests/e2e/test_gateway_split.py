"""The Gateway splits a canary the way the operator wrote it: with the HTTPRoute at 90/10 (the
operator's first canary step), 500 real requests through Traefik land on the two revisions'
pods in proportion, counted by the samplers' own request counters (each pod's /metrics, read
from the pod address), not by the client.
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from diffusion_operator.demo.traffic import GatewayLoad
from tests.support.rollouts import LABEL_REVISION, rollout_spec

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

REQUESTS = 500
CANARY_SHARE = 0.10
#: Two-sided probability of failing a correct 90/10 split by chance.
FALSE_FAILURE = 1e-4


def binomial_bounds(n: int, p: float, alpha: float) -> tuple[int, int]:
    """The smallest [lo, hi] with P(X < lo) <= alpha/2 and P(X > hi) <= alpha/2, X ~ Bin(n, p)."""
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, acc = 0, 0.0
    while acc + pmf[lo] <= alpha / 2:
        acc += pmf[lo]
        lo += 1
    hi, acc = n, 0.0
    while acc + pmf[hi] <= alpha / 2:
        acc += pmf[hi]
        hi -= 1
    return lo, hi


def served(scenario, revision: str) -> float:
    """Generation requests the revision's pods have answered, from their own /metrics."""
    pods = scenario.get("pods", selector=f"{LABEL_REVISION}={revision}")["items"]
    total = 0.0
    for pod in pods:
        text = requests.get(f"http://{pod['status']['podIP']}:8000/metrics", timeout=5).text
        for line in text.splitlines():
            m = re.match(r'diffusion_sampler_requests_total\{([^}]*)\} (\S+)', line)
            if m and 'endpoint="generate"' in m.group(1):
                total += float(m.group(2))
    return total


def test_weights_written_by_the_operator_split_real_requests(node_cluster, operator_ctl, scenario):
    scenario.create(rollout_spec([(10, 600), (100, 4)]), prometheus_url=node_cluster.prometheus_url)
    stable = scenario.stable_rev
    scenario.serve(node_cluster.prometheus_url, rps=2)  # analysis has traffic; the count below is per pod
    canary = scenario.start_rollout()
    scenario.wait(lambda ro, p: ro.get("canaryWeight") == 10, timeout=180, what="the first step (10%)")
    assert scenario.route_weights() == {stable: 90, canary: 10}
    scenario.wait_routed()
    assert scenario.load is not None
    scenario.load.stop()  # from here only the counted requests
    scenario.load = None

    before = {rev: served(scenario, rev) for rev in (stable, canary)}
    client = GatewayLoad(node_cluster.gateway_url, scenario.host)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.one(), range(REQUESTS)))
    after = {rev: served(scenario, rev) for rev in (stable, canary)}

    assert all(code == 200 for _, code in answers), dict(client.codes)
    counted = {rev: after[rev] - before[rev] for rev in (stable, canary)}
    assert counted[stable] + counted[canary] == REQUESTS, counted
    lo, hi = binomial_bounds(REQUESTS, CANARY_SHARE, FALSE_FAILURE)
    print(f"canary served {counted[canary]:.0f} of {REQUESTS} (expected {REQUESTS * CANARY_SHARE:.0f}, "
          f"accepted {lo}..{hi})")
    assert lo <= counted[canary] <= hi, counted
    # The response header agrees with the pods' counters.
    assert client.codes[canary][200] == counted[canary] and client.codes[stable][200] == counted[stable]
    assert scenario.rollout()["canaryWeight"] == 10
