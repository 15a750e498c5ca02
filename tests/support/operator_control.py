"""The operator under test, in-process, as something a test can stop and start again (a
scenario kills the operator mid-rollout and restarts it).

Builds on ``tests.conftest.OperatorProcess`` (Kopf's ``KopfRunner``, authenticated as the
operator's ServiceAccount) with the settings the end-to-end tests need. It must never run two
operators on one cluster at once: the ``operator_ctl`` fixture of tests/e2e stops the
session's operator first.
"""

from __future__ import annotations

from pathlib import Path

#: The operator's timer in tests (``Settings.tick_seconds``; production's default is 5 s).
TICK_S = 1


class OperatorControl:
    """The operator in-process (``tests.conftest.OperatorProcess``) that a test may stop and
    start again; the caller stops it at teardown. Never two at once."""

    #: ``diffusion_operator.settings.Settings`` fields over their defaults: file:// model
    #: sources (the tiny model is a local directory) and the test tick.
    SETTINGS = {"allow_file_sources": True, "tick_seconds": TICK_S}

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.proc = None
        self.starts = 0
        self._outputs: list[str] = []  # what each stopped operator logged

    def start(self) -> None:
        # Imported late: OperatorProcess lives in tests/conftest.py, a pytest plugin; importing
        # it when this module loads would drag pytest and the cluster fixtures into importers.
        from tests.conftest import OperatorProcess

        assert self.proc is None, "operator already running"
        self.proc = OperatorProcess(self.kubeconfig, **self.SETTINGS).start()
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
