"""The ``diffusion-operator`` command: ``run`` the operator, ``dev up|down|status`` a local cluster.

Kept thin: argument parsing and printing only. The operator lives in ``main``; the local
cluster in ``devcluster``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from .devcluster import toolchain
from .devcluster.cluster import ClusterConfig, ClusterError, LocalCluster


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
        _say("Preparing binaries (cached under %s; the first run builds Kubernetes from source, "
             "15-30 minutes on 2 cores)." % toolchain.cache_root())
    cluster.up(progress=_say)
    print(_next_steps(cluster))
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


def cmd_run(args: argparse.Namespace) -> int:
    from .main import run_operator  # imported late: kopf is heavy and `dev` does not need it

    if args.allow_file_sources:
        os.environ["DIFFUSION_OPERATOR_ALLOW_FILE_SOURCES"] = "1"
    if args.prometheus_url:
        os.environ["DIFFUSION_OPERATOR_PROMETHEUS_URL"] = args.prometheus_url
    return run_operator(namespaces=args.namespace or None, liveness_port=args.liveness_port,
                        metrics_port=args.metrics_port, peering=args.peering, standalone=args.standalone,
                        verbose=args.verbose)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffusion-operator", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the operator")
    run.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable); "
                     "default: all namespaces")
    run.add_argument("--liveness-port", type=int, default=int(os.environ.get("LIVENESS_PORT", "8080")))
    run.add_argument("--metrics-port", type=int, default=int(os.environ.get("METRICS_PORT", "9090")))
    run.add_argument("--peering", default=os.environ.get("KOPF_PEERING", "diffusion-operator"),
                     help="Kopf peering object name: only one operator replica is active at a time")
    run.add_argument("--standalone", action="store_true", help="no peering (single replica, local runs)")
    run.add_argument("--allow-file-sources", action="store_true",
                     help="accept file:// model sources (local development only: they read the node's disk)")
    run.add_argument("--prometheus-url", default=os.environ.get("DIFFUSION_OPERATOR_PROMETHEUS_URL"),
                     help="Prometheus for canary analysis when a pool sets no spec.prometheus.url")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)

    dev = sub.add_parser("dev", help="a local Kubernetes cluster with simulated GPU nodes")
    dsub = dev.add_subparsers(dest="dev_command", required=True)
    for name, func, helptext in (("up", cmd_dev_up, "start (or report) the local cluster"),
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
