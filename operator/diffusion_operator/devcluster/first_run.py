"""What ``dev up`` does after the cluster is up, so its last line is an image: write the tiny
model onto the real node's disk (:func:`ensure_dev_model`), apply examples/dev (the model and
its pool) to the ``default`` namespace, wait until the pool is Ready on the real node, and
generate one image through the Gateway into a file.

Plain HTTP from the standard library: this runs in ``dev up``, where the sampler's and the
tests' dependencies may be missing.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "dev"
POOL = "tiny"
NAMESPACE = "default"
HOST = "tiny.localhost"  # examples/dev's HTTPRoute hostname
PROMPT = "a lighthouse at dusk"
#: examples/dev's ``file://`` source on the real node (also the tests' and the demo's model).
DEV_MODEL_DIR = Path("/var/lib/diffusion-models/tiny")


def ensure_dev_model(say: Callable[[str], None], path: Path = DEV_MODEL_DIR) -> None:
    """The tiny model examples/dev serves, written once onto this machine (the real node)."""
    if (path / "model_index.json").exists():
        return
    try:
        from diffusion_sampler import build_model
    except ImportError:
        say(f"note: the sampler package is not installed, so {path} (examples/dev's model) was not created; "
            "`make dev` installs it")
        return
    say(f"writing the tiny model examples/dev serves to {path}")
    build_model.main(["--out", str(path)])
    # readable by the sampler's uid 10001 through the hostPath mount (safetensors writes 0600)
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


class FirstRunError(RuntimeError):
    """examples/dev did not become Ready, or the Gateway did not answer; the message says which."""


@dataclass(frozen=True)
class FirstImage:
    path: Path
    revision: str
    seconds: float  # apply (or found Ready) to image on disk


def generate(gateway_url: str, host: str, *, prompt: str = PROMPT, size: str = "64x64", timeout: float = 120
             ) -> tuple[bytes, str]:
    """One image through the Gateway (OpenAI images API); returns (PNG bytes, revision that answered)."""
    body = json.dumps({"prompt": prompt, "size": size, "n": 1}).encode()
    req = urllib.request.Request(f"{gateway_url}/v1/images/generations", data=body, method="POST",
                                 headers={"Host": host, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        payload = json.loads(resp.read())
        revision = resp.headers.get("x-diffusion-revision", "?")
    return base64.b64decode(payload["data"][0]["b64_json"]), revision


def pool_ready(kubectl: Callable, namespace: str, name: str) -> tuple[bool, str]:
    """(Ready with every replica, a one-line reason when not)."""
    proc = kubectl("-n", namespace, "get", "inferencepool", name, "-o", "json", check=False)
    if proc.returncode != 0:
        return False, "not created yet"
    pool = json.loads(proc.stdout)
    st = pool.get("status") or {}
    want = pool["spec"].get("replicas", 1)
    if st.get("phase") == "Ready" and st.get("readyReplicas", 0) >= want:
        return True, "Ready"
    bad = [c for c in st.get("conditions", []) if c.get("status") == ("True" if c["type"] == "Degraded" else "False")]
    why = "; ".join(f"{c['type']}: {c.get('reason')} {c.get('message', '')}"[:160] for c in bad)
    head = f"phase {st.get('phase', 'none')}, {st.get('readyReplicas', 0)}/{want} ready"
    return False, f"{head}; {why}" if why else head


def serve_examples(cluster, out_dir: Path, say: Callable[[str], None], timeout: float = 600) -> FirstImage:
    """Apply examples/dev, wait for its pool, save one image generated through the Gateway."""
    if not cluster.gateway_url:
        raise FirstRunError("the cluster runs no Gateway (start it with a real node)")
    started = time.monotonic()
    cluster.kubectl("-n", NAMESPACE, "apply", "-f", str(EXAMPLES))
    say(f"applied examples/dev; waiting for the pool '{POOL}' to be Ready on the real node (about a minute)")
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        ok, why = pool_ready(cluster.kubectl, NAMESPACE, POOL)
        if ok:
            break
        if why != last:
            say(f"  pool {POOL}: {why}")
            last = why
        if time.monotonic() > deadline:
            raise FirstRunError(f"examples/dev's pool was not Ready after {timeout:.0f} s: {why}\n"
                                f"  kubectl -n {NAMESPACE} describe inferencepool {POOL}; kubectl get pods -o wide")
        time.sleep(2)
    # Traefik programs the route from the HTTPRoute and EndpointSlices; the first request may
    # come a moment before that.
    error = ""
    while time.monotonic() < deadline:
        try:
            png, revision = generate(cluster.gateway_url, HOST)
            break
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            error = str(getattr(exc, "reason", exc))
            time.sleep(1)
    else:
        raise FirstRunError(f"the Gateway at {cluster.gateway_url} did not answer for Host {HOST}: {error}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "first-image.png"
    path.write_bytes(png)
    return FirstImage(path, revision, time.monotonic() - started)
