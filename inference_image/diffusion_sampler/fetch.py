"""Init-container entry point: download a model into the pod's cache volume before the sampler starts.

The operator runs ``python -m diffusion_sampler.fetch`` as the ``fetch-model`` init container
for ``hf://`` and ``s3://`` sources (``pvc://`` and ``file://`` are mounted directly):

- ``MODEL_SOURCE``: ``hf://ORG/NAME`` or ``s3://BUCKET/PREFIX``; ``MODEL_DEST``: the directory;
- ``MODEL_REVISION``: the Hub commit (pinned by the DiffusionModel); ``HF_TOKEN``: optional;
- ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (from the credentials Secret),
  ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION`` for S3 and S3-compatible stores.

A completed download leaves ``.diffusion-fetch.json`` naming source and revision, so a restarted
pod whose cache survived skips the download. Exit 2 means bad configuration (the message names
the variable; retrying will not help), exit 1 a failed download (the kubelet retries the init
container with backoff). This module must not import torch: it runs before any GPU work.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

MARKER = ".diffusion-fetch.json"


class FetchConfigError(Exception):
    """The environment is wrong: retrying cannot help."""


def _config(env: dict) -> tuple[str, str, Path, str | None]:
    source = env.get("MODEL_SOURCE", "")
    dest = env.get("MODEL_DEST", "")
    if not dest:
        raise FetchConfigError("MODEL_DEST is not set")
    scheme = urlparse(source).scheme
    if scheme not in ("hf", "s3"):
        raise FetchConfigError(f"MODEL_SOURCE {source!r}: only hf:// and s3:// are downloaded "
                               "(pvc:// and file:// are mounted, not fetched)")
    revision = env.get("MODEL_REVISION") or None
    if scheme == "hf" and not revision:
        raise FetchConfigError("MODEL_REVISION is required for hf:// sources (pin a commit)")
    return source, scheme, Path(dest), revision


def already_fetched(dest: Path, source: str, revision: str | None) -> bool:
    try:
        done = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return done.get("source") == source and done.get("revision") == revision


def _fetch_hf(source: str, dest: Path, revision: str, token: str | None) -> None:
    from huggingface_hub import snapshot_download

    parsed = urlparse(source)
    repo_id = f"{parsed.netloc}{parsed.path}".strip("/")
    snapshot_download(repo_id=repo_id, revision=revision, local_dir=str(dest), token=token,
                      allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model", "*.bin"])


def _fetch_s3(source: str, dest: Path, env: dict) -> None:
    try:
        import boto3
    except ImportError as exc:
        raise FetchConfigError("s3:// sources need boto3 (pip install 'diffusion-sampler[s3]'; "
                               "the image has it)") from exc
    parsed = urlparse(source)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    s3 = boto3.client("s3", endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
                      region_name=env.get("AWS_DEFAULT_REGION") or None)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):].lstrip("/")
            if not rel or rel.endswith("/"):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            count += 1
    if count == 0:
        raise RuntimeError(f"{source}: no objects under that prefix")


def main(env: dict | None = None) -> int:
    env = dict(os.environ if env is None else env)
    try:
        source, scheme, dest, revision = _config(env)
        if already_fetched(dest, source, revision):
            print(json.dumps({"msg": "model already in cache", "source": source, "revision": revision}))
            return 0
        dest.mkdir(parents=True, exist_ok=True)
        if scheme == "hf":
            _fetch_hf(source, dest, revision or "", env.get("HF_TOKEN") or None)
        else:
            _fetch_s3(source, dest, env)
    except FetchConfigError as exc:
        print(json.dumps({"level": "ERROR", "msg": str(exc)}), file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - any download failure: let the kubelet retry
        print(json.dumps({"level": "ERROR", "msg": f"download failed: {exc}"}), file=sys.stderr)
        return 1
    (dest / MARKER).write_text(json.dumps({"source": source, "revision": revision}))
    print(json.dumps({"msg": "model fetched", "source": source, "revision": revision}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
