"""Leader election on a ``coordination.k8s.io/v1`` Lease: one replica acts, the others wait.

With two operator replicas, exactly one may run Kopf at a time. ``run_as_leader`` blocks until
this process holds the Lease ``settings.lease_namespace/settings.lease_name``, then runs Kopf
(the ``run`` callable) while a daemon thread renews the Lease, with client-go's semantics and
timings (``lease_duration_s`` 15, ``renew_deadline_s`` 10, ``retry_period_s`` 2):

- a standby polls every ``retry_period_s`` with one GET, opens no watches, and answers
  ``/healthz`` itself so its liveness probe passes; it takes over once the holder has not
  renewed for the lease's duration, measured from when *this* process saw the last renewal
  (client-go's ``observedTime``), so a clock running ahead cannot steal a live lease;
- every write is a create or a replace with the ``resourceVersion`` read (optimistic
  concurrency): of two standbys racing for an expired lease one wins, the other gets a 409;
- a leader that cannot renew for ``renew_deadline_s`` (API down, or another holder wrote the
  Lease) stops Kopf and returns 1, so the process restarts as a standby; if Kopf does not stop
  before the lease could expire for the others, the process exits at once. Never two leaders;
- on SIGTERM/SIGINT or ``stop_flag`` the leader stops Kopf, then releases the Lease (holder
  cleared, as client-go's ``ReleaseOnCancel``), so a standby takes over within one retry
  period instead of a lease duration.

Kopf runs in a worker thread, and this module owns the process's signals (main thread only).
Why not in the main thread: Kopf would take SIGTERM itself, and after its own signal-driven
shutdown ``kopf.run`` never returns while its ``stop_flag`` is an unset ``threading.Event``
(Kopf 1.45 waits for that flag in an executor thread, and ``asyncio.run`` joins the executor).
Stopping Kopf only through ``stop_flag`` is also the path Kopf's embedding docs describe.

The decision of what to do with a Lease record is the pure function ``decide`` (no I/O, no
clock: ``now`` is passed in); ``KubeLeaseStore`` is the only code that talks to the API. This
module must not reconcile anything, and must not use Kopf peering.

Errors (from ``KubeLeaseStore``; ``kubernetes.client.ApiException`` never leaves it)::

    LeaseError
    ├── LeaseConflict       someone else wrote the Lease first (409), or deleted it: read again
    └── LeaseUnavailable    the API failed, timed out or refused (403): try again next period
"""

from __future__ import annotations

import enum
import http.server
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Protocol

from .settings import Settings

log = logging.getLogger("diffusion_operator.leader")


# --- the decision (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRecord:
    """The leader-election fields of a Lease's spec (times timezone-aware)."""

    holder: str | None
    duration_s: int | None
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int = 0


class Action(enum.Enum):
    CREATE = "create"    # no Lease yet: create it, holding it
    ACQUIRE = "acquire"  # released or expired: take it over (replace, transitions + 1)
    RENEW = "renew"      # we hold it: move renewTime
    WAIT = "wait"        # another holder's lease is live: poll again


@dataclass(frozen=True)
class Decision:
    action: Action
    #: What to write (None for WAIT).
    record: LeaseRecord | None = None
    #: For WAIT: seconds until the current lease expires if nobody renews it.
    wait_s: float = 0.0
    #: Why, in a word: absent, ours, released, expired, held.
    reason: str = ""


def lease_expiry(record: LeaseRecord, *, observed_at: datetime | None = None,
                 default_duration_s: float = 15.0) -> datetime | None:
    """When ``record`` expires unless renewed: its duration after the later of its renewTime
    (acquireTime if never renewed) and ``observed_at`` (when this process first saw this
    version of it). None when no time at all is known: treat as expired."""
    times = [t for t in (record.renew_time or record.acquire_time, observed_at) if t is not None]
    if not times:
        return None
    duration = record.duration_s if record.duration_s is not None else default_duration_s
    return max(times) + timedelta(seconds=duration)


def decide(current: LeaseRecord | None, identity: str, now: datetime, *, lease_duration_s: float,
           observed_at: datetime | None = None) -> Decision:
    """What ``identity`` should do about the Lease record ``current`` (None: no Lease) at ``now``.

    ``lease_duration_s`` is what we write when we take or renew it (and the expiry of a record
    that names no duration); ``observed_at`` see ``lease_expiry``.
    """
    duration = max(1, math.ceil(lease_duration_s))  # leaseDurationSeconds is an integer
    if current is None:
        return Decision(Action.CREATE, LeaseRecord(identity, duration, now, now, 0), reason="absent")
    if current.holder == identity:
        # Ours (also after a restart with the same pod name: the old process is gone).
        return Decision(Action.RENEW, replace(current, duration_s=duration, renew_time=now,
                                              acquire_time=current.acquire_time or now), reason="ours")
    taken = LeaseRecord(identity, duration, now, now, current.transitions + 1)
    if not current.holder:
        return Decision(Action.ACQUIRE, taken, reason="released")
    expires = lease_expiry(current, observed_at=observed_at, default_duration_s=lease_duration_s)
    if expires is None or now >= expires:
        return Decision(Action.ACQUIRE, taken, reason="expired")
    return Decision(Action.WAIT, wait_s=(expires - now).total_seconds(), reason="held")


def released(current: LeaseRecord, now: datetime) -> LeaseRecord:
    """The record a leader writes when it steps down: no holder, so the next poll of any
    standby takes it (client-go writes the same on ReleaseOnCancel)."""
    return LeaseRecord(holder=None, duration_s=1, acquire_time=now, renew_time=now,
                       transitions=current.transitions)


# --- the API boundary ---------------------------------------------------------------------------


class LeaseError(Exception):
    """Reading or writing the Lease failed."""


class LeaseConflict(LeaseError):
    """Someone else wrote (or deleted) the Lease since we read it."""


class LeaseUnavailable(LeaseError):
    """The API could not be reached, timed out, or refused the request."""


class LeaseStore(Protocol):
    def get(self) -> tuple[LeaseRecord | None, str | None]:
        """The record and its resourceVersion; (None, None) when there is no Lease."""

    def create(self, record: LeaseRecord) -> str:
        """Create the Lease; its new resourceVersion. LeaseConflict if it exists."""

    def replace(self, record: LeaseRecord, resource_version: str | None) -> str:
        """Replace the Lease if still at ``resource_version``; the new one. LeaseConflict if not."""


def _micro_time(t: datetime | None) -> str | None:
    # metav1.MicroTime is RFC 3339 with exactly six fraction digits; the client's isoformat()
    # drops them when the microseconds are zero, so format it here.
    return None if t is None else t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeLeaseStore:
    """One Lease through ``CoordinationV1Api``, every request with a timeout."""

    def __init__(self, api, namespace: str, name: str, *, request_timeout: float = 5.0):
        self.api, self.namespace, self.name = api, namespace, name
        self.timeout = (min(2.0, request_timeout), request_timeout)  # connect, read

    def get(self) -> tuple[LeaseRecord | None, str | None]:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self.timeout)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return None, None
            raise self._error("read", exc) from exc
        spec = lease.spec
        record = LeaseRecord(holder=spec.holder_identity or None, duration_s=spec.lease_duration_seconds,
                             acquire_time=spec.acquire_time, renew_time=spec.renew_time,
                             transitions=spec.lease_transitions or 0) if spec else \
            LeaseRecord(None, None, None, None, 0)
        return record, lease.metadata.resource_version

    def create(self, record: LeaseRecord) -> str:
        try:
            lease = self.api.create_namespaced_lease(self.namespace, self._body(record, None),
                                                     _request_timeout=self.timeout)
        except Exception as exc:
            raise self._error("create", exc) from exc
        return lease.metadata.resource_version

    def replace(self, record: LeaseRecord, resource_version: str | None) -> str:
        try:
            lease = self.api.replace_namespaced_lease(self.name, self.namespace, self._body(record, resource_version),
                                                      _request_timeout=self.timeout)
        except Exception as exc:
            raise self._error("replace", exc) from exc
        return lease.metadata.resource_version

    def _body(self, record: LeaseRecord, resource_version: str | None) -> dict:
        meta: dict = {"name": self.name, "namespace": self.namespace,
                      "labels": {"app.kubernetes.io/name": "diffusion-operator"}}
        if resource_version:
            meta["resourceVersion"] = resource_version
        spec = {"holderIdentity": record.holder, "leaseDurationSeconds": record.duration_s,
                "acquireTime": _micro_time(record.acquire_time), "renewTime": _micro_time(record.renew_time),
                "leaseTransitions": record.transitions}
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {k: v for k, v in spec.items() if v is not None}}

    def _error(self, verb: str, exc: Exception) -> LeaseError:
        status = getattr(exc, "status", None)
        where = f"Lease {self.namespace}/{self.name}"
        if status == 409 or (status == 404 and verb == "replace"):
            return LeaseConflict(f"{verb} {where}: changed by someone else")
        if status == 403:
            return LeaseUnavailable(f"{verb} {where}: forbidden (the operator needs get, create and update on "
                                    f"coordination.k8s.io leases in {self.namespace})")
        if status is not None:
            return LeaseUnavailable(f"{verb} {where}: HTTP {status} {_api_message(exc)}")
        return LeaseUnavailable(f"{verb} {where}: {type(exc).__name__}: {exc}")


def _api_message(exc: Exception) -> str:
    body = getattr(exc, "body", None) or ""
    try:
        return str(json.loads(body).get("message", body))[:300]
    except (TypeError, ValueError, AttributeError):
        return str(body or getattr(exc, "reason", "") or exc)[:300]


# --- the elector: standby loop, renewal, release -----------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Elector:
    """One process's side of the election, over a ``LeaseStore``. ``acquire`` runs in the
    calling thread; ``keep_renewing`` in the renewal thread; the two never overlap."""

    def __init__(self, store: LeaseStore, settings: Settings, *, wall: Callable[[], datetime] = _utcnow):
        self.store, self.settings, self.wall = store, settings, wall
        self.identity = settings.identity
        self.lease = f"{settings.lease_namespace}/{settings.lease_name}"
        self._rv: str | None = None          # resourceVersion of what we last wrote
        self._held: LeaseRecord | None = None  # what we last wrote
        self._seen: tuple[str | None, datetime] | None = None  # (resourceVersion, first seen at)
        self._api_trouble: str | None = None
        #: time.monotonic() at the start of the last successful write (acquire or renew).
        self.last_renewed = 0.0
        self.acquired_at = 0.0
        #: Set by the renewal thread when another holder has the Lease.
        self.lost_to: str | None = None

    # standby ---------------------------------------------------------------------------------
    def acquire(self, stopping: threading.Event) -> bool:
        """Poll until this process holds the Lease (True) or ``stopping`` is set (False)."""
        started = time.monotonic()
        logged_holder: object = ()  # the holder we last said we wait for
        while not stopping.is_set():
            delay = self.settings.retry_period_s
            try:
                decision, current = self._attempt()
            except LeaseConflict:
                log.debug("lost a race for the lease", extra={"lease": self.lease, "identity": self.identity})
            except LeaseUnavailable as exc:
                self._trouble(exc)
            else:
                self._recovered()
                if decision.action is not Action.WAIT:
                    self._became_leader(decision, current, time.monotonic() - started)
                    return True
                holder = current.holder if current else None
                if holder != logged_holder:  # once, and again only when the leader changes
                    logged_holder = holder
                    log.info("waiting as standby: %s holds the lease", holder,
                             extra={"lease": self.lease, "identity": self.identity, "holder": holder,
                                    "expires_in_s": round(decision.wait_s, 1)})
                # Wake up right when it would expire, not up to a retry period later.
                delay = min(delay, max(decision.wait_s, 0.05))
            stopping.wait(delay)
        return False

    def _attempt(self) -> tuple[Decision, LeaseRecord | None]:
        current, rv = self.store.get()
        now = self.wall()
        if self._seen is None or self._seen[0] != rv:
            self._seen = (rv, now)
        decision = decide(current, self.identity, now, lease_duration_s=self.settings.lease_duration_s,
                          observed_at=self._seen[1] if current is not None else None)
        if decision.action is Action.WAIT:
            return decision, current
        assert decision.record is not None
        t0 = time.monotonic()
        if decision.action is Action.CREATE:
            self._rv = self.store.create(decision.record)
        else:
            self._rv = self.store.replace(decision.record, rv)
        self._held = decision.record
        self.last_renewed = self.acquired_at = t0
        return decision, current

    def _became_leader(self, decision: Decision, previous: LeaseRecord | None, waited_s: float) -> None:
        now = self._held.renew_time if self._held else self.wall()
        last = (previous.renew_time or previous.acquire_time) if previous else None
        how = {"absent": "created the Lease", "released": "took the released Lease",
               "expired": "took over the expired Lease", "ours": "the Lease still named us"}
        log.info("became leader: %s", how.get(decision.reason, decision.reason),
                 extra={"lease": self.lease, "identity": self.identity,
                        "previous_holder": previous.holder if previous else None,
                        # how long the lease was unattended: the takeover delay as the Lease shows it
                        "takeover_delay_s": round((now - last).total_seconds(), 1) if (last and now) else None,
                        "waited_s": round(waited_s, 1),
                        "transitions": self._held.transitions if self._held else None})

    # leader ----------------------------------------------------------------------------------
    def keep_renewing(self, done: threading.Event) -> None:
        """Renew every retry period until ``done``; stop at once when another holder has it.
        Missing the renew deadline is judged by ``lost_reason`` (a stuck request cannot hide it)."""
        while not done.wait(self.settings.retry_period_s):
            try:
                if not self._renew():
                    return
            except LeaseConflict:
                pass  # written again between our read and write: the next period reads it afresh
            except LeaseUnavailable as exc:
                self._trouble(exc)
            else:
                self._recovered()

    def _renew(self) -> bool:
        """One renewal; False when someone else holds the Lease now."""
        assert self._held is not None
        t0 = time.monotonic()
        record = replace(self._held, renew_time=self.wall())
        try:
            self._rv = self.store.replace(record, self._rv)
        except LeaseConflict:
            # Someone wrote it since our last write: read it and see whose it is.
            current, rv = self.store.get()
            decision = decide(current, self.identity, self.wall(), lease_duration_s=self.settings.lease_duration_s)
            if decision.action is not Action.RENEW:
                self.lost_to = (current.holder if current else None) or "nobody"
                return False
            assert decision.record is not None
            record = decision.record
            self._rv = self.store.replace(record, rv)
        self._held = record
        self.last_renewed = t0
        return True

    def lost_reason(self) -> str | None:
        """Why this process may no longer act as leader, or None while it may."""
        if self.lost_to is not None:
            return f"the lease is held by {self.lost_to}"
        since = time.monotonic() - self.last_renewed
        if since >= self.settings.renew_deadline_s:
            return f"not renewed for {since:.1f}s (renew deadline {self.settings.renew_deadline_s:g}s)"
        return None

    def fence_deadline(self) -> float:
        """The monotonic time by which Kopf must have stopped after losing the lease: when a
        standby may take over (a retry period from now if one already has)."""
        grace = self.settings.retry_period_s
        if self.lost_to is not None:
            return time.monotonic() + grace
        return max(time.monotonic() + grace, self.last_renewed + self.settings.lease_duration_s - 0.5)

    def release(self) -> bool:
        """Clear the holder if it is still us, so a standby takes over at its next poll."""
        try:
            current, rv = self.store.get()
            if current is None or current.holder != self.identity:
                return False
            self.store.replace(released(current, self.wall()), rv)
        except LeaseError as exc:
            log.warning("could not release the lease: %s", exc, extra={"lease": self.lease, "identity": self.identity})
            return False
        log.info("released the lease", extra={"lease": self.lease, "identity": self.identity,
                                              "held_s": round(time.monotonic() - self.acquired_at, 1)})
        return True

    # API trouble: one line when it starts or changes, one when it ends ---------------------
    def _trouble(self, exc: LeaseError) -> None:
        if str(exc) != self._api_trouble:
            self._api_trouble = str(exc)
            log.warning("lease API call failed (retrying every %gs): %s", self.settings.retry_period_s, exc,
                        extra={"lease": self.lease, "identity": self.identity})

    def _recovered(self) -> None:
        if self._api_trouble is not None:
            self._api_trouble = None
            log.info("lease API reachable again", extra={"lease": self.lease, "identity": self.identity})


# --- the standby's /healthz ----------------------------------------------------------------------


class StandbyHealth:
    """``GET /healthz`` -> 200 while this process waits as standby (Kopf serves it once leader)."""

    def __init__(self, bind: str, port: int):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the stdlib's name)
                status, body = (200, b'{"role": "standby"}\n') if self.path.split("?")[0] == "/healthz" \
                    else (404, b"not found\n")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # no access log: the kubelet probes every few seconds
                pass

        self.server = http.server.ThreadingHTTPServer((bind, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="standby-healthz", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port (Kopf binds it next)."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


# --- signals and Kopf's log -----------------------------------------------------------------------


@contextmanager
def _stop_on_signals(stopping: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stopping`` (main thread only; elsewhere the caller's stop_flag is the
    only way). A second signal exits at once, for a shutdown that hangs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum, _frame):
        name = signal.Signals(signum).name
        if stopping.is_set():
            log.warning("%s again: exiting now", name)
            os._exit(128 + signum)
        log.info("%s received: stopping", name, extra={"signal": name})
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _DropKopfThreadWarning(logging.Filter):
    """Kopf warns that OS signals are ignored when not in the main thread: by design here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "OS signals are ignored" not in record.getMessage()


#: How the process exits when Kopf outlives the lease (a test replaces it).
_hard_exit: Callable[[int], None] = os._exit


# --- the entry point ---------------------------------------------------------------------------


def run_as_leader(settings: Settings, run: Callable[[threading.Event], int], *,
                  stop_flag: threading.Event | None = None, store: LeaseStore | None = None) -> int:
    """Wait as standby until this process holds the Lease, then ``run(stop)`` (Kopf, in a worker
    thread) until ``stop_flag``, a signal, or the loss of the Lease.

    Returns ``run``'s exit code; 1 when the Lease was lost (restart as a standby); 0 when
    stopped while still a standby. ``store`` replaces the Kubernetes API (tests).
    """
    if store is None:
        from kubernetes import client

        from .kube import load_api_client

        store = KubeLeaseStore(client.CoordinationV1Api(load_api_client(settings.kubeconfig)),
                               settings.lease_namespace, settings.lease_name,
                               request_timeout=max(1.0, min(5.0, settings.renew_deadline_s / 2)))
    elector = Elector(store, settings)
    # A signal asks for the same as the caller's stop_flag: stop, and release the Lease.
    stopping = stop_flag if stop_flag is not None else threading.Event()
    kopf_log = logging.getLogger("kopf._core.reactor.running")
    quiet = _DropKopfThreadWarning()
    kopf_log.addFilter(quiet)
    try:
        with _stop_on_signals(stopping):
            try:
                health = StandbyHealth(settings.bind, settings.liveness_port) if settings.liveness_port else None
            except OSError as exc:
                log.error("cannot serve /healthz on %s:%s: %s", settings.bind, settings.liveness_port, exc)
                return 1
            try:
                if not elector.acquire(stopping):
                    log.info("stopped while standby", extra={"lease": elector.lease, "identity": elector.identity})
                    return 0
            finally:
                if health is not None:
                    health.close()
            if stopping.is_set():  # asked to stop while the winning write was in flight
                elector.release()
                return 0
            return _lead(elector, run, stopping)
    finally:
        kopf_log.removeFilter(quiet)


def _lead(elector: Elector, run: Callable[[threading.Event], int], stopping: threading.Event) -> int:
    run_stop = threading.Event()
    outcome: dict[str, int] = {}

    def target() -> None:
        try:
            outcome["rc"] = run(run_stop) or 0
        except BaseException:  # an operator crash is not an expected condition: keep the traceback
            log.exception("the operator stopped with an error")
            outcome["rc"] = 1

    runner = threading.Thread(target=target, name="kopf", daemon=True)
    done = threading.Event()
    renewer = threading.Thread(target=elector.keep_renewing, args=(done,), name="lease-renewer", daemon=True)
    runner.start()
    renewer.start()
    lost: str | None = None
    fence_at = 0.0
    while runner.is_alive():
        runner.join(0.1)
        if stopping.is_set() and not run_stop.is_set():
            run_stop.set()
        if lost is None:
            lost = elector.lost_reason()
            if lost is not None:
                log.error("lost the lease: %s; stopping the operator", lost,
                          extra={"lease": elector.lease, "identity": elector.identity, "reason": lost})
                run_stop.set()
                fence_at = elector.fence_deadline()
        elif runner.is_alive() and time.monotonic() >= fence_at:
            log.error("the operator did not stop before the lease could pass to a standby: exiting now",
                      extra={"lease": elector.lease, "identity": elector.identity})
            for handler in logging.getLogger().handlers:
                handler.flush()
            _hard_exit(1)
            return 1  # only reached when _hard_exit is replaced (tests)
    done.set()
    renewer.join(timeout=elector.settings.renew_deadline_s)
    # Kopf has stopped: handing the Lease over now cannot make two leaders.
    elector.release()
    return 1 if lost is not None else outcome.get("rc", 1)
