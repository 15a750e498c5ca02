"""SIGTERM while requests are in flight: readiness fails, new requests get 503, every accepted
request still gets its image, and the process exits 0."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.polling import wait_for

pytestmark = pytest.mark.sampler


def test_sigterm_drains_in_flight_requests_and_exits_zero(drain_server):
    server = drain_server
    body = {"prompt": "a city at night", "steps": 2}
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(server.post, "/v1/generate", body) for _ in range(5)]

        def queued_up() -> bool:
            # all five accepted (queued, or started: each start observes one queue wait), some waiting
            families = server.metrics()  # one scrape, so the two numbers agree
            depth = families["diffusion_sampler_queue_depth"][0].value
            started = next(s.value for s in families["diffusion_sampler_queue_wait_seconds"]
                           if s.name.endswith("_count"))
            return depth >= 2 and depth + started >= 5

        wait_for(queued_up, timeout=15, interval=0.05, what="the requests to queue up")
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = requests.get(server.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        late = server.post("/v1/generate", body)
        assert late.status_code == 503
        assert late.json()["error"]["code"] == "draining"
        results = [f.result() for f in futures]
    assert [r.status_code for r in results] == [200] * 5, [r.text for r in results]
    assert all(r.json()["images"][0]["image"] for r in results)
    assert server.proc.wait(timeout=30) == 0
    assert '"msg": "drained"' in server.log()
