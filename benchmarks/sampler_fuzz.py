#!/usr/bin/env python3
"""The sampler's HTTP API fuzzed at length: ``tests/sampler/test_fuzz.py`` (schemathesis from the
sampler's own OpenAPI document, against a real server process on the tiny model) with
``--examples`` per operation and generation mode instead of the test tier's 100, then a table
of what every request got.

The test fails on any 5xx, any answer its document does not describe (status, content type,
body), any schema-violating request that was accepted, and a server that is no longer ready
afterwards; this prints the same run counted by operation, mode and status.

    .venv/bin/python benchmarks/sampler_fuzz.py                  # 1700 examples: > 10,000 requests, ~15 min
    .venv/bin/python benchmarks/sampler_fuzz.py --examples 300   # ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1700, help="examples per operation and mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "requests.jsonl"
        env = {**os.environ, "SAMPLER_FUZZ_EXAMPLES": str(args.examples), "SAMPLER_FUZZ_REPORT": str(report)}
        started = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout=0",
                              "tests/sampler/test_fuzz.py"], cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    counts: dict[tuple[str, str], Counter[int]] = {}
    expired: Counter[tuple[str, str]] = Counter()
    for r in rows:
        key = (r["operation"], r["mode"])
        if r.get("own_deadline"):
            expired[key] += 1  # a 504 for the request's own too-short timeout_s
        else:
            counts.setdefault(key, Counter())[r["status"]] += 1
    print(f"{'operation':<36} {'mode':<9} {'requests':>8} {'2xx':>6} {'4xx':>6} {'5xx':>5} {'own 504':>7}  4xx by code")
    total: Counter[int] = Counter()
    for (op, mode), c in sorted(counts.items()):
        total.update(c)
        by = ", ".join(f"{code}: {n}" for code, n in sorted(c.items()) if 400 <= code < 500)
        n = sum(c.values()) + expired[(op, mode)]
        print(f"{op:<36} {mode:<9} {n:>8} {_band(c, 200):>6} {_band(c, 400):>6} {_band(c, 500):>5} "
              f"{expired[(op, mode)]:>7}  {by}")
    print(f"{'all':<36} {'':<9} {sum(total.values()) + sum(expired.values()):>8} {_band(total, 200):>6} "
          f"{_band(total, 400):>6} {_band(total, 500):>5} {sum(expired.values()):>7}")
    print("own 504: the request's own timeout_s (at most 1 s) expired while it was queued; documented, "
          "not a server error")
    summary = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "no output"
    print(f"\ntest: {summary} ({wall:.0f} s wall); failures are schema violations, 5xx or a server "
          "that did not survive")
    if res.returncode != 0:
        print(res.stdout[-6000:])
    return res.returncode


def _band(c: Counter[int], low: int) -> int:
    return sum(n for code, n in c.items() if low <= code < low + 100)


if __name__ == "__main__":
    sys.exit(main())
