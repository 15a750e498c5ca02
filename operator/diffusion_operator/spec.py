"""Typed views of the two custom resources' specs, parsed once per reconcile.

The CRD schema (``crds/``) applies defaults and validates; these parsers only read, so a
missing field here means an object created before a default existed, and we fall back to the
same default the schema documents. ``PoolSpec.from_body`` is the one parser of a pool's spec:
it carries the rollout steps (``RolloutSpec``) and the SLOs and analysis (``AnalysisConfig``),
so the reconciler, the rollout and the PrometheusRule read the same parsed values.
``model_revision`` is the hash of everything that defines a model's outputs: two DiffusionModels
with the same revision produce the same images. The test-only ``spec.faultInjection`` is part of
it too (when set): a model that injects faults is a new, bad revision, rolled out as a canary.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

from .errors import SpecError
from .rollout.burnrate import DEFAULT_SLO_PERIOD_S
from .rollout.state_machine import RolloutSpec
from .rollout.verdict import AnalysisConfig

SCHEMES = ("pvc", "hf", "s3", "file")


@dataclass(frozen=True)
class ModelSource:
    uri: str
    scheme: str
    revision: str | None = None
    token_secret: str | None = None
    token_key: str = "token"
    credentials_secret: str | None = None
    endpoint: str | None = None
    region: str | None = None

    @property
    def pvc_claim(self) -> str:
        return urlparse(self.uri).netloc

    @property
    def pvc_subpath(self) -> str:
        return urlparse(self.uri).path.lstrip("/")

    @property
    def local_path(self) -> str:
        return urlparse(self.uri).path

    def secret_names(self) -> list[str]:
        return [s for s in (self.token_secret, self.credentials_secret) if s]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: ModelSource
    pipeline: str = "text-to-image"
    precision: str = "fp16"
    scheduler: str = "dpm-solver-multistep"
    steps: int = 30
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    max_steps: int = 100
    max_width: int = 1024
    max_height: int = 1024
    max_images: int = 4
    max_prompt_length: int = 2000
    max_request_bytes: int = 20971520
    safety_checker: str = "auto"
    blocklist: tuple[str, ...] = ()
    replacement: str = "black"
    #: ``spec.faultInjection`` (tests and demos only; the operator refuses it unless started with
    #: ``--allow-fault-injection``): the sampler's SAMPLER_FAULT_ERROR_RATE / SAMPLER_FAULT_LATENCY_S.
    fault_error_rate: float = 0.0
    fault_latency_s: float = 0.0
    #: ``spec.faultInjection.image`` (``nan`` or ``noise``): SAMPLER_FAULT_IMAGE, broken renders.
    fault_image: str = ""

    @property
    def fault_injection(self) -> bool:
        """Whether this model's sampler pods inject faults."""
        return bool(self.fault_error_rate or self.fault_latency_s or self.fault_image)

    @classmethod
    def from_body(cls, name: str, spec: dict) -> ModelSpec:
        src = spec.get("source") or {}
        uri = src.get("uri", "")
        scheme = urlparse(uri).scheme
        if scheme not in SCHEMES:
            raise SpecError(f"spec.source.uri {uri!r}: scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
        tok = src.get("tokenSecretRef") or {}
        cred = src.get("credentialsSecretRef") or {}
        d = spec.get("defaults") or {}
        lim = spec.get("limits") or {}
        saf = spec.get("safety") or {}
        faults = spec.get("faultInjection") or {}
        return cls(
            name=name,
            source=ModelSource(uri=uri, scheme=scheme, revision=src.get("revision"), token_secret=tok.get("name"),
                               token_key=tok.get("key", "token"), credentials_secret=cred.get("name"),
                               endpoint=src.get("endpoint"), region=src.get("region")),
            pipeline=spec.get("pipeline", "text-to-image"),
            precision=spec.get("precision", "fp16"),
            scheduler=d.get("scheduler", "dpm-solver-multistep"),
            steps=int(d.get("steps", 30)),
            guidance_scale=float(d.get("guidanceScale", 7.5)),
            width=int(d.get("width", 512)),
            height=int(d.get("height", 512)),
            max_steps=int(lim.get("maxSteps", 100)),
            max_width=int(lim.get("maxWidth", 1024)),
            max_height=int(lim.get("maxHeight", 1024)),
            max_images=int(lim.get("maxImagesPerRequest", 4)),
            max_prompt_length=int(lim.get("maxPromptLength", 2000)),
            max_request_bytes=int(lim.get("maxRequestBytes", 20971520)),
            safety_checker=saf.get("checker", "auto"),
            blocklist=tuple(saf.get("blocklist") or ()),
            replacement=saf.get("replacement", "black"),
            fault_error_rate=float(faults.get("errorRate", 0.0)),
            fault_latency_s=float(faults.get("latencySeconds", 0.0)),
            fault_image=str(faults.get("image") or ""),
        )

    def output_defining(self) -> dict:
        """What decides the images: weights, pipeline, dtype, sampler defaults, safety.

        Limits are left out on purpose: raising maxSteps changes what is allowed, not what a
        given request produces, so it must not start a canary rollout.

        Fault injection (tests and demos) is in, but only when set: a model that injects faults
        is another revision (rolling it out is a canary), and every model without it keeps the
        revision it had before the field existed.
        """
        s = self.source
        out: dict = {"uri": s.uri, "revision": s.revision, "endpoint": s.endpoint, "pipeline": self.pipeline,
                     "precision": self.precision, "scheduler": self.scheduler, "steps": self.steps,
                     "guidance": self.guidance_scale, "size": [self.width, self.height],
                     "safety": [self.safety_checker, sorted(self.blocklist), self.replacement]}
        if self.fault_injection:
            out["faults"] = [self.fault_error_rate, self.fault_latency_s]
            if self.fault_image:
                out["faults"].append(self.fault_image)
        return out

    def to_snapshot(self) -> dict:
        d = asdict(self)
        d["blocklist"] = list(self.blocklist)
        return d

    @classmethod
    def from_snapshot(cls, d: dict) -> ModelSpec:
        """The inverse of ``to_snapshot``; snapshots written before a field existed get its
        default (no fault injection)."""
        d = dict(d)
        d["source"] = ModelSource(**d["source"])
        d["blocklist"] = tuple(d.get("blocklist") or ())
        return cls(**d)


def model_revision(model: ModelSpec) -> str:
    """Short stable hash of the output-defining spec (10 hex chars, like a pod-template hash)."""
    blob = json.dumps(model.output_defining(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def pool_revision(model_rev: str, image: str) -> str:
    """A pool's revision: the model revision plus the sampler image. Either changing starts a
    canary; every other pool field (replicas, batching, resources) is applied in place."""
    return hashlib.sha256(f"{model_rev}\n{image}".encode()).hexdigest()[:10]


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    target_queue_depth: int
    scale_down_stabilization: int = 300


@dataclass(frozen=True)
class GpuSpec:
    resource: str = "nvidia.com/gpu"
    count: int = 1
    products: tuple[str, ...] = ()
    product_label: str = "nvidia.com/gpu.product"
    tolerations: tuple[dict, ...] = ()
    runtime_class: str | None = None


@dataclass(frozen=True)
class CompileBucket:
    width: int
    height: int
    batch_sizes: tuple[int, ...]


@dataclass(frozen=True)
class PoolSpec:
    model_name: str
    replicas: int = 1
    autoscaling: Autoscaling | None = None
    gpu: GpuSpec = field(default_factory=GpuSpec)
    max_batch_size: int = 8
    max_wait_ms: int = 50
    max_queue: int = 64
    image: str | None = None
    image_pull_policy: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    resources: dict = field(default_factory=dict)
    cache_size_limit: str = "100Gi"
    downloader_image: str | None = None
    request_timeout: int = 120
    drain_timeout: int = 60
    warmup: bool = True
    compile_enabled: bool = False
    compile_buckets: tuple[CompileBucket, ...] = ()
    log_level: str = "INFO"
    latency_threshold: float | None = None
    traffic_provider: str = "service"
    parent_refs: tuple[dict, ...] = ()
    hostnames: tuple[str, ...] = ()
    service_port: int = 80
    monitoring_enabled: bool = True
    monitoring_kind: str = "PodMonitor"
    scrape_interval: int = 15
    monitoring_labels: dict = field(default_factory=dict)
    prometheus_rule: bool = True
    node_selector: dict = field(default_factory=dict)
    priority_class: str | None = None
    pod_labels: dict = field(default_factory=dict)
    pod_annotations: dict = field(default_factory=dict)
    rollout: RolloutSpec = field(default_factory=lambda: RolloutSpec.from_spec(None))
    analysis: AnalysisConfig = field(default_factory=lambda: AnalysisConfig.from_spec(None))
    slo_period_s: int = DEFAULT_SLO_PERIOD_S

    @classmethod
    def from_body(cls, spec: dict) -> PoolSpec:
        a = spec.get("autoscaling")
        g = spec.get("gpu") or {}
        b = spec.get("batching") or {}
        mc = spec.get("modelCache") or {}
        srv = spec.get("server") or {}
        comp = srv.get("compile") or {}
        tr = spec.get("traffic") or {}
        mon = spec.get("monitoring") or {}
        lat = (spec.get("slo") or {}).get("latency") or {}
        pm = spec.get("podMetadata") or {}
        model = (spec.get("modelRef") or {}).get("name")
        if not model:
            raise SpecError("spec.modelRef.name is required")
        return cls(
            model_name=model,
            replicas=int(spec.get("replicas", 1)),
            autoscaling=Autoscaling(int(a.get("minReplicas", 1)), int(a["maxReplicas"]),
                                    int(a.get("targetQueueDepthPerReplica", 4)),
                                    int(a.get("scaleDownStabilizationSeconds", 300))) if a else None,
            gpu=GpuSpec(resource=g.get("resourceName", "nvidia.com/gpu"), count=int(g.get("count", 1)),
                        products=tuple(g.get("products") or ()),
                        product_label=g.get("productLabel", "nvidia.com/gpu.product"),
                        tolerations=tuple(g.get("tolerations") or ()), runtime_class=g.get("runtimeClassName")),
            max_batch_size=int(b.get("maxBatchSize", 8)),
            max_wait_ms=int(b.get("maxWaitMs", 50)),
            max_queue=int(b.get("maxQueue", 64)),
            image=spec.get("image"),
            image_pull_policy=spec.get("imagePullPolicy"),
            image_pull_secrets=tuple(s["name"] for s in spec.get("imagePullSecrets") or ()),
            resources=spec.get("resources") or {},
            cache_size_limit=str(mc.get("sizeLimit", "100Gi")),
            downloader_image=mc.get("downloaderImage"),
            request_timeout=int(srv.get("requestTimeoutSeconds", 120)),
            drain_timeout=int(srv.get("drainTimeoutSeconds", 60)),
            warmup=bool(srv.get("warmup", True)),
            compile_enabled=bool(comp.get("enabled", False)),
            compile_buckets=tuple(CompileBucket(int(x["width"]), int(x["height"]), tuple(x.get("batchSizes") or (1,)))
                                  for x in comp.get("buckets") or ()),
            log_level=srv.get("logLevel", "INFO"),
            latency_threshold=float(lat["thresholdSeconds"]) if lat.get("thresholdSeconds") else None,
            traffic_provider=tr.get("provider", "service"),
            parent_refs=tuple(tr.get("parentRefs") or ()),
            hostnames=tuple(tr.get("hostnames") or ()),
            service_port=int(tr.get("port", 80)),
            monitoring_enabled=bool(mon.get("enabled", True)),
            monitoring_kind=mon.get("kind", "PodMonitor"),
            scrape_interval=int(mon.get("scrapeIntervalSeconds", 15)),
            monitoring_labels=dict(mon.get("labels") or {}),
            prometheus_rule=bool(mon.get("prometheusRule", True)),
            node_selector=dict(spec.get("nodeSelector") or {}),
            priority_class=spec.get("priorityClassName"),
            pod_labels=dict(pm.get("labels") or {}),
            pod_annotations=dict(pm.get("annotations") or {}),
            rollout=RolloutSpec.from_spec(spec.get("rollout")),
            analysis=AnalysisConfig.from_pool_spec(spec),
            slo_period_s=int((spec.get("slo") or {}).get("periodDays") or 0) * 86400 or DEFAULT_SLO_PERIOD_S,
        )
