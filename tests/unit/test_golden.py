"""The golden-render gate's judgement (rollout.golden) and how renders are gathered
(rollout.renderer), on images made here with Pillow. The real renders, from sampler pods on the
real node through the API server's Service proxy, are in tests/e2e/test_golden_renders.py."""

from __future__ import annotations

import base64
import io
import json
import random

import pytest
from PIL import Image

from diffusion_operator.rollout.golden import (
    GoldenOutcome,
    GoldenReason,
    GoldenSpec,
    Render,
    judge,
    mean_abs_difference,
)
from diffusion_operator.rollout.renderer import (
    PROBE_HEADER,
    PROBE_VALUE,
    RenderUnavailable,
    ServiceProxyRenderer,
    render_and_judge,
)

pytestmark = pytest.mark.unit

SPEC = GoldenSpec.from_spec({"prompts": [{"prompt": "a red bicycle", "seed": 7}, {"prompt": "a lighthouse", "seed": 8}],
                             "maxMeanDifference": 0.05, "steps": 4, "width": 64, "height": 64})
assert SPEC is not None


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def picture(seed: int, size: int = 64) -> Image.Image:
    """A textured image (what a model renders is never flat)."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))


def shifted(image: Image.Image, by: int) -> Image.Image:
    """Every channel value moved by ``by`` (clipped): a mean difference of about by/255."""
    return image.point(lambda v: max(0, min(255, v + by)))


def renders(*images: Image.Image, quality: str = "ok") -> list[Render]:
    return [Render(png(i), quality=quality) for i in images]


STABLE = [picture(1), picture(2)]


def test_identical_renders_pass_with_a_difference_of_zero():
    result = judge(SPEC, "r2", renders(*STABLE), renders(*STABLE))
    assert result.outcome == GoldenOutcome.PASSED and result.reason == GoldenReason.PASSED
    assert [p.difference for p in result.pairs] == [0.0, 0.0]
    status = result.to_status("2025-01-01T00:00:00Z")
    assert status["renders"][0] == {"index": 0, "seed": 7, "canary": "ok", "stable": "ok", "meanDifference": 0.0}
    assert "a red bicycle" not in json.dumps(status), "prompts never go into status"


def test_a_small_shift_passes_and_a_large_one_fails_naming_the_render_and_threshold():
    small = judge(SPEC, "r2", renders(*STABLE), renders(shifted(STABLE[0], 5), STABLE[1]))
    assert small.outcome == GoldenOutcome.PASSED
    assert 0.0 < small.pairs[0].difference < 0.05
    large = judge(SPEC, "r2", renders(*STABLE), renders(STABLE[0], shifted(STABLE[1], 40)))
    assert large.outcome == GoldenOutcome.FAILED and large.reason == GoldenReason.MISMATCH
    assert large.pairs[1].difference > 0.05
    assert "golden render 1 (seed 8)" in large.message and "maxMeanDifference 0.05" in large.message


def test_noise_instead_of_the_image_is_a_mismatch():
    result = judge(SPEC, "r2", renders(*STABLE), renders(picture(99), picture(98)))
    assert result.reason == GoldenReason.MISMATCH
    # Two independent uniform images differ by a third of full scale on average.
    assert all(0.25 < p.difference < 0.42 for p in result.pairs)


def test_a_nan_render_fails_whatever_its_pixels():
    black = Image.new("RGB", (64, 64))
    result = judge(SPEC, "r2", renders(*STABLE), [Render(png(black), quality="nan"), Render(png(STABLE[1]))])
    assert result.outcome == GoldenOutcome.FAILED and result.reason == GoldenReason.NAN
    assert result.pairs[0].difference is None and "seed 7" in result.message


def test_a_blank_canary_fails_unless_the_stable_is_blank_too():
    flat = Image.new("RGB", (64, 64), (128, 128, 128))
    result = judge(SPEC, "r2", renders(*STABLE), renders(flat, STABLE[1]))  # the sampler said ok: pixels tell
    assert result.reason == GoldenReason.BLANK and result.pairs[0].canary == "blank"
    # The prompt itself renders flat on the stable: the canary is judged by difference only.
    both = judge(SPEC, "r2", renders(flat, STABLE[1]), renders(flat, STABLE[1]))
    assert both.outcome == GoldenOutcome.PASSED and both.pairs[0].stable == "blank"


def test_a_render_of_another_size_is_compared_as_seen():
    big = STABLE[0].resize((128, 128), Image.Resampling.NEAREST)
    assert mean_abs_difference(STABLE[0], big) < 0.2
    result = judge(SPEC, "r2", renders(*STABLE), renders(big, STABLE[1]))
    assert result.pairs[0].difference is not None


def test_spec_reads_the_crd_fields_and_builds_native_requests():
    assert GoldenSpec.from_spec(None) is None
    assert SPEC.request(1) == {"prompt": "a lighthouse", "seed": 8, "n": 1, "timeout_s": 60.0, "steps": 4,
                               "width": 64, "height": 64}
    with pytest.raises(ValueError):
        GoldenSpec.from_spec({"prompts": []})


class FakeRenderer:
    """Images per Service, the way a sampler would answer; ``down`` Services raise."""

    def __init__(self, images: dict[str, list[Image.Image]], down: set[str] = frozenset()):
        self.images, self.down, self.calls = images, down, []

    def render(self, namespace, service, port, body, timeout_s):
        self.calls.append((service, body["seed"]))
        if service in self.down:
            raise RenderUnavailable(f"Service {service} answered 503: no endpoints available")
        index = [p.seed for p in SPEC.prompts].index(body["seed"])
        return Render(png(self.images[service][index]))


def test_render_and_judge_renders_every_prompt_on_both_revisions():
    fake = FakeRenderer({"tiny-r1": STABLE, "tiny-r2": [STABLE[0], shifted(STABLE[1], 60)]})
    result = render_and_judge(fake, SPEC, namespace="ns", revision="r2", stable_service="tiny-r1",
                              canary_service="tiny-r2", port=8000)
    assert fake.calls == [("tiny-r1", 7), ("tiny-r1", 8), ("tiny-r2", 7), ("tiny-r2", 8)]
    assert result.reason == GoldenReason.MISMATCH


def test_a_revision_that_cannot_render_leaves_the_gate_pending_and_says_which():
    fake = FakeRenderer({"tiny-r1": STABLE, "tiny-r2": STABLE}, down={"tiny-r2"})
    result = render_and_judge(fake, SPEC, namespace="ns", revision="r2", stable_service="tiny-r1",
                              canary_service="tiny-r2", port=8000)
    assert result.outcome == GoldenOutcome.PENDING and result.reason == GoldenReason.UNAVAILABLE
    assert "the canary could not render golden render 0 (seed 7)" in result.message and "503" in result.message


class FakeProxy:
    def __init__(self, status: int, body: bytes | Exception):
        self.status, self.body, self.seen = status, body, None

    def service_proxy_post(self, namespace, service, port, path, body, headers, timeout_s):
        self.seen = (namespace, service, port, path, headers)
        if isinstance(self.body, Exception):
            raise self.body
        return self.status, self.body


def test_service_proxy_renderer_reads_the_native_answer_and_marks_its_requests_as_probes():
    answer = {"images": [{"image": base64.b64encode(png(STABLE[0])).decode(), "quality": "nan",
                          "safety": {"outcome": "passed"}}]}
    proxy = FakeProxy(200, json.dumps(answer).encode())
    got = ServiceProxyRenderer(proxy).render("ns", "tiny-r2", 8000, SPEC.request(0), 5)
    assert got.quality == "nan" and got.png == png(STABLE[0])
    assert proxy.seen == ("ns", "tiny-r2", 8000, "v1/generate", {PROBE_HEADER: PROBE_VALUE})


@pytest.mark.parametrize("status, body, says", [
    (422, b'{"error": {"message": "steps must be between 1 and 4; got 8", "param": "steps"}}', "422: steps must"),
    (503, b'{"kind": "Status", "message": "no endpoints available for service \\"tiny-r2\\""}', "no endpoints"),
    (200, b'{"images": []}', "without an image"),
    (0, ConnectionError("read timed out"), "no answer"),
])
def test_service_proxy_renderer_turns_every_failure_into_render_unavailable(status, body, says):
    with pytest.raises(RenderUnavailable, match=says):
        ServiceProxyRenderer(FakeProxy(status, body)).render("ns", "tiny-r2", 8000, SPEC.request(0), 5)
