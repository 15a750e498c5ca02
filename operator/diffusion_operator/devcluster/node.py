"""The local cluster's real worker node: containerd and runc, a CNI bridge, kubelet, kube-proxy.

Beside kwok's simulated nodes, this node runs real containers on this machine, so the images
we ship start the way a user's cluster starts them. It is named ``localhost``: the kubelet
listens on 127.0.0.1 only, and the apiserver reaches it for logs, exec and port-forward by
the node's Hostname address, which resolves to loopback everywhere (the node's InternalIP is
the pod bridge's gateway, since the kubelet refuses a loopback node IP).

What the node creates on this machine, and ``stop`` removes again:
- processes: containerd (and its shims), kubelet, kube-proxy;
- the bridge ``dfn0`` (10.89.0.1/24) and one veth per pod, and each pod's network namespace
  (removed through CNI when the pods are removed);
- mounts (container root filesystems, shm, projected volumes), all under the node directory;
- kube-proxy's iptables chains (``kube-proxy --cleanup``). The CNI plugins add none: the
  bridge does not masquerade and no portmap plugin runs.

GPUs are simulated honestly: the node advertises ``nvidia.com/gpu`` through a node-status
capacity patch (Kubernetes' documented way to advertise an extended resource), carries the
``nvidia.com/gpu.product`` label and the GPU taint of the kwok GPU nodes; pods that request
GPUs are admitted and run on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import manifests, pki

Progress = Callable[[str], None]
NODE_NAME = "localhost"
NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy")


class NodeUnavailable(RuntimeError):
    """This machine cannot run the real node; the message says why and what to do instead."""


@dataclass(frozen=True)
class NodeTools:
    containerd: Path
    ctr: Path
    runc: Path
    crictl: Path
    cni_bin_dir: Path
    kubelet: Path
    kube_proxy: Path
    ip: Path
    iptables_save: Path


@dataclass(frozen=True)
class NodePaths:
    """Where the node keeps its state (``stop`` removes ``base``) and its image store.

    containerd's root (content and snapshots) is a cache shared by every cluster on this machine
    (there is one real node per machine): the sampler image is 6 GB, and importing it anew for
    each ``dev up`` and test session took 161 s."""

    base: Path
    image_store: Path

    @property
    def socket(self) -> Path:
        return self.base / "run" / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        return self.image_store

    @property
    def containerd_state(self) -> Path:
        return self.base / "run" / "containerd-state"

    @property
    def runc_root(self) -> Path:
        return self.base / "run" / "runc"

    @property
    def kubelet_root(self) -> Path:
        return self.base / "kubelet"

    @property
    def cni_conf_dir(self) -> Path:
        return self.base / "cni" / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.base / "cni" / "ipam"


def preflight(tools: NodeTools) -> None:
    """Refuse early, and plainly, on a machine that cannot run containers."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the real node needs root (containerd, kubelet and the pod bridge)")
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("the kernel has no overlay filesystem (containerd's snapshotter needs it)")
    if not Path("/sys/fs/cgroup").is_dir() or not any(Path("/sys/fs/cgroup").iterdir()):
        problems.append("no cgroup hierarchy is mounted at /sys/fs/cgroup")
    for tool in (tools.runc, tools.containerd):
        try:
            subprocess.run([str(tool), "--version"], capture_output=True, check=True, timeout=20)
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"{tool} does not run here: {exc}")
    if problems:
        raise NodeUnavailable("; ".join(problems))


def _run(cmd: list[str], *, check: bool = True, timeout: float = 60, input: str | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise NodeUnavailable(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc.stdout


def _link_exists(tools: NodeTools, name: str) -> bool:
    return subprocess.run([str(tools.ip), "link", "show", name], capture_output=True).returncode == 0


def ensure_bridge(tools: NodeTools) -> bool:
    """Create the pod bridge with its gateway address (before the kubelet, whose node IP it is).
    One real node per machine: a bridge that is already there belongs to another cluster."""
    if _link_exists(tools, manifests.NODE_BRIDGE):
        raise NodeUnavailable(
            f"the pod bridge {manifests.NODE_BRIDGE} already exists: another local cluster runs the real node "
            f"(stop it with `diffusion-operator dev down --name <its name>`), or a crashed one left it behind "
            f"(`ip link delete {manifests.NODE_BRIDGE}`)")
    ip = str(tools.ip)
    _run([ip, "link", "add", manifests.NODE_BRIDGE, "type", "bridge"])
    prefix = manifests.NODE_POD_SUBNET.split("/")[1]
    _run([ip, "addr", "add", f"{manifests.NODE_BRIDGE_IP}/{prefix}", "dev", manifests.NODE_BRIDGE])
    _run([ip, "link", "set", manifests.NODE_BRIDGE, "up"])
    return True


def write_configs(paths: NodePaths, tools: NodeTools, *, cluster_dir: Path, server: str, kubelet_port: int,
                  kubelet_healthz_port: int, gpus: int, gpu_product: str) -> dict[str, Path]:
    """containerd's config, the CNI network, the kubelet's and kube-proxy's configs and kubeconfigs."""
    for d in (paths.socket.parent, paths.containerd_root, paths.kubelet_root, paths.cni_conf_dir, paths.ipam_dir,
              paths.runc_root):
        d.mkdir(parents=True, exist_ok=True)
    containerd_toml = paths.base / "containerd.toml"
    containerd_toml.write_text(manifests.containerd_config(
        root=paths.containerd_root, state=paths.containerd_state, socket=paths.socket, runc=tools.runc,
        runc_root=paths.runc_root, cni_bin_dir=tools.cni_bin_dir, cni_conf_dir=paths.cni_conf_dir))
    (paths.cni_conf_dir / "10-diffusion-node.conflist").write_text(
        json.dumps(manifests.cni_config(paths.ipam_dir), indent=2))

    pki_dir = cluster_dir / "pki"
    ca = pki_dir / "ca.crt"
    kubelet_cert, kubelet_key = pki.ensure_client_cert(pki_dir, "kubelet", f"system:node:{NODE_NAME}", "system:nodes")
    proxy_cert, proxy_key = pki.ensure_client_cert(pki_dir, "kube-proxy", "system:kube-proxy")
    kubeconfigs = {}
    for who, cert, key in (("kubelet", kubelet_cert, kubelet_key), ("kube-proxy", proxy_cert, proxy_key)):
        path = paths.base / f"{who}.kubeconfig"
        path.write_text(yaml.safe_dump(manifests.admin_kubeconfig(server, ca, cert, key, who)))
        path.chmod(0o600)
        kubeconfigs[who] = path

    taints = [{"key": manifests.GPU_TAINT_KEY, "value": "present", "effect": "NoSchedule"}] if gpus else []
    kubelet_yaml = paths.base / "kubelet.yaml"
    kubelet_yaml.write_text(yaml.safe_dump(manifests.kubelet_config(
        port=kubelet_port, healthz_port=kubelet_healthz_port, runtime_socket=paths.socket, ca_cert=ca,
        root_dir=paths.kubelet_root, taints=taints)))
    return {"containerd": containerd_toml, "kubelet": kubelet_yaml, **{f"{k}-kubeconfig": v
                                                                       for k, v in kubeconfigs.items()}}


def node_labels(gpus: int, gpu_product: str) -> dict[str, str]:
    labels = {"node.diffusion.serving.dev/simulated": "false", "node.diffusion.serving.dev/real": "true"}
    if gpus:
        labels |= {manifests.GPU_PRODUCT_LABEL: gpu_product, "nvidia.com/gpu.count": str(gpus)}
    return labels


def kubelet_command(tools: NodeTools, files: dict[str, Path], paths: NodePaths, gpus: int,
                    gpu_product: str) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in node_labels(gpus, gpu_product).items())
    return [str(tools.kubelet), f"--config={files['kubelet']}", f"--kubeconfig={files['kubelet-kubeconfig']}",
            f"--root-dir={paths.kubelet_root}", f"--cert-dir={paths.kubelet_root / 'pki'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={manifests.NODE_BRIDGE_IP}",
            f"--node-labels={labels}", "--v=1"]


def kube_proxy_command(tools: NodeTools, files: dict[str, Path], healthz_port: int, metrics_port: int) -> list[str]:
    return [str(tools.kube_proxy), f"--kubeconfig={files['kube-proxy-kubeconfig']}", "--proxy-mode=iptables",
            f"--hostname-override={NODE_NAME}", f"--cluster-cidr={manifests.NODE_POD_SUBNET}",
            f"--healthz-bind-address=127.0.0.1:{healthz_port}",
            f"--metrics-bind-address=127.0.0.1:{metrics_port}",
            # NodePorts only on the bridge address: nothing of ours is reachable from other machines.
            f"--nodeport-addresses={manifests.NODE_BRIDGE_IP}/32",
            "--iptables-localhost-nodeports=false", "--conntrack-max-per-core=0", "--v=1"]


def wait_containerd(tools: NodeTools, paths: NodePaths, alive: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not alive():
            raise NodeUnavailable("containerd exited while starting")
        proc = subprocess.run([str(tools.ctr), "--address", str(paths.socket), "version"], capture_output=True,
                              text=True, timeout=10)
        if proc.returncode == 0:
            return
        last = proc.stderr.strip()
        time.sleep(0.3)
    raise NodeUnavailable(f"containerd did not answer on {paths.socket} within {timeout:.0f} s: {last}")


def import_image(tools: NodeTools, paths: NodePaths, archive: Path) -> bool:
    """Load an image archive into the namespace the kubelet uses, unless the store already holds
    this very archive's images. Returns whether it imported."""
    marker = paths.image_store / "imported.json"
    try:
        known = json.loads(marker.read_text())
    except (OSError, ValueError):
        known = {}
    stamp = f"{archive.stat().st_size}:{archive.stat().st_mtime_ns}"
    have = set(images(tools, paths))
    entry = known.get(str(archive))
    if entry and entry["stamp"] == stamp and set(entry["images"]) <= have:
        return False
    _run([str(tools.ctr), "--address", str(paths.socket), "-n", "k8s.io", "images", "import", str(archive)],
         timeout=900)
    known[str(archive)] = {"stamp": stamp, "images": sorted(set(images(tools, paths)) - have) or
                           (entry or {}).get("images", [])}
    marker.write_text(json.dumps(known, indent=2))
    return True


def images(tools: NodeTools, paths: NodePaths) -> list[str]:
    out = _run([str(tools.ctr), "--address", str(paths.socket), "-n", "k8s.io", "images", "ls", "-q"])
    return [line for line in out.splitlines() if line and not line.startswith("sha256:")]


def advertise_gpus(kubectl: Callable[..., subprocess.CompletedProcess], gpus: int) -> None:
    """Put ``nvidia.com/gpu`` into the node's capacity; the kubelet keeps extended resources it
    does not manage and derives allocatable from them."""
    if not gpus:
        return
    patch = [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": str(gpus)}]
    kubectl("patch", "node", NODE_NAME, "--subresource=status", "--type=json", "-p", json.dumps(patch))


def remove_pods(tools: NodeTools, paths: NodePaths) -> None:
    """Stop and remove every pod sandbox through the CRI, so CNI releases each pod's veth,
    address and network namespace. Needs containerd running and the kubelet stopped."""
    if not paths.socket.exists():
        return
    endpoint = f"unix://{paths.socket}"
    subprocess.run([str(tools.crictl), "--runtime-endpoint", endpoint, "--timeout", "60s", "rmp", "--force", "--all"],
                   capture_output=True, text=True, timeout=180)


def _mounts_under(base: Path) -> list[str]:
    prefix = str(base.resolve()) + "/"
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target.startswith(prefix):
            out.append(target)
    return out


def unmount_all(base: Path) -> None:
    """Lazily unmount what is left under the node directory, deepest first."""
    for target in sorted(_mounts_under(base), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


def _netns_on_bridge(tools: NodeTools) -> list[str]:
    """Network namespaces whose addresses are in the node's pod subnet (left by a crashed runtime)."""
    out: list[str] = []
    netns_dir = Path("/var/run/netns")
    if not netns_dir.is_dir():
        return out
    subnet_prefix = manifests.NODE_POD_SUBNET.rsplit(".", 1)[0] + "."
    for ns in netns_dir.iterdir():
        proc = subprocess.run([str(tools.ip), "-n", ns.name, "-o", "-4", "addr"], capture_output=True, text=True)
        if subnet_prefix in proc.stdout:
            out.append(ns.name)
    return out


CHAIN_PREFIXES = ("KUBE-", "CNI-")
IPTABLES = (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables"))


def drop_chains(tools: NodeTools) -> None:
    """Remove the KUBE-* chains left after ``kube-proxy --cleanup`` (the kubelet's own canary and
    hint chains), with the rules that jump to them, in IPv4 and IPv6."""
    sbin = tools.iptables_save.parent
    for save, cmd in IPTABLES:
        for table in ("filter", "nat", "mangle"):
            dump = _run([str(sbin / save), "-t", table], check=False)
            chains = [c for c in re.findall(r"^:(\S+)", dump, re.M) if c.startswith(CHAIN_PREFIXES)]
            if not chains:
                continue
            for rule in re.findall(r"^-A (.+)$", dump, re.M):
                chain = rule.split()[0]
                if chain not in chains and any(f"-j {c}" in rule or f"-g {c}" in rule for c in chains):
                    subprocess.run([str(sbin / cmd), "-t", table, "-D", *shlex.split(rule)], capture_output=True)
            for c in chains:
                subprocess.run([str(sbin / cmd), "-t", table, "-F", c], capture_output=True)
            for c in chains:
                subprocess.run([str(sbin / cmd), "-t", table, "-X", c], capture_output=True)


def cleanup(tools: NodeTools, paths: NodePaths, *, created_bridge: bool) -> None:
    """Remove everything the node created, once its processes are stopped."""
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run([str(tools.kube_proxy), "--cleanup", "--proxy-mode=iptables"], capture_output=True,
                       timeout=60)
    drop_chains(tools)
    for ns in _netns_on_bridge(tools):
        subprocess.run([str(tools.ip), "netns", "delete", ns], capture_output=True)
    if created_bridge and _link_exists(tools, manifests.NODE_BRIDGE):
        subprocess.run([str(tools.ip), "link", "delete", manifests.NODE_BRIDGE], capture_output=True)
    unmount_all(paths.base)
    if paths.base.exists():
        shutil.rmtree(paths.base, ignore_errors=True)
    # containerd 1.6 keeps shim sockets in /run/containerd/s whatever its state dir: remove the
    # directories when they are empty (a system containerd's would not be).
    for d in (Path("/run/containerd/s"), Path("/run/containerd")):
        with contextlib.suppress(OSError):
            d.rmdir()


@dataclass(frozen=True)
class Footprint:
    """What of the node can be seen on this machine: used to prove ``stop`` leaves nothing."""

    mounts: tuple[str, ...]
    links: tuple[str, ...]
    netns: tuple[str, ...]
    iptables_chains: tuple[str, ...]
    processes: tuple[str, ...]


def footprint(tools: NodeTools, base: Path) -> Footprint:
    ours: tuple[str, ...] = ()
    if _link_exists(tools, manifests.NODE_BRIDGE):
        ports = _run([str(tools.ip), "-o", "link", "show", "master", manifests.NODE_BRIDGE], check=False)
        ours = (manifests.NODE_BRIDGE, *sorted(re.findall(r"^\d+: ([^:@]+)", ports, re.M)))
    chains: list[str] = []
    for save, _cmd in IPTABLES:
        for table in ("filter", "nat", "mangle"):
            dump = _run([str(tools.iptables_save.parent / save), "-t", table], check=False)
            chains += [f"{save.split('-')[0]}/{table}/{c}" for c in re.findall(r"^:(KUBE-\S+|CNI-\S+)", dump, re.M)]
    procs = []
    base_s = str(base)
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if base_s in cmd:
                procs.append(f"{p.name}: {cmd[:120]}")
    return Footprint(mounts=tuple(_mounts_under(base)) if base.exists() else (), links=ours,
                     netns=tuple(_netns_on_bridge(tools)), iptables_chains=tuple(sorted(chains)),
                     processes=tuple(procs))
