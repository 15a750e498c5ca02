"""Where torch.compile keeps its artifacts: a directory per (model revision, torch, GPU).

A compiled first call costs 43-63 s per shape on an H100; a canary replica of a revision that
another replica already compiled should not pay it again. Inductor's on-disk caches (FX graphs,
AOTAutograd, Triton kernels, autotuning) are content-addressed, so pointing
``TORCHINDUCTOR_CACHE_DIR`` at a directory on the model cache volume is enough for a new process
to reuse them; the directory is keyed so that a new revision, torch build or GPU model starts
clean instead of filling one directory forever. Layout::

    SAMPLER_COMPILE_CACHE_DIR/
      <revision>--torch-<version>--<device>/     one key
        key.json                                 what the key was made of, and when
        inductor/                                TORCHINDUCTOR_CACHE_DIR (torch writes here)

Writes are torch's own (temporary file, then rename), so replicas sharing a volume are safe.
This module must not import torch at import time; ``activate`` is called before the first
compile, from the engine.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(value: str) -> str:
    return _UNSAFE.sub("-", value).strip("-")[:80] or "unknown"


def cache_key(revision: str, torch_version: str, device_name: str) -> str:
    """``rev-1--torch-2.11.0-cu130--NVIDIA-H100-80GB-HBM3``: readable, one path component."""
    return f"{_slug(revision)}--torch-{_slug(torch_version)}--{_slug(device_name)}"


@dataclass(frozen=True)
class CompileCache:
    root: Path
    key: str

    @property
    def path(self) -> Path:
        return self.root / self.key

    @property
    def inductor_dir(self) -> Path:
        return self.path / "inductor"

    def entries(self) -> int:
        """Files already under the key (0: a cold start)."""
        if not self.inductor_dir.is_dir():
            return 0
        return sum(1 for p in self.inductor_dir.rglob("*") if p.is_file())

    def activate(self, environ: dict[str, str] | None = None) -> int:
        """Create the key's directory, point torch at it, and return how many files it held."""
        env = os.environ if environ is None else environ
        found = self.entries()
        self.inductor_dir.mkdir(parents=True, exist_ok=True)
        marker = self.path / "key.json"
        if not marker.exists():
            marker.write_text(json.dumps({"key": self.key, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                    time.gmtime())}))
        env["TORCHINDUCTOR_CACHE_DIR"] = str(self.inductor_dir)
        return found


def for_process(root: Path, revision: str, device: str) -> CompileCache:
    """The key of this process: its revision, the installed torch and the GPU it runs on."""
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        import platform

        name = f"cpu-{platform.machine()}"
    return CompileCache(root, cache_key(revision, torch.__version__, name))
