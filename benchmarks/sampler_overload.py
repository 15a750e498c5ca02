#!/usr/bin/env python3
"""Overload and drain of one real sampler process (tiny model, CPU): its capacity measured with the
queue kept full, then an open-loop Poisson stream at ``--factor`` times that for ``--seconds``,
then SIGTERM while the stream goes on (``tests/support/overload.py``; the test tier runs the same
for 10 s in ``tests/sampler/test_overload.py``).

What it prints is what an SRE asks of a server under overload: how much was turned away and
whether it was told when to come back (429 with Retry-After), whether anything accepted was
lost or timed out (504s, resets), the latency of what was served against its timeout, and
whether the drain finished the accepted work, refused new work with 503 and exited 0.

    .venv/bin/python benchmarks/sampler_overload.py                  # 2 minutes at 2x, ~3 min
    .venv/bin/python benchmarks/sampler_overload.py --seconds 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.overload import FAILED, REFUSED, capacity, overload  # noqa: E402
from tests.support.samplers import SamplerProcess, build_tiny_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--queue", type=int, default=8, help="SAMPLER_MAX_QUEUE")
    parser.add_argument("--batch", type=int, default=4, help="SAMPLER_MAX_BATCH_SIZE")
    parser.add_argument("--timeout", type=float, default=30, help="SAMPLER_REQUEST_TIMEOUT_S")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny")
        server = SamplerProcess("overload", model, Path(tmp), pool="bench", revision="r",
                                SAMPLER_MAX_QUEUE=args.queue, SAMPLER_MAX_BATCH_SIZE=args.batch,
                                SAMPLER_MAX_WAIT_MS=5, SAMPLER_REQUEST_TIMEOUT_S=args.timeout,
                                SAMPLER_DRAIN_TIMEOUT_S=60, SAMPLER_WARMUP=0).wait_ready()
        try:
            rps = capacity(server, seconds=10, clients=args.queue + 2 * args.batch)
            run = overload(server, capacity_rps=rps, seconds=args.seconds, factor=args.factor,
                           request_timeout=args.timeout + 30)
        finally:
            server.stop()
    before, after = Counter(a.status for a in run.before()), Counter(a.status for a in run.after())
    ok = sorted(a.latency for a in run.answers if a.status == 200)
    told = sum(1 for a in run.before() if a.status == 429 and a.retry_after and int(a.retry_after) >= 1)
    rows = [
        ("capacity (queue full, closed loop)", f"{rps:.1f} req/s"),
        (f"offered ({args.factor:g}x, Poisson, {args.seconds:g} s)", f"{run.offered_rps:.1f} req/s, "
                                                                      f"{len(run.before())} requests"),
        ("served 200", f"{before[200]} ({before[200] / max(1, len(run.before())):.0%}), "
                       f"{before[200] / args.seconds:.1f} req/s"),
        ("turned away 429", f"{before[429]}, {told} with Retry-After >= 1"),
        ("lost: sent before SIGTERM, 504 or no answer", f"{before[504] + before[FAILED]}"),
        ("other answers before SIGTERM", ", ".join(f"{c}: {n}" for c, n in sorted(before.items())
                                                   if c not in (200, 429, 504, FAILED)) or "none"),
        ("served latency p50 / p95 / max", f"{_q(ok, 0.5):.2f} / {_q(ok, 0.95):.2f} / {ok[-1] if ok else 0:.2f} s "
                                           f"(timeout {args.timeout:g} s)"),
        ("after SIGTERM: 503 / refused / reset / 200", f"{after[503]} / {after[REFUSED]} / {after[FAILED]} / "
                                                      f"{after[200]}"),
        ("drain: SIGTERM to exit, exit code", f"{run.drain_s:.2f} s, {run.exit_code}"),
    ]
    for a in run.answers:
        if a.status == FAILED or (a.status == 504 and not a.after_sigterm):
            when = "after" if a.after_sigterm else "before"
            print(f"no answer: sent {a.sent - run.answers[0].sent:.2f} s in, {when} SIGTERM, {a.status}: {a.error}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    # After the SIGTERM the process stops listening once drained: a request still connecting
    # then is refused, or reset if the kernel had queued its connection (it never reached the
    # server; in a cluster the pod left the Service's endpoints when /readyz failed).
    lost = before[504] + before[FAILED]
    good = lost == 0 and run.exit_code == 0 and _q(ok, 0.95) <= args.timeout and told == before[429]
    print("held" if good else "DID NOT HOLD")
    return 0 if good else 1


def _q(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


if __name__ == "__main__":
    sys.exit(main())
