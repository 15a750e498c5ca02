"""The one polling helper of the tests and benchmarks: wait for what a user would wait for,
then say what was last seen when it never came.

Every "poll until" in tests/ and benchmarks/ goes through :func:`wait_for`, so a timeout always
reads the same way and names what it was waiting for. It must not grow retries, backoff or
logging: a test that needs those is testing something else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 60, interval: float = 0.5, what: str = "condition", *,
             ignoring: tuple[type[BaseException], ...] = (), detail: Callable[[], str] | None = None) -> T:
    """Call ``predicate()`` every ``interval`` seconds until it returns something truthy, and
    return that. After ``timeout`` seconds raise AssertionError naming ``what`` and the last
    value seen.

    ``ignoring``: exceptions that count as "not yet" (a server still starting refuses the
    connection); the last one is the last value seen. Any other exception ends the wait at once,
    which is how a predicate reports that waiting longer cannot help (the process exited).
    ``detail``: called once on timeout, for state the last value does not show (a log tail).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except ignoring as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    message = f"timed out after {timeout}s waiting for {what}; last value: {last!r}"
    if detail is not None:
        message += f"; {detail()}"
    raise AssertionError(message)
