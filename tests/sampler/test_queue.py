"""Back-pressure on a deliberately slow server (one image at a time, 1.5 s each by fault
injection, two waiting places): a full queue answers 429, a request whose deadline passes while
queued answers 504 and never runs, and a request whose client leaves while queued never runs."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.polling import wait_for

pytestmark = pytest.mark.sampler

BODY = {"prompt": "a mountain river", "steps": 2}


def _wait_idle(server, timeout: float = 30.0) -> None:
    wait_for(lambda: server.sample("diffusion_sampler_queue_depth") == 0
             and requests.get(server.url + "/readyz", timeout=5).status_code == 200,
             timeout=timeout, interval=0.1, what="the server to go idle")
    time.sleep(1.8)  # the running batch has no gauge; give it the time of one batch


def _start_occupying(server, pool):
    """Start one request that holds the worker for about 1.5 s; return its future."""
    images_before = server.sample("diffusion_sampler_images_generated_total")
    started_before = server.sample("diffusion_sampler_queue_wait_seconds_count")
    future = pool.submit(server.post, "/v1/generate", BODY)
    # it has started once it left the queue (queue wait observed)
    wait_for(lambda: server.sample("diffusion_sampler_queue_wait_seconds_count") != started_before,
             timeout=10, interval=0.05, what="the occupying request to start")
    return future, images_before


def test_full_queue_gives_429_with_retry_after(slow_server):
    _wait_idle(slow_server)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: slow_server.post("/v1/generate", BODY), range(6)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(429) >= 1, codes
    assert set(codes) <= {200, 429}, codes
    # six arrive together: the two waiting places are served (a third if the worker took the
    # first one out of the queue before the others arrived); the rest are turned away
    assert codes.count(200) >= 2, codes
    rejected = next(r for r in results if r.status_code == 429)
    assert int(rejected.headers["Retry-After"]) >= 1
    assert rejected.json()["error"]["code"] == "queue_full"


def test_deadline_passed_while_queued_gives_504_and_request_is_dropped(slow_server):
    _wait_idle(slow_server)
    with ThreadPoolExecutor(2) as pool:
        first, images_before = _start_occupying(slow_server, pool)
        started = time.monotonic()
        late = slow_server.post("/v1/generate", {**BODY, "timeout_s": 0.5})
        waited = time.monotonic() - started
        assert first.result().status_code == 200
    assert late.status_code == 504, late.text
    assert "deadline" in late.json()["error"]["message"]
    assert waited < 1.4, "answered at its deadline, not after the running batch"
    time.sleep(0.5)
    assert slow_server.sample("diffusion_sampler_images_generated_total") - images_before == 1
    assert slow_server.sample("diffusion_sampler_requests_total", endpoint="generate", code="504") >= 1


def test_client_disconnect_while_queued_drops_the_request(slow_server):
    _wait_idle(slow_server)
    with ThreadPoolExecutor(2) as pool:
        first, images_before = _start_occupying(slow_server, pool)
        with pytest.raises(requests.Timeout):
            slow_server.post("/v1/generate", BODY, timeout=0.4)  # the client gives up and closes
        assert first.result().status_code == 200
    time.sleep(2.0)  # a batch would have run by now if the request had stayed queued
    assert slow_server.sample("diffusion_sampler_images_generated_total") - images_before == 1
    assert slow_server.sample("diffusion_sampler_requests_total", endpoint="generate", code="499") >= 1
