"""Structured JSON logging. Prompts never appear in logs: only ``prompt_hash()`` of them.

Library loggers (diffusers, transformers) are turned down to errors because some of their
warnings quote the user's prompt (CLIP truncation warnings print the cut-off text).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", "color_message",
}


def prompt_hash(prompt: str | None) -> str:
    """Stable, non-reversible handle for a prompt (first 16 hex chars of its SHA-256)."""
    return hashlib.sha256((prompt or "").encode("utf-8")).hexdigest()[:16]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name in ("diffusers", "transformers", "httpx", "PIL"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # diffusers/transformers keep their own verbosity switches
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover - only when the libraries are missing
        pass
