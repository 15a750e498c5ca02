"""Build the images we ship without a Docker engine, and hand them to the real node.

- A Python base image made here from Debian packages (mmdebstrap, bookworm, a venv at
  /opt/python on PATH: what ``python:3.11-slim`` gives a Dockerfile), since no registry is
  reachable.
- A torch base on top of it: the PyPI torch wheel (its CUDA build, as the Dockerfile's default
  ``pytorch/pytorch`` base carries), installed once through the machine's pip cache. It is the
  heavy layer; rebuilding the sampler after a change to ``diffusion_sampler/`` reuses it.
- The sampler image from ``inference_image/Dockerfile`` and the operator image from
  ``Dockerfile``, unmodified apart from their ``BASE_IMAGE`` build argument, built by buildah.
- The pause image every pod sandbox needs, from ``build/pause/linux/pause.c`` of the
  Kubernetes module, compiled statically.

Everything is cached by a hash of its inputs under ``<cache>/images`` (buildah's own storage
and one ``docker-archive`` per image, which ``ctr images import`` loads into a node).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..settings import DEFAULT_SAMPLER_IMAGE
from . import manifests, toolchain

Progress = Callable[[str], None]
REPO = Path(__file__).resolve().parents[3]
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
TORCH_VERSION = os.environ.get("DIFFUSION_OPERATOR_IMAGE_TORCH", "2.15.0")
PYTHON_BASE = f"localhost/diffusion-python:3.11-{DEBIAN_SUITE}"
TORCH_BASE = f"localhost/diffusion-torch:{TORCH_VERSION}"
SAMPLER_IMAGE = DEFAULT_SAMPLER_IMAGE
OPERATOR_IMAGE = "ghcr.io/diffusion-serving/diffusion-operator:0.1.0"
PAUSE_IMAGE = manifests.PAUSE_IMAGE
PATH_ENV = "/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageBuildError(toolchain.ToolchainError):
    """An image could not be built; the message names the step and the builder's last lines."""


@dataclass(frozen=True)
class BuiltImage:
    name: str
    archive: Path
    inputs_hash: str
    size_bytes: int
    built_now: bool
    seconds: float


def images_root() -> Path:
    return toolchain.cache_root() / "images"


def _buildah(*args: str) -> list[str]:
    root = images_root()
    return ["buildah", f"--root={root / 'storage'}", f"--runroot={root / 'run'}", "--storage-driver=overlay",
            *args]


def _run(cmd: list[str], what: str, progress: Progress | None, **kw) -> str:
    try:
        return toolchain._run(cmd, what=what, progress=progress, **kw)
    except toolchain.ToolchainError as exc:
        raise ImageBuildError(str(exc)) from None


def _hash_files(paths: Iterable[Path], extra: Iterable[str] = ()) -> str:
    h = hashlib.sha256()
    for item in extra:
        h.update(item.encode())
    for base in paths:
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix == ".pyc" or ".egg-info" in str(f):
                continue
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _index() -> dict:
    path = images_root() / "index.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _remember(name: str, entry: dict) -> None:
    path = images_root() / "index.json"
    data = _index()
    data[name] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _image_id(name: str) -> str | None:
    proc = subprocess.run(_buildah("images", "--noheading", "--no-trunc", "--format", "{{.ID}}", name),
                          capture_output=True, text=True)
    out = proc.stdout.strip().splitlines()
    return out[0] if proc.returncode == 0 and out else None


def _cached(name: str, inputs_hash: str) -> BuiltImage | None:
    entry = _index().get(name)
    if not entry or entry.get("inputs") != inputs_hash:
        return None
    archive = Path(entry["archive"])
    if not archive.exists() or _image_id(name) != entry.get("id"):
        return None
    return BuiltImage(name, archive, inputs_hash, entry.get("size", archive.stat().st_size), False, 0.0)


def _export(name: str, inputs_hash: str, started: float, progress: Progress | None) -> BuiltImage:
    archive_dir = images_root() / "archives"
    archive_dir.mkdir(parents=True, exist_ok=True)
    safe = name.replace("/", "_").replace(":", "_")
    archive = archive_dir / f"{safe}.tar"
    partial = archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    _run(_buildah("push", "--quiet", name, f"docker-archive:{partial}:{name}"), f"exporting {name}", progress)
    partial.replace(archive)
    image_id = _image_id(name)
    size = archive.stat().st_size
    _remember(name, {"inputs": inputs_hash, "archive": str(archive), "id": image_id, "size": size,
                     "built_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return BuiltImage(name, archive, inputs_hash, size, True, time.monotonic() - started)


def _commit_rootfs(tar: Path, name: str, config: list[str], progress: Progress | None) -> None:
    ctr = _run(_buildah("from", "scratch"), "creating a scratch container", progress).strip()
    try:
        _run(_buildah("add", ctr, str(tar), "/"), f"adding the root filesystem to {name}", progress)
        _run(_buildah("config", *config, ctr), f"configuring {name}", progress)
        _run(_buildah("commit", "--quiet", ctr, name), f"committing {name}", progress)
    finally:
        subprocess.run(_buildah("rm", ctr), capture_output=True)


def ensure_python_base(progress: Progress | None) -> str:
    inputs = _hash_files([], [DEBIAN_SUITE, "python3 python3-venv ca-certificates libgomp1", "v1"])
    entry = _index().get(PYTHON_BASE)
    if entry and entry.get("inputs") == inputs and _image_id(PYTHON_BASE) == entry.get("id"):
        return inputs
    if progress:
        progress(f"  building {PYTHON_BASE} from Debian {DEBIAN_SUITE} packages (mmdebstrap, about 90 s)")
    work = images_root() / "work"
    work.mkdir(parents=True, exist_ok=True)
    tar = work / "python-base.tar"
    _run(["mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates,libgomp1",
          "--customize-hook=chroot \"$1\" python3 -m venv /opt/python",
          "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*",
          DEBIAN_SUITE, str(tar), DEBIAN_MIRROR], f"building the {DEBIAN_SUITE} root filesystem", progress)
    _commit_rootfs(tar, PYTHON_BASE, ["--env", f"PATH={PATH_ENV}", "--env", "LANG=C.UTF-8",
                                      "--cmd", '["python3"]'], progress)
    tar.unlink(missing_ok=True)
    _remember(PYTHON_BASE, {"inputs": inputs, "id": _image_id(PYTHON_BASE)})
    return inputs


def ensure_torch_base(progress: Progress | None) -> str:
    base_inputs = ensure_python_base(progress)
    inputs = _hash_files([], [base_inputs, TORCH_VERSION])
    entry = _index().get(TORCH_BASE)
    if entry and entry.get("inputs") == inputs and _image_id(TORCH_BASE) == entry.get("id"):
        return inputs
    if progress:
        progress(f"  building {TORCH_BASE}: torch {TORCH_VERSION} from PyPI (its CUDA build; "
                 "the heavy layer, built once)")
    pip_cache = Path.home() / ".cache" / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    ctr = _run(_buildah("from", "--pull=never", PYTHON_BASE), "starting the torch build", progress).strip()
    try:
        _run(_buildah("run", "--isolation=chroot", "--network=host", "-v", f"{pip_cache}:/root/.cache/pip",
                      *_build_mounts(), ctr, "--", "pip", "install", "--disable-pip-version-check",
                      f"torch=={TORCH_VERSION}"),
             f"installing torch {TORCH_VERSION} into the image", progress)
        _run(_buildah("commit", "--quiet", ctr, TORCH_BASE), f"committing {TORCH_BASE}", progress)
    finally:
        subprocess.run(_buildah("rm", ctr), capture_output=True)
    _remember(TORCH_BASE, {"inputs": inputs, "id": _image_id(TORCH_BASE)})
    return inputs


# The build machine's own trust and pip settings (a TLS-intercepting proxy's CA, an index mirror)
# are mounted into RUN steps read-only: they reach PyPI the way this machine does and never
# become part of an image.
BUILD_TIME_MOUNTS = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf")


def _build_mounts() -> list[str]:
    out = []
    for path in BUILD_TIME_MOUNTS:
        if Path(path).is_file():
            out += ["-v", f"{path}:{path}:ro"]
    return out


def _bud(dockerfile: Path, context: Path, name: str, base: str, progress: Progress | None) -> None:
    _run(_buildah("bud", "--isolation=chroot", "--network=host", "--layers", "--pull=never", *_build_mounts(),
                  "--build-arg", f"BASE_IMAGE={base}", "-f", str(dockerfile), "-t", name, str(context)),
         f"building {name} from {dockerfile.relative_to(REPO)}", progress)


def _dockerfile_image(name: str, dockerfile: Path, context: Path, inputs: list[Path], base: str,
                      base_inputs: str, progress: Progress | None) -> BuiltImage:
    """Build ``dockerfile`` on ``base`` unless the cache holds it for these very inputs."""
    started = time.monotonic()
    inputs_hash = _hash_files(inputs, [base_inputs])
    if (hit := _cached(name, inputs_hash)) is not None:
        return hit
    if progress:
        progress(f"  building {name} from {dockerfile.relative_to(REPO)}")
    _bud(dockerfile, context, name, base, progress)
    return _export(name, inputs_hash, started, progress)


def ensure_sampler_image(progress: Progress | None = None) -> BuiltImage:
    ctx = REPO / "inference_image"
    return _dockerfile_image(SAMPLER_IMAGE, ctx / "Dockerfile", ctx,
                             [ctx / "Dockerfile", ctx / "pyproject.toml", ctx / "diffusion_sampler"], TORCH_BASE,
                             ensure_torch_base(progress), progress)


def ensure_operator_image(progress: Progress | None = None) -> BuiltImage:
    return _dockerfile_image(OPERATOR_IMAGE, REPO / "Dockerfile", REPO,
                             [REPO / "Dockerfile", REPO / "pyproject.toml", REPO / "README.md", REPO / "operator"],
                             PYTHON_BASE, ensure_python_base(progress), progress)


def ensure_pause_image(progress: Progress | None = None) -> BuiltImage:
    started = time.monotonic()
    source = toolchain.pause_source()
    inputs = _hash_files([], [source.read_text(), "static-gcc"])
    if (hit := _cached(PAUSE_IMAGE, inputs)) is not None:
        return hit
    work = images_root() / "work" / "pause"
    work.mkdir(parents=True, exist_ok=True)
    binary = work / "pause"
    version = PAUSE_IMAGE.rsplit(":", 1)[1]
    _run(["gcc", "-Os", "-static", "-Wall", "-Werror", f'-DVERSION="{version}"', "-o", str(binary), str(source)],
         "compiling pause", progress)
    _scratch_image(PAUSE_IMAGE, binary, "/pause", "65535:65535", progress)
    return _export(PAUSE_IMAGE, inputs, started, progress)


def _scratch_image(name: str, binary: Path, dest: str, user: str, progress: Progress | None) -> None:
    """An image of one static binary as its entrypoint, run as ``user``."""
    ctr = _run(_buildah("from", "scratch"), f"creating {name}", progress).strip()
    try:
        _run(_buildah("copy", ctr, str(binary), dest), f"adding {binary.name} to {name}", progress)
        _run(_buildah("config", "--entrypoint", json.dumps([dest]), "--user", user, ctr), f"configuring {name}",
             progress)
        _run(_buildah("commit", "--quiet", ctr, name), f"committing {name}", progress)
    finally:
        subprocess.run(_buildah("rm", ctr), capture_output=True)


S3_IMAGE = f"localhost/versitygw:{toolchain.VERSITYGW_VERSION}"


def ensure_s3_image(progress: Progress | None = None) -> BuiltImage:
    """A real S3-compatible server (Versity's gateway over a directory) as an image, for the
    tests of the fetch-model init container: one static binary, non-root."""
    started = time.monotonic()
    binary = toolchain.ensure_versitygw(progress)
    inputs = _hash_files([], [toolchain.VERSITYGW_VERSION, str(binary.stat().st_size)])
    if (hit := _cached(S3_IMAGE, inputs)) is not None:
        return hit
    _scratch_image(S3_IMAGE, binary, "/versitygw", "10001:10001", progress)
    return _export(S3_IMAGE, inputs, started, progress)


def ensure_images(progress: Progress | None = None, *, operator: bool = True,
                  s3: bool = False) -> list[BuiltImage]:
    """Every image the real node runs, built or taken from the cache (``s3``: the test S3 server too)."""
    toolchain.ensure_system_packages(toolchain.IMAGE_PACKAGES, progress)
    with toolchain._lock("images"):
        built = [ensure_pause_image(progress), ensure_sampler_image(progress)]
        if operator:
            built.append(ensure_operator_image(progress))
        if s3:
            built.append(ensure_s3_image(progress))
    return built


def main() -> None:  # pragma: no cover - a thin CLI for `python -m`
    for img in ensure_images(lambda m: print(m, file=sys.stderr, flush=True), s3="--s3" in sys.argv):
        print(f"{img.name}\t{img.size_bytes / 2**20:.0f} MiB\t{'built' if img.built_now else 'cached'}")


if __name__ == "__main__":  # pragma: no cover
    main()
