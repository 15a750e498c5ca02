"""The operator under test, in this process: ``OperatorProcess`` runs Kopf on a thread with
the settings a test passes (authenticated as the operator's ServiceAccount through its
kubeconfig); ``OperatorControl`` is one a scenario can stop and start again (it kills the
operator mid-rollout and restarts it). Never two operators on one cluster at once: the
``operator_ctl`` fixture of tests/e2e stops the session's operator first.
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path


class OperatorProcess:
    """The operator in this process (Kopf on a thread), authenticated as its ServiceAccount.

    Tests pass settings, not environment: ``OperatorProcess(kubeconfig, allow_file_sources=True)``
    takes any field of ``diffusion_operator.settings.Settings``. No leader election and no
    listeners (the run-command and failover tests start real processes for those).
    """

    def __init__(self, kubeconfig: Path, **overrides):
        from diffusion_operator.settings import Settings

        self.settings = Settings(kubeconfig=str(kubeconfig), leader_election=False, liveness_port=0, metrics_port=0,
                                 tick_seconds=1).but(**overrides)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._log = io.StringIO()
        self._handler = logging.StreamHandler(self._log)
        self.error: BaseException | None = None

    def start(self):
        from diffusion_operator.main import JsonFormatter, run_kopf

        self._handler.setFormatter(JsonFormatter())
        logging.getLogger().addHandler(self._handler)
        logging.getLogger().setLevel(logging.INFO)
        ready = threading.Event()
        self._stop.clear()

        def run():
            try:
                run_kopf(self.settings, stop_flag=self._stop, ready_flag=ready)
            except BaseException as exc:  # noqa: BLE001 - reported by start() or stop()
                self.error = exc
                ready.set()

        self._thread = threading.Thread(target=run, name="operator", daemon=True)
        self._thread.start()
        assert ready.wait(60), "the operator did not start within 60 s"
        assert self.error is None, f"the operator failed to start: {self.error!r}"
        return self

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join(60)
            assert not self._thread.is_alive(), "the operator did not stop within 60 s"
            self._thread = None
        logging.getLogger().removeHandler(self._handler)

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def output(self) -> str:
        return self._log.getvalue()


#: The operator's timer in tests (``Settings.tick_seconds``; production's default is 5 s).
TICK_S = 1


class OperatorControl:
    """The operator in-process (``OperatorProcess``) that a test may stop and
    start again; the caller stops it at teardown. Never two at once."""

    #: ``diffusion_operator.settings.Settings`` fields over their defaults: file:// model
    #: sources (the tiny model is a directory on the node), the sampler's test-only fault
    #: injection (faulty canaries) and the test tick.
    SETTINGS = {"allow_file_sources": True, "allow_fault_injection": True, "tick_seconds": TICK_S}

    def __init__(self, kubeconfig: Path, **overrides) -> None:
        self.kubeconfig = kubeconfig
        self.overrides = overrides
        self.proc = None
        self.starts = 0
        self._outputs: list[str] = []  # what each stopped operator logged

    def start(self) -> None:
        assert self.proc is None, "operator already running"
        self.proc = OperatorProcess(self.kubeconfig, **{**self.SETTINGS, **self.overrides}).start()
        self.starts += 1

    def stop(self) -> None:
        if self.proc is not None:
            proc, self.proc = self.proc, None
            try:
                proc.stop()
            finally:
                self._outputs.append(proc.output)

    @property
    def output(self) -> str:
        """What every operator this started has logged, across restarts, in order."""
        return "".join(self._outputs) + (self.proc.output if self.proc is not None else "")
