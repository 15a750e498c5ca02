"""Process entry: settings, logging, the uvicorn server and graceful shutdown.

SIGTERM (and the first SIGINT) do not stop uvicorn at once. They start a drain: ``/readyz``
fails, new generation requests get 503, the worker finishes everything already accepted, and
only then is uvicorn told to exit, with status 0. The budget is SAMPLER_DRAIN_TIMEOUT_S; a
second signal exits at once. uvicorn's own handler would close the listener immediately (new
requests refused instead of 503) and re-raise the signal, so the exit status would not be 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import uvicorn

from .app import State, create_app
from .config import Settings
from .logs import setup_logging

log = logging.getLogger("diffusion_sampler.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: State) -> None:
        super().__init__(config)
        self.state = state
        self._drain_task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame) -> None:  # called by signal.signal in the main thread
        if self._drain_task is not None or self.state.loop is None:
            self.should_exit = True
            self.force_exit = self._drain_task is not None
            return
        self.state.loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    def _start_drain(self, signame: str) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain(signame))

    async def _drain(self, signame: str) -> None:
        st = self.state
        st.draining = True
        st.batcher.drain()
        budget = st.settings.drain_timeout_s
        log.info("draining", extra={"signal": signame, "queued": st.batcher.depth, "inflight": st.inflight,
                                    "budget_s": budget})
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline and (not st.batcher.idle() or st.inflight > 0):
            await asyncio.sleep(0.05)
        left = st.batcher.depth + st.inflight
        log.info("drained" if left == 0 else "drain budget spent", extra={"left": left})
        self.should_exit = True

    async def main_loop(self) -> None:
        # Exit non-zero when the model cannot be loaded: a crash-looping pod is easier to see
        # than one that never becomes ready.
        watcher = asyncio.ensure_future(self._watch_load())
        try:
            await super().main_loop()
        finally:
            watcher.cancel()

    async def _watch_load(self) -> None:
        while self.state.batcher.failed is None:
            await asyncio.sleep(0.2)
        self.state.exit_code = 1
        self.should_exit = True


def serve(settings: Settings) -> int:
    """Run until drained; returns the process exit status."""
    setup_logging(settings.log_level)
    state = State.build(settings)
    app = create_app(state)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            lifespan="on", timeout_keep_alive=30,
                            timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)))
    server = DrainingServer(config, state)
    log.info("starting", extra={"host": settings.host, "port": settings.port, "model": settings.model_name,
                                "revision": settings.revision, "pool": settings.pool,
                                "pipeline_kind": settings.pipeline_kind})
    state.batcher.start(settings.warmup)
    server.run()
    log.info("stopped", extra={"exit_code": state.exit_code})
    return state.exit_code
