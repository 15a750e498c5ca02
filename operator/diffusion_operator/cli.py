"""The ``diffusion-operator`` command: ``run`` the operator, ``dev up|down|status`` a local cluster.

Kept thin: argument parsing and printing only. The operator lives in ``main``; the local
cluster in ``devcluster``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .devcluster import first_run, node, toolchain
from .devcluster.cluster import ClusterConfig, ClusterError, ComponentStartError, LocalCluster
from .devcluster.first_run import FirstImage
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
    if getattr(args, "real_nodes", None) is not None:
        if args.real_nodes not in (0, 1):
            raise ClusterError(f"--real-nodes {args.real_nodes}: this machine holds at most one real node (0 or 1)")
        cfg.real_nodes = args.real_nodes
    if getattr(args, "node_gpus", None) is not None:
        cfg.node_gpus = args.node_gpus
    if args.dev_command == "up":
        _dev_defaults(cfg, operator=not args.no_operator)
    return LocalCluster(cfg)


#: Where the Gateway listens when the port is free (else any free port; `dev status` says).
DEV_GATEWAY_PORT = 18080


def _dev_defaults(cfg: ClusterConfig, *, operator: bool) -> None:
    """What `dev up` runs beyond the bare cluster: with the real node, Traefik as the Gateway and
    the operator as a process (a code change is live at the next `dev up`, with no image to
    rebuild; the chart's in-cluster path is what tests/node/test_helm.py installs), told the
    local Prometheus, allowed file:// models and the sampler's test-only fault injection
    (`dev demo` rolls out a faulty revision)."""
    from .devcluster import images

    cfg.scrape_interval = "2s"
    if cfg.real_nodes:
        cfg.gateway = True
        cfg.gateway_port = DEV_GATEWAY_PORT
        cfg.operator = operator
        cfg.operator_args = ("--allow-file-sources", "--allow-fault-injection",
                             f"--sampler-image={images.SAMPLER_IMAGE}")


def _build_images(*, s3: bool = False) -> list:
    from .devcluster import images

    _say("Building the sampler and operator images with buildah (cached; the first build takes 10-15 minutes, "
         "most of it torch)")
    built = images.ensure_images(_say, s3=s3)
    for img in built:
        how = f"built in {img.seconds:.0f} s" if img.built_now else "cached"
        _say(f"  {img.name}: {img.size_bytes / 2**20:.0f} MiB ({how})")
    return built


def _next_steps(cluster: LocalCluster, first: FirstImage | None = None) -> str:
    kc = shlex.quote(str(cluster.kubeconfig))
    kubectl = cluster.tools.kubectl
    lines = [
        "",
        f"Local cluster '{cluster.config.name}' is ready at {cluster.server}.",
    ]
    gateway = cluster.gateway_url
    if first is not None:
        lines.append(f"examples/dev is served: an image generated through the Gateway is in {first.path}")
    lines += [
        "Next steps:",
        f"  export KUBECONFIG={kc}",
        f"  export PATH={shlex.quote(str(kubectl.parent))}:$PATH   # kubectl {cluster.tools.k8s_version}",
        "  kubectl get nodes -L nvidia.com/gpu.product",
        "  kubectl get diffusion -A          # both kinds, with phase and revisions",
    ]
    if cluster.state().get("components", {}).get("operator"):
        log = cluster.dir / "logs" / "operator.log"
        lines.append(f"  (the operator runs as a process of this cluster: log {log})")
    else:
        prom = f" --prometheus-url {cluster.prometheus_url}" if cluster.prometheus_url else ""
        lines.append(f"  diffusion-operator run --standalone --allow-file-sources{prom}   # the operator, here")
    if gateway:
        lines += [
            f"  kubectl get pods -o wide          # the pool's pods run on the real node '{node.NODE_NAME}'",
            f"  # one image through the Gateway (Traefik on {gateway}, route Host tiny.localhost):",
            f"  curl -s {gateway}/v1/images/generations -H 'Host: tiny.localhost' \\",
            "       -H 'content-type: application/json' -d '{\"prompt\": \"a lighthouse\", \"size\": \"64x64\"}' \\",
            "       | python3 -c 'import sys,json,base64; open(\"out.png\",\"wb\").write(base64.b64decode("
            "json.load(sys.stdin)[\"data\"][0][\"b64_json\"]))'",
            "  # the same with the OpenAI client (pip install openai):",
            f"  #   OpenAI(base_url='{gateway}/v1', api_key='unused', default_headers={{'Host': 'tiny.localhost'}})",
            "  #     .images.generate(prompt='a lighthouse', size='64x64').data[0].b64_json",
            "  diffusion-operator dev demo       # a good and a bad model revision rolled out, live (under 10 min)",
        ]
    elif cluster.state().get("node"):
        lines.append("  kubectl port-forward svc/tiny 8000:80 &       # the pool Service listens on 80")
    else:
        lines.append("  (no real node: pods are simulated by kwok and run no containers)")
    if cluster.prometheus_url:
        lines.append(f"  Prometheus: {cluster.prometheus_url}  (finds sampler pods through the API server)")
    lines.append(f"  diffusion-operator dev down       # stop it (logs under {cluster.dir / 'logs'})")
    return "\n".join(lines)


def cmd_dev_up(args: argparse.Namespace) -> int:
    cluster = _cluster_from_args(args)
    if not cluster.is_running():
        _say(f"Preparing binaries (cached under {toolchain.cache_root()}; the first run builds Kubernetes from source, "
             "15-30 minutes on 2 cores).")
        if cluster.config.real_nodes:
            cluster.config.node_images = tuple(img.archive for img in _build_images()
                                               if img.name != node.manifests.PAUSE_IMAGE)
            first_run.ensure_dev_model(_say)
    try:
        cluster.up(progress=_say)
    except (node.NodeUnavailable, ComponentStartError) as exc:
        if isinstance(exc, ComponentStartError) and exc.component not in node.NODE_COMPONENTS:
            raise
        _say(f"error: the real node cannot run on this machine: {exc}\n"
             "       `diffusion-operator dev up --real-nodes 0` starts a cluster of simulated (kwok) nodes only.")
        return 1
    first = None
    if cluster.gateway_url and cluster.state().get("components", {}).get("operator"):
        try:
            first = first_run.serve_examples(cluster, cluster.dir / "out", _say)
        except first_run.FirstRunError as exc:
            _say(f"error: {exc}")
            print(_next_steps(cluster))
            return 1
        _say(f"first image through the Gateway: {first.path} (revision {first.revision}, {first.seconds:.0f} s)")
    print(_next_steps(cluster, first))
    return 0


def cmd_dev_demo(args: argparse.Namespace) -> int:
    """A good and a bad model revision rolled out on the running dev cluster, shown live."""
    from .demo import run as demo

    cluster = _cluster_from_args(args)
    if args.cleanup:
        demo.cleanup(cluster, _say)
        return 0
    if not cluster.is_running() or not cluster.gateway_url or not cluster.state().get("components", {}).get(
            "operator"):
        _say("error: `dev demo` needs the running dev cluster with its real node, Gateway and operator: "
             "run `make dev` (or `diffusion-operator dev up`) first")
        return 1
    return demo.play(cluster, cluster.dir / "out", _say)


def cmd_dev_images(args: argparse.Namespace) -> int:
    """Build (or take from the cache) the images the real node runs."""
    for img in _build_images(s3=args.with_s3):
        print(f"{img.name}\t{img.size_bytes / 2**20:.0f} MiB\t{img.archive}")
    return 0


def cmd_dev_build(args: argparse.Namespace) -> int:
    """Build or fetch every binary the local cluster needs, into the cache, and nothing else.

    ``make test`` runs this before pytest: on a fresh machine the Kubernetes build takes longer
    than any test's timeout, so it must not happen inside a test fixture."""
    _say(f"Preparing binaries (cached under {toolchain.cache_root()}; the first run builds Kubernetes from source, "
         "15-30 minutes on 2 cores).")
    tools = toolchain.ensure_toolchain()
    toolchain.ensure_prometheus()
    toolchain.ensure_node_tools()
    toolchain.ensure_traefik()
    toolchain.ensure_helm()
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
    node_ok = True
    if cluster.state().get("node"):
        summary = cluster.node_summary()
        node_ok = summary.startswith("Ready")
        print(f"  {'node ' + node.NODE_NAME:<24} {'':<12} {summary}")
    for what, url in (("gateway", cluster.gateway_url), ("prometheus", cluster.prometheus_url)):
        if url:
            print(f"  {what:<24} {url}")
    return 0 if all(c.healthy for c in st) and node_ok else 1


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
    if args.allow_fault_injection:
        changes["allow_fault_injection"] = True
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
    run.add_argument("--allow-fault-injection", action="store_true",
                     help="accept DiffusionModels with spec.faultInjection (tests and demos only: their sampler "
                          "pods fail requests and add latency on purpose)")
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
                                 ("images", cmd_dev_images, "build the sampler and operator images (cached)"),
                                 ("down", cmd_dev_down, "stop the processes the cluster started"),
                                 ("status", cmd_dev_status, "health of each component"),
                                 ("demo", cmd_dev_demo, "roll out a good and a bad model revision, live")):
        sp = dsub.add_parser(name, help=helptext)
        sp.add_argument("--name", default="dev", help="cluster name (state under the cache directory)")
        sp.add_argument("--state-dir", help="state directory (default: <cache>/clusters/<name>)")
        if name == "images":
            sp.add_argument("--with-s3", action="store_true",
                            help="also the S3 server image the fetch-model tests run (make test passes it)")
        if name == "up":
            sp.add_argument("--gpu-nodes", type=int, default=None, help="simulated GPU nodes (default 2)")
            sp.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node (default 8)")
            sp.add_argument("--gpu-product", default=None, help="value of the nvidia.com/gpu.product label")
            sp.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
            sp.add_argument("--real-nodes", type=int, default=1,
                            help="real worker nodes running containers (containerd, kubelet): 1 (default) or 0 "
                                 "for simulated nodes only")
            sp.add_argument("--node-gpus", type=int, default=None,
                            help="nvidia.com/gpu the real node advertises (default 4; pods run on CPU)")
            sp.add_argument("--no-operator", action="store_true",
                            help="do not start the operator (run your own: diffusion-operator run --standalone ...)")
        if name == "demo":
            sp.add_argument("--cleanup", action="store_true", help="remove what the demo created and exit")
        sp.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ClusterError, toolchain.ToolchainError, node.NodeUnavailable) as exc:
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
