#!/usr/bin/env python3
"""False rollbacks and missed faults of the canary analysis, simulated (no cluster, pure).

Runs ``tests/support/simulated_rollouts.py``'s Monte Carlo through the real ``verdict.decide``
and ``state_machine.transition``: every analysis interval, Poisson traffic at ``rps`` canary
requests per second with errors at ``burn`` x the SLO's error budget, summed over each window
cut to the canary's age; the default rollout (steps 10/25/50/100 % of 300 s each,
progressDeadlineSeconds 600), Workbook pairs scaled to the interval, minRequests 50, no stable
to excuse the canary (the worst case for false rollbacks).

Each setting runs twice on the same seeds: with this checkout's analysis (the sequential test
on small counts) and with the analysis of ``--baseline-ref`` (default: the last commit judged
by burn rates alone), extracted with ``git archive`` and run in a subprocess, so the table's
columns compare the two rules on identical traffic.

    .venv/bin/python benchmarks/rollout_false_alarms.py                   # 1000 rollouts each, ~25 min
    .venv/bin/python benchmarks/rollout_false_alarms.py --rollouts 200    # ~5 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The analysis before the sequential test (burn rates alone, minRequests as a hard floor).
BASELINE_REF = "c7ab45d"

#: (label, setting kwargs). Healthy canaries err exactly at their SLO: any rollback is false.
CASES = [
    ("healthy 1x, 99.9%, 60 s interval, 2 req/s", dict(rps=2, interval_s=60)),
    ("healthy 1x, 99.9%, 60 s interval, 50 req/s", dict(rps=50, interval_s=60)),
    ("healthy 1x, 99.9%, 10 s interval, 10 req/s", dict(rps=10, interval_s=10)),
    ("healthy 1x, 99.9%, 10 s interval, 50 req/s", dict(rps=50, interval_s=10)),
    ("healthy 1x, 99.9%, 60 s interval, 0.5 req/s", dict(rps=0.5, interval_s=60)),
    ("healthy 1x, 99%, 60 s interval, 2 req/s", dict(objective=0.99, rps=2, interval_s=60)),
    ("healthy 1x, 99%, 60 s interval, 0.3 req/s", dict(objective=0.99, rps=0.3, interval_s=60)),
    ("fault 30% errors, 99.9%, 60 s, 2 req/s", dict(rps=2, interval_s=60, burn=300)),
    ("fault 10x budget, 99.9%, 60 s, 2 req/s", dict(rps=2, interval_s=60, burn=10)),
    ("fault 10x budget, 99%, 60 s, 2 req/s", dict(objective=0.99, rps=2, interval_s=60, burn=10)),
    ("fault 30% errors, 99%, 60 s, 0.3 req/s", dict(objective=0.99, rps=0.3, interval_s=60, burn=30)),
]


def worker(rollouts: int, seed: int, labels: list[str]) -> None:
    """One JSON line per case: what ended how, with the canary's traffic time at each end."""
    from tests.support.simulated_rollouts import Setting, simulate

    for label, kwargs in CASES:
        if labels and label not in labels:
            continue
        outcomes = simulate(Setting(**kwargs), rollouts, seed=seed)
        print(json.dumps({"label": label, "outcomes": [asdict(o) for o in outcomes]}), flush=True)


def run_worker(operator_dir: Path, rollouts: int, seed: int) -> dict[str, list[dict]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(operator_dir), str(REPO)]))
    proc = subprocess.run([sys.executable, __file__, "--worker", "--rollouts", str(rollouts), "--seed", str(seed)],
                          env=env, capture_output=True, text=True, check=True, cwd=REPO)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["label"]: r["outcomes"] for r in rows}


def extract(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "operator"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "operator"


def summary(outcomes: list[dict], healthy: bool) -> str:
    n = len(outcomes)
    back = [o for o in outcomes if o["end"].startswith("RolledBack")]
    deadline = sum(1 for o in back if o["end"].endswith("ProgressDeadlineExceeded"))
    if healthy:
        text = f"{len(back) / n:.1%} rolled back"
        return text + (f" ({deadline} on the deadline)" if deadline else "")
    caught = [o for o in back if not o["end"].endswith("ProgressDeadlineExceeded")]
    promoted = sum(1 for o in outcomes if o["end"] == "Promoted")
    med = f", median {statistics.median(o['traffic_s'] for o in caught):.0f} s" if caught else ""
    return f"{len(caught) / n:.1%} caught{med}; {promoted} promoted, {deadline} on the deadline"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rollouts", type=int, default=1000)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--baseline-ref", default=BASELINE_REF, help="git ref of the analysis to compare with")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.rollouts, args.seed, [])
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="false-alarms-") as tmp:
        old_dir = extract(args.baseline_ref, Path(tmp))
        with_test = run_worker(REPO / "operator", args.rollouts, args.seed)
        baseline = run_worker(old_dir, args.rollouts, args.seed)
    print(f"| setting ({args.rollouts} rollouts each, seed {args.seed}) | this checkout: sequential test "
          f"| {args.baseline_ref}: burn rates alone | false rollbacks, ratio |")
    print("|---|---|---|---|")
    for label, _ in CASES:
        healthy = label.startswith("healthy")
        new, old = with_test[label], baseline[label]
        ratio = "-"
        if healthy:
            a = sum(o["end"].startswith("RolledBack") for o in new)
            b = sum(o["end"].startswith("RolledBack") for o in old)
            ratio = f"{a}/{b}" + (f" = {a / b:.2f}x" if b else "")
        print(f"| {label} | {summary(new, healthy)} | {summary(old, healthy)} | {ratio} |", flush=True)
    print(f"\n{time.monotonic() - started:.0f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
