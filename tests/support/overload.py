"""Overload of one real sampler process: twice what it can serve, then SIGTERM in the middle.

Used by ``tests/sampler/test_overload.py`` (seconds) and ``benchmarks/sampler_overload.py``
(minutes). :func:`capacity` measures what the server completes per second with its queue
kept full (closed loop); :func:`overload` offers ``factor`` times that as an open-loop Poisson
stream for ``seconds``, keeps offering while it sends SIGTERM, and records every request's
fate: its status (or that the connection was refused once the process had exited), latency and
``Retry-After``, each tagged with whether it was sent before or after the SIGTERM.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from tests.support.samplers import SamplerProcess

#: What every request asks: small, so the numbers are the server's queueing, not the model.
BODY = {"prompt": "a harbour at dawn", "steps": 2, "width": 32, "height": 32}
REFUSED = -1  # no HTTP answer: the connection was refused (the process had exited)
FAILED = -2  # no HTTP answer for another reason (reset, timeout): a lost request


@dataclass(frozen=True)
class Answer:
    sent: float
    latency: float
    status: int
    retry_after: str | None
    after_sigterm: bool
    #: Why there was no HTTP answer (FAILED, REFUSED).
    error: str | None = None


@dataclass
class OverloadRun:
    capacity_rps: float
    offered_rps: float
    seconds: float
    answers: list[Answer] = field(default_factory=list)
    exit_code: int | None = None
    #: From the SIGTERM to the process' exit.
    drain_s: float | None = None
    sigterm_at: float | None = None

    def before(self) -> list[Answer]:
        return [a for a in self.answers if not a.after_sigterm]

    def after(self) -> list[Answer]:
        return [a for a in self.answers if a.after_sigterm]

    def p95_accepted(self) -> float:
        ok = sorted(a.latency for a in self.answers if a.status == 200)
        return ok[int(0.95 * (len(ok) - 1))] if ok else float("nan")


def _post(url: str, timeout: float) -> tuple[int, str | None]:
    """(status, Retry-After), or (REFUSED / FAILED, why)."""
    try:
        r = requests.post(url + "/v1/generate", json=BODY, timeout=timeout)
        return r.status_code, r.headers.get("Retry-After")
    except requests.ConnectionError as exc:
        refused = "refused" in str(exc).lower()
        return (REFUSED if refused else FAILED), str(exc)[:300]
    except requests.RequestException as exc:
        return FAILED, str(exc)[:300]


def capacity(server: SamplerProcess, seconds: float = 8.0, clients: int = 8) -> float:
    """Completed requests per second with ``clients`` requests always outstanding (enough to
    keep a batch running and the next one waiting; more only spin on 429s)."""
    done = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            status, _ = _post(server.url, 60)
            if status == 200:
                with lock:
                    done += 1
            else:  # turned away: a client spinning on 429s would take the CPU the server needs
                time.sleep(0.05)

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    return done / (time.monotonic() - started)


def overload(server: SamplerProcess, *, capacity_rps: float, seconds: float, factor: float = 2.0,
             after_sigterm_s: float = 3.0, request_timeout: float = 120.0, seed: int = 1) -> OverloadRun:
    """``factor`` x ``capacity_rps`` for ``seconds``, then SIGTERM while the load goes on for
    ``after_sigterm_s``; waits for every request and for the process to exit."""
    rng = random.Random(seed)
    rate = factor * capacity_rps
    run = OverloadRun(capacity_rps=capacity_rps, offered_rps=rate, seconds=seconds)
    lock = threading.Lock()
    sigterm_at: list[float] = []
    exited_at: list[float] = []

    def watch_exit() -> None:
        server.proc.wait()
        exited_at.append(time.monotonic())

    def one(sent: float) -> None:
        status, detail = _post(server.url, request_timeout)
        answer = Answer(sent, time.monotonic() - sent, status, detail if status >= 0 else None,
                        bool(sigterm_at) and sent >= sigterm_at[0], detail if status < 0 else None)
        with lock:
            run.answers.append(answer)

    started = time.monotonic()
    end = started + seconds + after_sigterm_s
    with ThreadPoolExecutor(max_workers=512) as pool:
        t = started
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                break
            if not sigterm_at and t >= started + seconds:
                server.proc.send_signal(signal.SIGTERM)
                sigterm_at.append(time.monotonic())
                threading.Thread(target=watch_exit, daemon=True).start()
            time.sleep(max(0.0, t - time.monotonic()))
            pool.submit(one, time.monotonic())
    run.exit_code = server.proc.wait(120)
    deadline = time.monotonic() + 5
    while not exited_at and time.monotonic() < deadline:
        time.sleep(0.01)
    run.drain_s = exited_at[0] - sigterm_at[0] if sigterm_at and exited_at else None
    run.sigterm_at = sigterm_at[0] if sigterm_at else None
    return run
