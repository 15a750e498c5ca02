"""A load generator that stands in for the data plane: it sends requests to sampler processes
outside any cluster, split between revisions by weights it reads itself (the state machine's
``desired_weights``). Only ``benchmarks/rollout_timing.py --data-plane direct`` uses it, to
measure the rollout decision without Kubernetes; it proves nothing about routing. Everything
else sends load through the Gateway (:mod:`diffusion_operator.demo.traffic`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import requests

from diffusion_operator.demo.traffic import paced


class LoadGenerator:
    """Sends ``rps`` requests per second, split over revisions by ``weights_fn()``
    (``{revision: weight}``, re-read every ``refresh_s`` in its own thread) with smooth
    weighted round robin, to ``backends[revision]`` (a sampler URL). A revision with weight but
    no backend counts as ``unrouted``. Requests run on a thread pool, so a slow canary does not
    slow the others down. Tiny requests: 32x32, one step."""

    def __init__(self, weights_fn, backends: dict[str, str], rps: float = 10.0, refresh_s: float = 1.0,
                 workers: int = 48) -> None:
        self.weights_fn, self.backends, self.rps, self.refresh_s = weights_fn, dict(backends), rps, refresh_s
        self.weights: dict[str, int] = {}
        self.sent: Counter = Counter()
        self.codes: dict[str, Counter] = defaultdict(Counter)
        self.first_sent: dict[str, float] = {}  # revision -> time.time() of its first request
        self.unrouted = 0
        self.weight_log: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="load")
        self._threads = [threading.Thread(target=self._refresh, daemon=True, name="load-weights"),
                         threading.Thread(target=self._send_loop, daemon=True, name="load-send")]
        self._session = threading.local()

    def start(self) -> LoadGenerator:
        self._refresh_once()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _refresh_once(self) -> None:
        try:
            w = self.weights_fn()
        except Exception:  # noqa: BLE001 - keep the last known weights, as a data plane would
            return
        if w != self.weights:
            self.weights = w
            self.weight_log.append((time.time(), dict(w)))

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self._refresh_once()

    def _send_loop(self) -> None:
        current: dict[str, float] = defaultdict(float)

        def send() -> None:
            weights = {r: w for r, w in self.weights.items() if w > 0}
            if not weights:
                return
            total = sum(weights.values())
            for r, w in weights.items():
                current[r] += w
            pick = max(weights, key=lambda r: current[r])
            current[pick] -= total
            url = self.backends.get(pick)
            if url is None:
                self.unrouted += 1
                return
            with self._lock:
                self.sent[pick] += 1
                self.first_sent.setdefault(pick, time.time())
            self._pool.submit(self._one, pick, url)

        paced(self.rps, self._stop, send)

    def _one(self, revision: str, url: str) -> None:
        s = getattr(self._session, "s", None)
        if s is None:
            s = self._session.s = requests.Session()
        try:
            code = s.post(url + "/v1/generate", json={"prompt": "a lighthouse at dusk", "width": 32, "height": 32,
                                                      "steps": 1}, timeout=30).status_code
        except requests.RequestException:
            code = 0
        with self._lock:
            self.codes[revision][code] += 1
