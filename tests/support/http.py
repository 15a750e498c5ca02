"""Plain HTTP GETs for the tests that poll an operator's /healthz and /metrics."""

from __future__ import annotations

import urllib.request


def http_get(url: str, timeout: float = 3) -> tuple[int, str]:
    """(status, body); (0, the error) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except OSError as exc:
        return 0, str(exc)
