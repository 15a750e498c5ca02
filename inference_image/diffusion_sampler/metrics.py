"""Prometheus metrics, names and labels exactly as in ``docs/sampler-contract.md`` (plus
``prompt_cache_total`` and ``gpu_memory_bytes{kind="peak"}``, described in ``docs/sampler.md``).

Every series carries ``pool`` and ``revision`` from the environment: the rollout analysis queries
by them. Histograms of latency reach 300 s (the client default of 10 s would put every slow
request into +Inf) and get an exact bucket at each configured SLO threshold.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

ENDPOINTS = ("generations", "generate", "edits")
SAFETY_OUTCOMES = ("passed", "blocked_prompt", "blocked_image")
BLANK_KINDS = ("blank", "nan")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)


# Status codes whose series exist from the first scrape (others appear when they happen).
PRECREATED_CODES = ("200", "500", "503", "504")


class Metrics:
    def __init__(self, pool: str, revision: str, slo_thresholds: tuple[float, ...] = ()) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        base = ("pool", "revision")
        self._labels = {"pool": pool, "revision": revision}
        latency_buckets = tuple(sorted(set(LATENCY_BUCKETS) | set(slo_thresholds)))
        r = self.registry
        self.requests = Counter(
            "diffusion_sampler_requests_total", "HTTP requests to the generation endpoints by status code.",
            base + ("endpoint", "code"), registry=r)
        self.request_duration = Histogram(
            "diffusion_sampler_request_duration_seconds", "Request latency, arrival to response.",
            base + ("endpoint",), buckets=latency_buckets, registry=r)
        self.queue_wait = Histogram(
            "diffusion_sampler_queue_wait_seconds", "Time a request waited before its batch started.",
            base, buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "diffusion_sampler_batch_size", "Images per pipeline call.", base, buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "diffusion_sampler_queue_depth", "Requests waiting for a batch.", base, registry=r)
        self.images = Counter(
            "diffusion_sampler_images_generated_total", "Images produced by the pipeline.", base, registry=r)
        self.safety = Counter(
            "diffusion_sampler_safety_checks_total", "Safety-filter outcomes, one per image.",
            base + ("outcome",), registry=r)
        self.blank = Counter(
            "diffusion_sampler_blank_images_total", "Images that came out blank or NaN.",
            base + ("kind",), registry=r)
        self.step_time = Histogram(
            "diffusion_sampler_denoise_step_seconds", "Time per denoising step of a batch.",
            base, buckets=STEP_BUCKETS, registry=r)
        self.gpu_memory = Gauge(
            "diffusion_sampler_gpu_memory_bytes",
            "CUDA memory held by the process (allocated, reserved, and peak allocated since start).",
            base + ("kind",), registry=r)
        self.prompt_cache = Counter(
            "diffusion_sampler_prompt_cache_total",
            "Prompt-embedding cache lookups, one per image: hit (text encoder skipped) or miss.",
            base + ("result",), registry=r)
        # Create the children up front so every series exists (at zero) from the first scrape.
        for endpoint in ENDPOINTS:
            self.request_duration.labels(**self._labels, endpoint=endpoint)
            # A counter series appears at its first increment, and rate() needs two samples: without
            # these zeros the first 5xx of a new pod would be invisible to the canary analysis.
            for code in PRECREATED_CODES:
                self.requests.labels(**self._labels, endpoint=endpoint, code=code)
        for outcome in SAFETY_OUTCOMES:
            self.safety.labels(**self._labels, outcome=outcome)
        for kind in BLANK_KINDS:
            self.blank.labels(**self._labels, kind=kind)
        for result in ("hit", "miss"):
            self.prompt_cache.labels(**self._labels, result=result)
        self.queue_wait.labels(**self._labels)
        self.batch_size.labels(**self._labels)
        self.queue_depth.labels(**self._labels)
        self.images.labels(**self._labels)
        self.step_time.labels(**self._labels)

    def l(self, metric, **extra):  # noqa: E743 - short on purpose, used everywhere
        return metric.labels(**self._labels, **extra)

    def enable_gpu(self) -> None:
        for kind in ("allocated", "reserved", "peak"):
            self.gpu_memory.labels(**self._labels, kind=kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)
