"""Leader election (``diffusion_operator.leader``): the pure Lease decision, table-tested; the
API boundary against a fake CoordinationV1Api; and ``run_as_leader`` end to end against an
in-memory Lease shared by several "replicas" (threads), with timings cut to fractions of a
second. The real two-process failover on the cluster is tests/integration/test_failover.py.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from diffusion_operator import leader
from diffusion_operator.leader import (
    Action,
    Elector,
    KubeLeaseStore,
    LeaseConflict,
    LeaseRecord,
    LeaseUnavailable,
    decide,
    lease_expiry,
    released,
    run_as_leader,
)
from diffusion_operator.settings import Settings

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rec(holder, renew=0.0, *, duration=15, acquire=None, transitions=3) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration_s=duration, acquire_time=at(acquire if acquire is not None else renew),
                       renew_time=None if renew is None else at(renew), transitions=transitions)


# --- decide: the table ----------------------------------------------------------------------------

@pytest.mark.parametrize(("case", "current", "now", "observed", "action", "reason", "wait_s"), [
    ("no Lease yet", None, 0, None, Action.CREATE, "absent", 0),
    ("we hold it", rec("me", 0), 5, None, Action.RENEW, "ours", 0),
    ("we hold it, even expired (restart with the same pod name)", rec("me", 0), 100, None, Action.RENEW, "ours", 0),
    ("released (holder cleared)", rec(None, 0, duration=1), 0.5, None, Action.ACQUIRE, "released", 0),
    ("released (holder empty string read as None)", rec("", 0), 0, None, Action.ACQUIRE, "released", 0),
    ("live: renewed 5 s ago", rec("other", 0), 5, None, Action.WAIT, "held", 10),
    ("just expired", rec("other", 0), 15, None, Action.ACQUIRE, "expired", 0),
    ("long expired", rec("other", 0), 600, None, Action.ACQUIRE, "expired", 0),
    ("never renewed: acquireTime counts", rec("other", None, acquire=0), 14, None, Action.WAIT, "held", 1),
    ("no times at all: expired", LeaseRecord("other", 15, None, None, 0), 0, None, Action.ACQUIRE, "expired", 0),
    ("the holder's duration, not ours", rec("other", 0, duration=60), 30, None, Action.WAIT, "held", 30),
    ("no duration in the record: ours", rec("other", 0, duration=None), 10, None, Action.WAIT, "held", 5),
    # Our clock runs ahead of the holder's by 20 s: its renewTime looks expired, but we saw this
    # version only 3 s ago, so it is live for 12 s more (client-go's observedTime).
    ("skewed clock: we saw it recently", rec("other", 0), 20, 17, Action.WAIT, "held", 12),
    ("observed long ago and not renewed since", rec("other", 0), 16, 0.5, Action.ACQUIRE, "expired", 0),
    ("renewTime later than our observation wins", rec("other", 10), 20, 2, Action.WAIT, "held", 5),
])
def test_decide(case, current, now, observed, action, reason, wait_s):
    d = decide(current, "me", at(now), lease_duration_s=15, observed_at=None if observed is None else at(observed))
    assert (d.action, d.reason) == (action, reason), case
    assert d.wait_s == pytest.approx(wait_s), case
    assert (d.record is None) == (action is Action.WAIT), case


def test_decide_create_writes_a_fresh_record():
    d = decide(None, "me", at(0), lease_duration_s=15)
    assert d.record == LeaseRecord("me", 15, at(0), at(0), 0)


def test_decide_takeover_counts_a_transition_and_restarts_the_clock():
    d = decide(rec("other", 0, transitions=7), "me", at(20), lease_duration_s=15)
    assert d.record == LeaseRecord("me", 15, at(20), at(20), 8)


def test_decide_renew_keeps_acquire_time_and_transitions():
    d = decide(rec("me", 4, acquire=1, transitions=2), "me", at(6), lease_duration_s=15)
    assert d.record == LeaseRecord("me", 15, at(1), at(6), 2)


def test_decide_writes_whole_seconds():
    assert decide(None, "me", at(0), lease_duration_s=2.5).record.duration_s == 3
    assert decide(None, "me", at(0), lease_duration_s=0.2).record.duration_s == 1


def test_released_clears_the_holder_and_keeps_the_count():
    r = released(rec("me", 0, transitions=4), at(9))
    assert r == LeaseRecord(None, 1, at(9), at(9), 4)
    # ... which any standby takes at once
    assert decide(r, "other", at(9), lease_duration_s=15).action is Action.ACQUIRE


def test_lease_expiry():
    assert lease_expiry(rec("x", 0)) == at(15)
    assert lease_expiry(rec("x", 0), observed_at=at(3)) == at(18)
    assert lease_expiry(LeaseRecord("x", None, None, None, 0)) is None


# --- KubeLeaseStore against a fake CoordinationV1Api ---------------------------------------------

class FakeCoordination:
    def __init__(self, *, read=None, error=None):
        self.read, self.error, self.calls = read, error, []

    def _answer(self, name, *args, **kw):
        self.calls.append((name, args, kw))
        if self.error is not None:
            raise self.error
        return self.read or client.V1Lease(metadata=client.V1ObjectMeta(resource_version="42"))

    def read_namespaced_lease(self, *a, **kw):
        return self._answer("read", *a, **kw)

    def create_namespaced_lease(self, *a, **kw):
        return self._answer("create", *a, **kw)

    def replace_namespaced_lease(self, *a, **kw):
        return self._answer("replace", *a, **kw)


def test_store_reads_the_record():
    lease = client.V1Lease(metadata=client.V1ObjectMeta(resource_version="7"),
                           spec=client.V1LeaseSpec(holder_identity="op-a", lease_duration_seconds=15,
                                                   acquire_time=at(0), renew_time=at(4), lease_transitions=2))
    api = FakeCoordination(read=lease)
    store = KubeLeaseStore(api, "ns", "diffusion-operator", request_timeout=5)
    assert store.get() == (LeaseRecord("op-a", 15, at(0), at(4), 2), "7")
    assert api.calls[0][1] == ("diffusion-operator", "ns") and api.calls[0][2]["_request_timeout"] == (2.0, 5)


def test_store_absent_lease_is_none():
    store = KubeLeaseStore(FakeCoordination(error=ApiException(status=404)), "ns", "l")
    assert store.get() == (None, None)


def test_store_writes_micro_time_with_six_digits_and_the_resource_version():
    api = FakeCoordination()
    store = KubeLeaseStore(api, "ns", "l")
    assert store.replace(LeaseRecord("op-a", 15, at(0), at(1.5), 3), "41") == "42"
    (_, (name, ns, body), _kw) = api.calls[0]
    assert (name, ns) == ("l", "ns")
    assert body["metadata"]["resourceVersion"] == "41"
    assert body["spec"] == {"holderIdentity": "op-a", "leaseDurationSeconds": 15,
                            "acquireTime": "2025-03-01T12:00:00.000000Z", "renewTime": "2025-03-01T12:00:01.500000Z",
                            "leaseTransitions": 3}
    store.create(LeaseRecord(None, 1, at(0), at(0), 0))
    body = api.calls[1][1][1]
    assert "holderIdentity" not in body["spec"] and "resourceVersion" not in body["metadata"]


@pytest.mark.parametrize(("verb", "error", "raised", "text"), [
    ("create", ApiException(status=409), LeaseConflict, "changed by someone else"),
    ("replace", ApiException(status=409), LeaseConflict, "changed by someone else"),
    ("replace", ApiException(status=404), LeaseConflict, "changed by someone else"),
    ("get", ApiException(status=403), LeaseUnavailable, "needs get, create and update"),
    ("replace", ApiException(status=500, reason="boom"), LeaseUnavailable, "HTTP 500"),
    ("get", ConnectionRefusedError("refused"), LeaseUnavailable, "ConnectionRefusedError"),
])
def test_store_errors_are_typed(verb, error, raised, text):
    store = KubeLeaseStore(FakeCoordination(error=error), "ns", "l")
    call = {"get": store.get, "create": lambda: store.create(rec("me")),
            "replace": lambda: store.replace(rec("me"), "1")}[verb]
    with pytest.raises(raised, match=text):
        call()


# --- run_as_leader against an in-memory Lease ------------------------------------------------------

class MemoryStore:
    """One Lease with resourceVersion checks, shared by several electors (the API server)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.record: LeaseRecord | None = None
        self.rv = 0
        self.down = False
        self.gets = 0

    def _check(self):
        if self.down:
            raise LeaseUnavailable("API down")

    def get(self):
        with self.lock:
            self._check()
            self.gets += 1
            return (self.record, str(self.rv)) if self.record is not None else (None, None)

    def create(self, record):
        with self.lock:
            self._check()
            if self.record is not None:
                raise LeaseConflict("exists")
            self.record, self.rv = record, self.rv + 1
            return str(self.rv)

    def replace(self, record, resource_version):
        with self.lock:
            self._check()
            if self.record is None or str(self.rv) != resource_version:
                raise LeaseConflict("changed")
            self.record, self.rv = record, self.rv + 1
            return str(self.rv)

    def holder(self):
        with self.lock:
            return self.record.holder if self.record else None


def fast(identity: str, **kw) -> Settings:
    base = {"lease_namespace": "ns", "lease_name": "op", "liveness_port": 0, "lease_duration_s": 1,
            "renew_deadline_s": 0.4, "retry_period_s": 0.05}
    return Settings(identity=identity, **{**base, **kw})


class Replica:
    """``run_as_leader`` in a thread, with a ``run`` that records when it started and stopped."""

    def __init__(self, store, settings, *, ignore_stop=False):
        self.store, self.settings = store, settings
        self.stop_flag = threading.Event()
        self.started, self.stopped_by_us = threading.Event(), threading.Event()
        self.release_run = threading.Event()  # ends a run that ignores its stop event
        self.ignore_stop = ignore_stop
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def run(self, stop: threading.Event) -> int:
        self.run_stop = stop
        self.started.set()
        while not (self.release_run.is_set() if self.ignore_stop else stop.is_set()):
            time.sleep(0.01)
        self.stopped_by_us.set()
        return 0

    def _main(self):
        self.rc = run_as_leader(self.settings, self.run, stop_flag=self.stop_flag, store=self.store)

    def start(self):
        self.thread.start()
        return self

    def stop(self, timeout=5):
        self.stop_flag.set()
        self.release_run.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self.rc


def test_one_replica_acts_and_the_standby_takes_over_at_once_on_release():
    store = MemoryStore()
    # A 5 s lease, so "released" (b starts within a few polls) and "waited out" (5 s or more)
    # stay apart on a loaded machine.
    a = Replica(store, fast("a", lease_duration_s=5, renew_deadline_s=2)).start()
    assert a.started.wait(5)
    b = Replica(store, fast("b", lease_duration_s=5, renew_deadline_s=2)).start()
    time.sleep(0.5)  # many of b's polls, and a's renewals
    assert not b.started.is_set() and store.holder() == "a"
    t = time.monotonic()
    assert a.stop() == 0
    assert a.stopped_by_us.is_set()
    assert b.started.wait(10)
    # released: b did not wait out the lease duration
    assert time.monotonic() - t < 4
    assert store.holder() == "b" and store.record.transitions == 1
    assert b.stop() == 0
    assert store.holder() is None


def test_a_dead_leader_is_replaced_after_the_lease_duration():
    store = MemoryStore()
    store.record, store.rv = LeaseRecord("dead", 1, datetime.now(timezone.utc), datetime.now(timezone.utc), 0), 1
    t = time.monotonic()
    b = Replica(store, fast("b")).start()
    assert b.started.wait(5)
    # measured from when b first saw the record, the lease lasts its full second
    assert time.monotonic() - t >= 0.9
    assert b.stop() == 0


def test_two_standbys_racing_for_an_expired_lease_make_one_leader():
    store = MemoryStore()
    old = datetime.now(timezone.utc) - timedelta(minutes=5)
    store.record, store.rv = LeaseRecord("dead", 1, old, old, 0), 1
    replicas = [Replica(store, fast(name)) for name in "bcd"]
    for r in replicas:
        r.start()
    # They first saw the record just now, so each waits the record's full second (client-go's
    # observedTime: a stale renewTime alone never lets a newcomer take over at once).
    time.sleep(0.7)
    assert not any(r.started.is_set() for r in replicas)
    time.sleep(1.3)
    assert sum(r.started.is_set() for r in replicas) == 1
    leader_ = next(r for r in replicas if r.started.is_set())
    assert store.holder() == leader_.settings.identity
    for r in replicas:
        r.stop()


def test_api_down_past_the_renew_deadline_stops_the_leader_with_exit_1(caplog):
    store = MemoryStore()
    a = Replica(store, fast("a")).start()
    assert a.started.wait(5)
    with caplog.at_level(logging.INFO, logger="diffusion_operator.leader"):
        store.down = True
        t = time.monotonic()
        a.thread.join(5)
        assert not a.thread.is_alive()
    assert a.rc == 1 and a.run_stop.is_set()
    assert time.monotonic() - t >= 0.3  # not before the renew deadline (0.4 s)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "lost the lease" in errors[0].getMessage() and not errors[0].exc_info
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) <= 2  # the API failure once (and the failed release), not once per retry


def test_another_holder_stops_the_leader_at_once():
    store = MemoryStore()
    a = Replica(store, fast("a")).start()
    assert a.started.wait(5)
    with store.lock:  # someone else writes the Lease (an admin, a replica with a bad clock)
        now = datetime.now(timezone.utc)
        store.record, store.rv = LeaseRecord("intruder", 15, now, now, 9), store.rv + 1
    a.thread.join(2)
    assert a.rc == 1
    assert store.holder() == "intruder"  # not released: it is not ours


def test_a_leader_that_will_not_stop_is_fenced(monkeypatch):
    exits = []
    monkeypatch.setattr(leader, "_hard_exit", exits.append)
    store = MemoryStore()
    a = Replica(store, fast("a"), ignore_stop=True).start()
    assert a.started.wait(5)
    store.down = True
    a.thread.join(5)
    assert exits == [1] and a.rc == 1
    assert not a.stopped_by_us.is_set()  # still running when the process would have exited
    a.release_run.set()


def test_stopped_while_standby_returns_0_without_running():
    store = MemoryStore()
    a = Replica(store, fast("a")).start()
    assert a.started.wait(5)
    b = Replica(store, fast("b")).start()
    time.sleep(0.2)
    assert b.stop() == 0 and not b.started.is_set()
    assert store.holder() == "a"
    a.stop()


def test_standby_logs_waiting_once_not_per_poll(caplog):
    store = MemoryStore()
    a = Replica(store, fast("a")).start()
    assert a.started.wait(5)
    with caplog.at_level(logging.INFO, logger="diffusion_operator.leader"):
        b = Replica(store, fast("b")).start()
        time.sleep(0.5)
        b.stop()
    waiting = [r for r in caplog.records if "waiting as standby" in r.getMessage()]
    assert len(waiting) == 1
    assert waiting[0].holder == "a" and waiting[0].lease == "ns/op" and waiting[0].identity == "b"
    assert store.gets > 5
    a.stop()


def test_became_leader_and_released_are_logged_with_fields(caplog):
    store = MemoryStore()
    with caplog.at_level(logging.INFO, logger="diffusion_operator.leader"):
        a = Replica(store, fast("a")).start()
        assert a.started.wait(5)
        a.stop()
    became = next(r for r in caplog.records if r.getMessage().startswith("became leader"))
    assert became.identity == "a" and became.previous_holder is None and hasattr(became, "takeover_delay_s")
    assert any(r.getMessage() == "released the lease" and r.held_s >= 0 for r in caplog.records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status
    except OSError:
        return 0


def test_standby_serves_healthz_and_frees_the_port_before_running():
    store = MemoryStore()
    a = Replica(store, fast("a")).start()
    assert a.started.wait(5)
    port = _free_port()
    bound = []

    class B(Replica):
        def run(self, stop):
            with socket.socket() as s:  # what Kopf does next: bind the same port (asyncio sets
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # SO_REUSEADDR, as here)
                s.bind(("127.0.0.1", port))
                bound.append(True)
            return super().run(stop)

    b = B(store, fast("b", liveness_port=port)).start()
    deadline = time.monotonic() + 5
    while _healthz(port) != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _healthz(port) == 200
    a.stop()
    assert b.started.wait(5) and bound == [True]
    assert _healthz(port) == 0
    b.stop()


def test_sigterm_in_the_main_thread_stops_and_releases():
    """run_as_leader in the main thread (as ``diffusion-operator run`` calls it) installs its own
    SIGTERM handler and restores the previous one after."""
    store = MemoryStore()
    started = threading.Event()

    def run(stop):
        started.set()
        stop.wait(5)
        return 0 if stop.is_set() else 7

    def send():
        if started.wait(5):
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=send, daemon=True).start()
    assert run_as_leader(fast("a"), run, store=store) == 0
    assert store.holder() is None
    assert signal.getsignal(signal.SIGTERM) is before


def test_elector_fence_deadline_leaves_kopf_until_the_lease_could_expire():
    e = Elector(MemoryStore(), fast("a").but(lease_duration_s=15, renew_deadline_s=10, retry_period_s=2))
    e.last_renewed = time.monotonic() - 10
    assert e.lost_reason().startswith("not renewed for 10")
    assert e.fence_deadline() - time.monotonic() == pytest.approx(4.5, abs=0.1)
    e.lost_to = "b"
    assert e.lost_reason() == "the lease is held by b"
    assert e.fence_deadline() - time.monotonic() == pytest.approx(2, abs=0.1)
