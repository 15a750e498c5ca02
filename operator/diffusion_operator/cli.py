"""The ``diffusion-operator`` command: ``run`` the operator, ``dev up|down|status`` a local cluster.

Kept thin: argument parsing and printing only. The operator lives in ``main``; the local
cluster in ``devcluster``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .devcluster import toolchain
from .devcluster.cluster import ClusterConfig, ClusterError, LocalCluster
from .settings import Settings


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _cluster_from_args(args: argparse.Namespace) -> LocalCluster:
    cfg = ClusterConfig(name=args.name, state_dir=Path(args.state_dir) if args.state_dir
                        else toolchain.cache_root() / "clusters" / args.name)
    if getattr(args, "gpu_nodes", None) is not None:
        cfg.gpu_nodes = args.gpu_nodes
    if getattr(args, "gpus_per_node", None) is not None:
        cfg.gpus_per_node = args.gpus_per_node
    if getattr(args, "gpu_product", None):
        cfg.gpu_product = args.gpu_product
    if getattr(args, "no_prometheus", False):
        cfg.prometheus = False
    return LocalCluster(cfg)


def _next_steps(cluster: LocalCluster) -> str:
    kc = shlex.quote(str(cluster.kubeconfig))
    kubectl = cluster.tools.kubectl
    lines = [
        "",
        f"Local cluster '{cluster.config.name}' is ready at {cluster.server}.",
        "Next steps:",
        f"  export KUBECONFIG={kc}",
        f"  export PATH={shlex.quote(str(kubectl.parent))}:$PATH   # kubectl {cluster.tools.k8s_version}",
        "  kubectl get nodes -L nvidia.com/gpu.product",
        "  kubectl apply -f examples/dev/      # a tiny model and pool made for this cluster",
        "  diffusion-operator run --standalone --allow-file-sources   # the operator, against this cluster",
        "  kubectl get diffusion             # both kinds, with phase and revisions",
    ]
    if cluster.prometheus_url:
        lines.append(f"  Prometheus: {cluster.prometheus_url}  (scrape targets: drop JSON files into "
                     f"{cluster.prometheus_targets_dir})")
    lines.append(f"  diffusion-operator dev down       # stop it (logs under {cluster.dir / 'logs'})")
    return "\n".join(lines)


def cmd_dev_up(args: argparse.Namespace) -> int:
    cluster = _cluster_from_args(args)
    if not cluster.is_running():
        _say(f"Preparing binaries (cached under {toolchain.cache_root()}; the first run builds Kubernetes from source, "
             "15-30 minutes on 2 cores).")
    cluster.up(progress=_say)
    print(_next_steps(cluster))
    return 0


def cmd_dev_build(args: argparse.Namespace) -> int:
    """Build or fetch every binary the local cluster needs, into the cache, and nothing else.

    ``make test`` runs this before pytest: on a fresh machine the Kubernetes build takes longer
    than any test's timeout, so it must not happen inside a test fixture."""
    _say(f"Preparing binaries (cached under {toolchain.cache_root()}; the first run builds Kubernetes from source, "
         "15-30 minutes on 2 cores).")
    tools = toolchain.ensure_toolchain()
    toolchain.ensure_prometheus()
    print(f"binaries ready: Kubernetes {tools.k8s_version} under {tools.kubectl.parent}")
    return 0


def cmd_dev_down(args: argparse.Namespace) -> int:
    cluster = _cluster_from_args(args)
    stopped = cluster.down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_dev_status(args: argparse.Namespace) -> int:
    cluster = _cluster_from_args(args)
    st = cluster.status()
    if not st:
        print(f"cluster '{args.name}': not running (state in {cluster.dir})")
        return 1
    print(f"cluster '{args.name}': {cluster.server}  kubeconfig {cluster.kubeconfig}")
    for c in st:
        mark = "healthy" if c.healthy else ("UNHEALTHY" if c.running else "STOPPED")
        print(f"  {c.name:<24} pid {c.pid!s:<8} {mark:<10} {c.detail}")
    return 0 if all(c.healthy for c in st) else 1


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags over environment over defaults, decided once, here."""
    base = Settings.from_env()
    changes = {k: v for k, v in {
        "namespaces": tuple(args.namespace or ()),
        "liveness_port": args.liveness_port, "metrics_port": args.metrics_port, "bind": args.bind,
        "lease_name": args.lease_name, "lease_namespace": args.lease_namespace, "identity": args.identity,
        "lease_duration_s": args.lease_duration_seconds,
        "prometheus_url": args.prometheus_url, "sampler_image": args.sampler_image,
        "tick_seconds": args.tick_seconds, "workers": args.workers, "kubeconfig": args.kubeconfig,
    }.items() if v is not None}
    if args.lease_duration_seconds is not None:
        # client-go's proportions: renew within 2/3 of the lease, retry every 2/15 of it.
        changes["renew_deadline_s"] = args.lease_duration_seconds * 2 / 3
        changes["retry_period_s"] = max(0.5, args.lease_duration_seconds * 2 / 15)
    if args.standalone or args.no_leader_election:
        changes["leader_election"] = False
    if args.allow_file_sources:
        changes["allow_file_sources"] = True
    changes["verbose"] = args.verbose
    return base.but(**changes)


def cmd_run(args: argparse.Namespace) -> int:
    from .main import run_operator  # imported late: kopf is heavy and `dev` does not need it

    return run_operator(settings_from_args(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffusion-operator", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the operator",
                         description="Start the operator. Every flag's default comes from the environment "
                                     "variable named in operator/diffusion_operator/settings.py.")
    run.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable); "
                     "default: all namespaces")
    run.add_argument("--liveness-port", type=int, help="/healthz port (0: off; default 8080)")
    run.add_argument("--metrics-port", type=int, help="Prometheus metrics port (0: off; default 9090)")
    run.add_argument("--bind", help="address the liveness and metrics listeners bind (default 127.0.0.1)")
    run.add_argument("--no-leader-election", action="store_true",
                     help="act without holding the Lease (one replica only)")
    run.add_argument("--standalone", action="store_true", help="same as --no-leader-election (local runs)")
    run.add_argument("--lease-name", help="the coordination.k8s.io Lease replicas elect a leader with "
                     "(default diffusion-operator)")
    run.add_argument("--lease-namespace", help="namespace of the Lease (default: the pod's, else default)")
    run.add_argument("--identity", help="this replica's name in the Lease (default: POD_NAME, else host-pid)")
    run.add_argument("--lease-duration-seconds", type=float,
                     help="how long a leader's Lease lasts without renewal: the takeover time (default 15)")
    run.add_argument("--allow-file-sources", action="store_true",
                     help="accept file:// model sources (local development only: they read the node's disk)")
    run.add_argument("--prometheus-url", help="Prometheus for canary analysis when a pool sets no spec.prometheus.url")
    run.add_argument("--sampler-image", help="sampler image for pools that set no spec.image")
    run.add_argument("--tick-seconds", type=float, help="how often rollouts in flight are looked at (default 5)")
    run.add_argument("--workers", type=int, help="handler threads (default 24)")
    run.add_argument("--kubeconfig", help="kubeconfig outside a cluster (default $KUBECONFIG, ~/.kube/config)")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)

    dev = sub.add_parser("dev", help="a local Kubernetes cluster with simulated GPU nodes")
    dsub = dev.add_subparsers(dest="dev_command", required=True)
    for name, func, helptext in (("up", cmd_dev_up, "start (or report) the local cluster"),
                                 ("build", cmd_dev_build, "build or fetch the cluster's binaries (cached)"),
                                 ("down", cmd_dev_down, "stop the processes the cluster started"),
                                 ("status", cmd_dev_status, "health of each component")):
        sp = dsub.add_parser(name, help=helptext)
        sp.add_argument("--name", default="dev", help="cluster name (state under the cache directory)")
        sp.add_argument("--state-dir", help="state directory (default: <cache>/clusters/<name>)")
        if name == "up":
            sp.add_argument("--gpu-nodes", type=int, default=None, help="simulated GPU nodes (default 2)")
            sp.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node (default 8)")
            sp.add_argument("--gpu-product", default=None, help="value of the nvidia.com/gpu.product label")
            sp.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
        sp.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ClusterError, toolchain.ToolchainError) as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
