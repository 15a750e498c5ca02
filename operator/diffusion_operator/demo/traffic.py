"""Load through the real data plane: requests sent to the local cluster's Gateway (Traefik on
127.0.0.1), which splits them between the revisions' pods by the weights the operator wrote
into the pool's HTTPRoute. Nothing here reads the weights or picks a backend.

Each answer is attributed to the revision that served it by the sampler's
``x-diffusion-revision`` response header; an answer without one (Traefik's own 502/503/404
when no backend is ready) counts under :data:`GATEWAY`. Used by ``diffusion-operator dev
demo``, tests/e2e and benchmarks/rollout_timing.py. It records what came back; judging that
is the caller's job.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import requests

#: Where an answer that no sampler gave is counted.
GATEWAY = "gateway"
REQUEST = {"prompt": "a lighthouse at dusk", "width": 32, "height": 32, "steps": 1}


def paced(rps: float, stop: threading.Event, tick) -> None:
    """Call ``tick()`` ``rps`` times a second until ``stop`` is set; a loop that falls behind
    does not burst to catch up."""
    period = 1.0 / rps
    next_at = time.monotonic()
    while not stop.is_set():
        tick()
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            next_at = time.monotonic()


class GatewayLoad:
    """Sends ``rps`` requests per second to ``url`` (the Gateway listener) with ``Host: host``
    (the pool's HTTPRoute hostname), on a thread pool, so a slow canary does not slow the rest
    down. Tiny requests: 32x32, one step."""

    def __init__(self, url: str, host: str, rps: float = 10.0, workers: int = 48, timeout: float = 60) -> None:
        self.url, self.host, self.rps, self.timeout = url.rstrip("/"), host, rps, timeout
        self.codes: dict[str, Counter] = defaultdict(Counter)
        self.first_answer: dict[str, float] = {}  # revision -> time.time() of its first answer
        self.answers: list[tuple[float, str, int]] = []  # (time.time(), revision, status)
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="load")
        self._thread = threading.Thread(target=self._send_loop, daemon=True, name="load-send")
        self._session = threading.local()

    def start(self) -> GatewayLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def share(self, revision: str, since: float = 0.0, until: float | None = None) -> tuple[int, int]:
        """(answers by ``revision``, all answers) between two times."""
        with self._lock:
            window = [r for t, r, _ in self.answers if t >= since and (until is None or t < until)]
        return sum(1 for r in window if r == revision), len(window)

    def _send_loop(self) -> None:
        def send() -> None:
            self.sent += 1
            self._pool.submit(self.one)

        paced(self.rps, self._stop, send)

    def wait_answering(self, timeout: float = 30.0) -> bool:
        """Until a sampler (not Traefik itself) answers one request; ``False`` after ``timeout``.
        Traefik reports a new route Accepted a moment before it serves it, so load that starts
        at once sees a few 404/503 from the Gateway that no user of a settled route would."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.one(record=False)[0] != GATEWAY:
                return True
            time.sleep(0.2)
        return False

    def one(self, record: bool = True) -> tuple[str, int]:
        """One request; returns (revision that answered, status)."""
        s = getattr(self._session, "s", None)
        if s is None:
            s = self._session.s = requests.Session()
        try:
            resp = s.post(self.url + "/v1/generate", json=REQUEST, headers={"Host": self.host}, timeout=self.timeout)
            revision, code = resp.headers.get("x-diffusion-revision", GATEWAY), resp.status_code
        except requests.RequestException:
            revision, code = GATEWAY, 0
        now = time.time()
        if not record:
            return revision, code
        with self._lock:
            self.codes[revision][code] += 1
            self.first_answer.setdefault(revision, now)
            self.answers.append((now, revision, code))
        return revision, code
