"""Fetch and build the local cluster's binaries once, cached by version outside the repository.

Where each piece comes from (the only sources these machines reach):
- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl: built from the Go module
  proxy through a small wrapper module that requires ``k8s.io/kubernetes`` and replaces every
  staging module with its published ``v0.x`` twin (kubernetes/kubernetes#79384). A cold build
  takes 15-30 minutes on 2 cores; afterwards the binaries are reused from the cache.
- kwok: ``go install sigs.k8s.io/kwok/cmd/kwok``; its stage YAMLs come from the same module.
- etcd, prometheus, promtool: Debian packages downloaded with a private apt configuration
  (never installed system-wide) and unpacked with ``dpkg -x``.
- Gateway API and Prometheus Operator CRDs: files inside their Go modules.

The cache root is ``$DIFFUSION_OPERATOR_CACHE`` or ``~/.cache/diffusion-operator``. Concurrent
callers (a ``dev up`` beside a test run) serialise on a file lock, so nothing builds twice.
This module never starts a cluster; ``cluster`` does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = os.environ.get("DIFFUSION_OPERATOR_K8S_VERSION", "v1.36.3")
KWOK_VERSION = "v0.8.0"
GATEWAY_API_VERSION = "v1.6.1"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
# trixie pins etcd 3.5.16 and prometheus 2.53; sid is the fallback when trixie lacks a package.
DEBIAN_SUITES = ("trixie", "sid")
K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy")
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)
GATEWAY_API_CRDS = (
    "gateway.networking.k8s.io_gatewayclasses.yaml",
    "gateway.networking.k8s.io_gateways.yaml",
    "gateway.networking.k8s.io_httproutes.yaml",
    "gateway.networking.k8s.io_grpcroutes.yaml",
    "gateway.networking.k8s.io_tlsroutes.yaml",  # standard since v1.5; Traefik's provider watches it
    "gateway.networking.k8s.io_referencegrants.yaml",
    "gateway.networking.k8s.io_backendtlspolicies.yaml",
    "gateway.networking.k8s.io_listenersets.yaml",
)
MONITORING_CRDS = (
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
)

Progress = Callable[[str], None]


class ToolchainError(RuntimeError):
    """A binary could not be fetched or built; the message says which and why."""


def cache_root() -> Path:
    return Path(os.environ.get("DIFFUSION_OPERATOR_CACHE", Path.home() / ".cache" / "diffusion-operator"))


@dataclass(frozen=True)
class Toolchain:
    """Absolute paths of everything a local cluster runs or applies."""

    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path
    kwok: Path
    prometheus: Path
    promtool: Path
    kwok_stages: tuple[Path, ...]
    gateway_api_crds: tuple[Path, ...]
    monitoring_crds: tuple[Path, ...]
    k8s_version: str = K8S_VERSION


def _stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         what: str, progress: Progress | None = None) -> str:
    """Run a command; on failure raise with the tail of its output. Heartbeats while slow."""
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            if progress:
                progress(f"  ... still {what} ({int(time.monotonic() - started)} s)")

    t = threading.Thread(target=heartbeat, daemon=True)
    t.start()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    finally:
        done.set()
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise ToolchainError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env["GOFLAGS"] = "-buildvcs=false"
    env["GOTOOLCHAIN"] = "local"
    return env


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise ToolchainError(f"'{tool}' is not on PATH; the local cluster needs it to fetch or build its binaries")
    return path


def go_module_dir(module: str, version: str) -> Path:
    """Download a Go module (through the module proxy) and return its directory."""
    _require("go")
    out = _run(["go", "mod", "download", "-json", f"{module}@{version}"], env=_go_env(),
               what=f"downloading Go module {module}@{version}")
    info = json.loads(out)
    if "Dir" not in info:
        raise ToolchainError(f"go mod download gave no directory for {module}@{version}: {info.get('Error')}")
    return Path(info["Dir"])


# --- Kubernetes -------------------------------------------------------------------------------

def _k8s_wrapper_gomod(kubernetes_gomod: str, version: str) -> str:
    """The wrapper module's go.mod: require k8s.io/kubernetes, pin each staging module."""
    staging_version = "v0." + version.split(".", 1)[1]  # v1.36.3 -> v0.36.3
    staging = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.\-/]+)\s+=>\s+\./staging/src/", kubernetes_gomod, re.M)))
    if not staging:
        raise ToolchainError("k8s.io/kubernetes go.mod lists no staging replacements; cannot build")
    go_line = re.search(r"^go\s+(\S+)", kubernetes_gomod, re.M)
    lines = ["module diffusionoperator.local/k8sbuild", "", f"go {go_line.group(1) if go_line else '1.26.0'}", "",
             f"require k8s.io/kubernetes {version}", "", "replace ("]
    lines += [f"\t{m} => {m} {staging_version}" for m in staging]
    lines += [")", ""]
    return "\n".join(lines)


_TOOLS_GO = """//go:build tools

package tools

import (
\t_ "k8s.io/kubernetes/cmd/kube-apiserver"
\t_ "k8s.io/kubernetes/cmd/kube-controller-manager"
\t_ "k8s.io/kubernetes/cmd/kube-scheduler"
\t_ "k8s.io/kubernetes/cmd/kubectl"
\t_ "k8s.io/kubernetes/cmd/kubelet"
\t_ "k8s.io/kubernetes/cmd/kube-proxy"
)
"""


def _version_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={version}", f"-X {pkg}.gitMajor={major}", f"-X {pkg}.gitMinor={minor}",
                  f"-X {pkg}.gitTreeState=clean", f"-X {pkg}.buildDate=1970-01-01T00:00:00Z"]
    return " ".join(flags)


def ensure_kubernetes(version: str = K8S_VERSION, progress: Progress | None = _stderr_progress) -> Path:
    bindir = cache_root() / "k8s" / version / "bin"
    if all((bindir / b).exists() for b in K8S_BINARIES):
        return bindir
    with _lock(f"k8s-{version}"):
        if all((bindir / b).exists() for b in K8S_BINARIES):
            return bindir
        _require("go")
        if progress:
            progress(f"Building Kubernetes {version} from the Go module proxy (first run only: 15-30 minutes "
                     f"on 2 cores, 2-4 GB of Go build cache). Later runs reuse {bindir}.")
        src = go_module_dir("k8s.io/kubernetes", version)
        gomod = (src / "go.mod").read_text()
        work = cache_root() / "build" / f"k8s-{version}"
        work.mkdir(parents=True, exist_ok=True)
        (work / "go.mod").write_text(_k8s_wrapper_gomod(gomod, version))
        (work / "tools.go").write_text(_TOOLS_GO)
        env = _go_env()
        _run(["go", "mod", "tidy", "-e"], cwd=work, env=env, what="resolving Kubernetes dependencies",
             progress=progress)
        partial = bindir.with_name("bin.partial")
        if bindir.exists() and not partial.exists():
            bindir.rename(partial)  # a cache from before a binary was added: build only what is missing
        partial.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(K8S_BINARIES, 1):
            if (partial / name).exists():
                continue
            if progress:
                progress(f"  [{i}/{len(K8S_BINARIES)}] building {name}")
            _run(["go", "build", "-trimpath", "-ldflags", _version_ldflags(version), "-o", str(partial / name),
                  f"k8s.io/kubernetes/cmd/{name}"], cwd=work, env=env, what=f"building {name}", progress=progress)
        if bindir.exists():
            shutil.rmtree(bindir)
        partial.rename(bindir)
    return bindir


# --- kwok ------------------------------------------------------------------------------------

def ensure_kwok(progress: Progress | None = _stderr_progress) -> tuple[Path, tuple[Path, ...]]:
    base = cache_root() / "kwok" / KWOK_VERSION
    binary = base / "bin" / "kwok"
    stages_dir = base / "stages"
    stages = tuple(stages_dir / s.replace("/", "_") for s in KWOK_STAGES)
    if binary.exists() and all(s.exists() for s in stages):
        return binary, stages
    with _lock("kwok"):
        if not binary.exists():
            if progress:
                progress(f"Building kwok {KWOK_VERSION} (first run only: a few minutes)")
            env = _go_env()
            env["GOBIN"] = str(base / "bin")
            _run(["go", "install", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"], env=env,
                 what="building kwok", progress=progress)
        src = go_module_dir("sigs.k8s.io/kwok", KWOK_VERSION) / "kustomize" / "stage"
        stages_dir.mkdir(parents=True, exist_ok=True)
        for rel, dest in zip(KWOK_STAGES, stages, strict=True):
            shutil.copyfile(src / rel, dest)
    return binary, stages


# --- Debian packages -------------------------------------------------------------------------

def _apt_options(root: Path, suite: str) -> list[str]:
    return [
        "-o", f"Dir::Etc::sourcelist={root / 'etc' / f'{suite}.list'}",
        "-o", "Dir::Etc::sourceparts=-",
        "-o", f"Dir::State::Lists={root / 'lists' / suite}",
        "-o", f"Dir::Cache::archives={root / 'archives'}",
        "-o", "APT::Get::List-Cleanup=0",
        "-o", "APT::Sandbox::User=root" if os.geteuid() == 0 else "APT::Sandbox::User=_apt",
    ]


def _debian_download(package: str, progress: Progress | None) -> Path:
    """Download one Debian package with a private apt configuration; return the .deb path."""
    _require("apt-get")
    root = cache_root() / "apt"
    errors = []
    for suite in DEBIAN_SUITES:
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "lists" / suite / "partial").mkdir(parents=True, exist_ok=True)
        (root / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        (root / "etc" / f"{suite}.list").write_text(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
            f"http://deb.debian.org/debian {suite} main\n")
        opts = _apt_options(root, suite)
        if not any((root / "lists" / suite).glob("*Packages*")):
            if progress:
                progress(f"  apt-get update ({suite}, private lists under {root})")
            _run(["apt-get", *opts, "update"], what=f"apt-get update for {suite}", progress=progress)
        dl = root / "debs" / suite
        dl.mkdir(parents=True, exist_ok=True)
        try:
            _run(["apt-get", *opts, "download", package], cwd=dl,
                 what=f"downloading Debian package {package} ({suite})")
        except ToolchainError as exc:
            errors.append(str(exc).splitlines()[-1])
            continue
        debs = sorted(dl.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
        if debs:
            return debs[-1]
    raise ToolchainError(f"Debian package {package} not found in {', '.join(DEBIAN_SUITES)}: {'; '.join(errors)}")


def ensure_debian_binary(package: str, binary: str, progress: Progress | None = _stderr_progress) -> Path:
    """Unpack ``package`` under the cache (never system-wide) and return ``usr/bin/<binary>``."""
    index = cache_root() / "debian" / "index.json"
    known = json.loads(index.read_text()) if index.exists() else {}
    if package in known and Path(known[package], "usr", "bin", binary).exists():
        return Path(known[package], "usr", "bin", binary)
    with _lock("debian"):
        known = json.loads(index.read_text()) if index.exists() else {}
        if package in known and Path(known[package], "usr", "bin", binary).exists():
            return Path(known[package], "usr", "bin", binary)
        if progress:
            progress(f"Fetching Debian package {package}")
        deb = _debian_download(package, progress)
        dest = cache_root() / "debian" / deb.stem
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _run(["dpkg", "-x", str(deb), str(dest)], what=f"unpacking {deb.name}")
        path = dest / "usr" / "bin" / binary
        if not path.exists():
            raise ToolchainError(f"{deb.name} has no usr/bin/{binary}")
        known[package] = str(dest)
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text(json.dumps(known, indent=2))
        return path


def ensure_prometheus(progress: Progress | None = _stderr_progress) -> tuple[Path, Path]:
    prometheus = ensure_debian_binary("prometheus", "prometheus", progress)
    # bookworm/trixie's 2.x may ship promtool inside the prometheus package; newer ones split it.
    bundled = prometheus.with_name("promtool")
    promtool = bundled if bundled.exists() else ensure_debian_binary("promtool", "promtool", progress)
    return prometheus, promtool


# --- CRDs of other projects ------------------------------------------------------------------

def _copy_crds(module: str, version: str, subdir: str, names: tuple[str, ...], dest_name: str) -> tuple[Path, ...]:
    dest = cache_root() / "crds" / f"{dest_name}-{version}"
    paths = tuple(dest / n for n in names)
    if all(p.exists() for p in paths):
        return paths
    src = go_module_dir(module, version) / subdir
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        if not (src / n).exists():
            raise ToolchainError(f"{module}@{version} has no {subdir}/{n}")
        shutil.copyfile(src / n, dest / n)
    return paths


def ensure_toolchain(progress: Progress | None = _stderr_progress) -> Toolchain:
    """Everything a local cluster needs, fetched or built on first use, from the cache after."""
    etcd = ensure_debian_binary("etcd-server", "etcd", progress)
    prometheus, promtool = ensure_prometheus(progress)
    gateway = _copy_crds("sigs.k8s.io/gateway-api", GATEWAY_API_VERSION, "config/crd/standard", GATEWAY_API_CRDS,
                         "gateway-api")
    monitoring = _copy_crds("github.com/prometheus-operator/prometheus-operator", PROMETHEUS_OPERATOR_VERSION,
                            "example/prometheus-operator-crd", MONITORING_CRDS, "prometheus-operator")
    kwok, stages = ensure_kwok(progress)
    k8s = ensure_kubernetes(K8S_VERSION, progress)
    return Toolchain(
        kube_apiserver=k8s / "kube-apiserver",
        kube_controller_manager=k8s / "kube-controller-manager",
        kube_scheduler=k8s / "kube-scheduler",
        kubectl=k8s / "kubectl",
        etcd=etcd,
        kwok=kwok,
        prometheus=prometheus,
        promtool=promtool,
        kwok_stages=stages,
        gateway_api_crds=gateway,
        monitoring_crds=monitoring,
    )


# --- the real node and the image builder --------------------------------------------------------
CRICTL_VERSION = "v1.37.0"
# Debian bookworm's packages. containerd 1.6 is the one Kubernetes 1.36 still accepts: its kubelet
# falls back to the configured cgroup driver for runtimes without the RuntimeConfig RPC (the
# fallback goes in 1.37/1.38, when containerd 2.x must be built from the Go module proxy instead).
NODE_PACKAGES = {
    "containerd": "/usr/bin/containerd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables-save",
    "conntrack": "/usr/sbin/conntrack",
    "iproute2": "/usr/sbin/ip",
}
IMAGE_PACKAGES = {
    "buildah": "/usr/bin/buildah",
    "mmdebstrap": "/usr/bin/mmdebstrap",
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",
    "gcc": "/usr/bin/gcc",
}


def ensure_system_packages(packages: dict[str, str], progress: Progress | None = _stderr_progress) -> None:
    """Install missing Debian packages system-wide (a container runtime cannot run from a
    ``dpkg -x`` tree: it needs its shims, configs and libraries where they expect them)."""
    missing = sorted(pkg for pkg, path in packages.items() if not Path(path).exists())
    if not missing:
        return
    if os.geteuid() != 0:
        raise ToolchainError(f"missing Debian packages {', '.join(missing)}; install them as root "
                             f"(apt-get install {' '.join(missing)}) or use --real-nodes 0")
    with _lock("apt-install"):
        missing = sorted(pkg for pkg, path in packages.items() if not Path(path).exists())
        if not missing:
            return
        if progress:
            progress(f"Installing Debian packages {', '.join(missing)} (first run only)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env,
                 what="installing Debian packages", progress=progress)
        except ToolchainError:
            _run(["apt-get", "update"], env=env, what="apt-get update", progress=progress)
            _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env,
                 what="installing Debian packages", progress=progress)


def ensure_go_binary(module_path: str, version: str, name: str, progress: Progress | None = _stderr_progress,
                     base: Path | None = None) -> Path:
    """``go install module@version`` once, into ``base`` (default ``<cache>/go-bin/<name>-<version>``)."""
    base = base or cache_root() / "go-bin" / f"{name}-{version}"
    binary = base / name
    if binary.exists():
        return binary
    with _lock(f"go-{name}"):
        if not binary.exists():
            if progress:
                progress(f"Building {name} {version} from the Go module proxy (first run only)")
            env = _go_env()
            env["GOBIN"] = str(base)
            _run(["go", "install", "-trimpath", "-ldflags=-s -w", f"{module_path}@{version}"], env=env,
                 what=f"building {name}", progress=progress)
    return binary


def ensure_node_tools(progress: Progress | None = _stderr_progress):
    """Everything the real worker node runs (see ``node``)."""
    from .node import NodeTools  # the node module imports nothing from here at import time

    ensure_system_packages(NODE_PACKAGES, progress)
    k8s = ensure_kubernetes(K8S_VERSION, progress)
    return NodeTools(
        containerd=Path(NODE_PACKAGES["containerd"]), ctr=Path("/usr/bin/ctr"), runc=Path(NODE_PACKAGES["runc"]),
        crictl=ensure_go_binary("sigs.k8s.io/cri-tools/cmd/crictl", CRICTL_VERSION, "crictl", progress),
        cni_bin_dir=Path(NODE_PACKAGES["containernetworking-plugins"]).parent,
        kubelet=k8s / "kubelet", kube_proxy=k8s / "kube-proxy", ip=Path(NODE_PACKAGES["iproute2"]),
        iptables_save=Path(NODE_PACKAGES["iptables"]))


def pause_source(version: str = K8S_VERSION) -> Path:
    """``build/pause/linux/pause.c`` from the Kubernetes module: the sandbox image's one binary."""
    path = go_module_dir("k8s.io/kubernetes", version) / "build" / "pause" / "linux" / "pause.c"
    if not path.exists():
        raise ToolchainError(f"k8s.io/kubernetes@{version} has no build/pause/linux/pause.c")
    return path


HELM_VERSION = "v3.21.4"


def ensure_helm(progress: Progress | None = _stderr_progress) -> Path:
    """helm, built with ``go install`` (no replace directives; not in Debian), about 5 minutes
    cold on 2 cores."""
    return ensure_go_binary("helm.sh/helm/v3/cmd/helm", HELM_VERSION, "helm", progress,
                            base=cache_root() / "helm" / "bin")


# A real S3-compatible server for the fetch-model tests (MinIO has no semver tags on the Go
# module proxy; Versity's gateway serves a directory over the S3 API).
VERSITYGW_VERSION = "v1.8.0"


def ensure_versitygw(progress: Progress | None = _stderr_progress) -> Path:
    return ensure_go_binary("github.com/versity/versitygw/cmd/versitygw", VERSITYGW_VERSION, "versitygw", progress)


# The local cluster's Gateway API data plane. Traefik's go.mod carries replace directives, so
# `go install module@version` refuses it: the module's source is copied and built in place, with
# three changes, each because the Go module proxy these machines reach lacks a dependency:
# - the nested module ``dynamic/ext`` (left out of the release zip) is written: two empty structs;
# - Containous's fork of go-http-auth is not served: upstream abbot/go-http-auth v0.4.0 instead,
#   which lacks two functions the fork added, so the basicAuth and digestAuth middlewares refuse
#   to be created, with an error saying so (the local cluster uses neither);
# - six of lego's ACME DNS-provider SDKs are not served: the DNS-01 challenge is cut out, and a
#   config that asks for it gets an error naming the provider (the local cluster has no ACME).
TRAEFIK_VERSION = "v3.7.13"
# A nested module the release zip leaves out (a local `replace ./pkg/config/dynamic/ext`): two
# empty extension structs, embedded inline in dynamic.HTTP and dynamic.Router.
_TRAEFIK_EXT_GO = """// Package ext: written by the diffusion-operator toolchain (the open-source build: empty).
package ext

// HTTP extends dynamic.HTTP; empty in the open-source build.
type HTTP struct{}

// Router extends dynamic.Router; empty in the open-source build.
type Router struct{}
"""


def ensure_traefik(progress: Progress | None = _stderr_progress) -> Path:
    """Traefik (its Kubernetes Gateway API provider), about 10 minutes cold on 2 cores."""
    base = cache_root() / "traefik" / TRAEFIK_VERSION
    binary = base / "bin" / "traefik"
    if binary.exists():
        return binary
    with _lock("traefik"):
        if binary.exists():
            return binary
        _require("go")
        if progress:
            progress(f"Building Traefik {TRAEFIK_VERSION} from the Go module proxy (first run only: about 10 "
                     f"minutes on 2 cores). Later runs reuse {binary}.")
        src = go_module_dir("github.com/traefik/traefik/v3", TRAEFIK_VERSION)
        work = cache_root() / "build" / f"traefik-{TRAEFIK_VERSION}"
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(src, work, ignore=shutil.ignore_patterns("webui", "integration", "docs"))
        for path in [work, *work.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)
        ext = work / "pkg" / "config" / "dynamic" / "ext"
        ext.mkdir(parents=True, exist_ok=True)
        (ext / "go.mod").write_text("module github.com/traefik/traefik/dynamic/ext\n\ngo 1.24.0\n")
        (ext / "ext.go").write_text(_TRAEFIK_EXT_GO)
        # the dashboard's assets are built with npm; the binary only needs the embed directory
        static = work / "webui" / "static"
        static.mkdir(parents=True, exist_ok=True)
        (static / "README.md").write_text("The dashboard is not built for the local cluster.\n")
        shutil.copyfile(src / "webui" / "embed.go", work / "webui" / "embed.go")
        _patch_traefik(work)
        partial = binary.with_name("traefik.partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        ldflags = f"-s -w -X github.com/traefik/traefik/v3/pkg/version.Version={TRAEFIK_VERSION}"
        _run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(partial), "./cmd/traefik"], cwd=work,
             env=_go_env(), what="building traefik", progress=progress)
        partial.rename(binary)
        shutil.rmtree(work, ignore_errors=True)
    return binary


_NOT_BUILT = "not built into the local cluster's Traefik (diffusion-operator toolchain)"
_TRAEFIK_PATCHES = {
    "pkg/middlewares/auth/basic_auth.go": [
        ("\tba := &basicAuth{\n",
         f'\treturn nil, fmt.Errorf("basicAuth middleware: {_NOT_BUILT}")\n\n\tba := &basicAuth{{\n'),
        ("checkSecret:       goauth.CheckSecret,", "checkSecret:       func(string, string) bool { return false },"),
    ],
    "pkg/middlewares/auth/digest_auth.go": [
        ("\tda := &digestAuth{\n",
         f'\treturn nil, fmt.Errorf("digestAuth middleware: {_NOT_BUILT}")\n\n\tda := &digestAuth{{\n'),
        ("d.auth.RequireAuthStale(rw, req)", "d.auth.RequireAuth(rw, req)"),
    ],
    "pkg/provider/acme/provider.go": [
        ('\t"github.com/go-acme/lego/v5/providers/dns"\n', ""),
        ("provider, err = dns.NewDNSChallengeProviderByName(p.DNSChallenge.Provider)",
         f'provider, err = nil, fmt.Errorf("ACME DNS challenge provider %q: {_NOT_BUILT}", p.DNSChallenge.Provider)'),
    ],
}


def _patch_traefik(work: Path) -> None:
    """The changes the header above lists; each must match exactly once (a new Traefik version
    that moved the code fails here, naming the file, instead of building something else)."""
    for rel, edits in _TRAEFIK_PATCHES.items():
        path = work / rel
        text = path.read_text()
        for old, new in edits:
            if text.count(old) != 1:
                raise ToolchainError(f"Traefik {TRAEFIK_VERSION}: {rel} no longer has {old.strip()!r} exactly once; "
                                     f"update _TRAEFIK_PATCHES")
            text = text.replace(old, new)
        path.write_text(text)
    env = _go_env()
    _run(["go", "mod", "edit", "-dropreplace=github.com/abbot/go-http-auth",
          "-require=github.com/abbot/go-http-auth@v0.4.0"], cwd=work, env=env, what="editing Traefik's go.mod")
    _run(["go", "mod", "tidy", "-e"], cwd=work, env=env, what="resolving Traefik's dependencies")
