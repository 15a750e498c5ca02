"""The HTTP API of a real sampler process on the tiny model: images, the OpenAI client, batching,
seeds, input errors, the safety filter, metrics, logs and the OpenAPI document."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import requests
from PIL import Image

from tests.support.polling import wait_for

from .conftest import BLOCKED_TERM, POOL, REVISION, png_pixels

pytestmark = pytest.mark.sampler


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_native_generate_returns_png_of_requested_size_with_seed_revision_timings_and_safety(server):
    resp = server.post("/v1/generate", {"prompt": "a photo of a cat", "width": 64, "height": 48, "n": 2,
                                        "seed": 42})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["revision"] == REVISION
    assert [img["seed"] for img in body["images"]] == [42, 43]
    for img in body["images"]:
        pixels = png_pixels(base64.b64decode(img["image"]))
        assert pixels.shape == (48, 64, 3)
        assert pixels.std() > 1, "a random-weight model still draws something, not a flat image"
        assert img["revision"] == REVISION
        assert img["safety"] == {"outcome": "passed", "replaced": False}
        assert img["quality"] == "ok"
        assert set(img["timings"]) >= {"queue_wait_s", "denoise_s", "decode_s", "batch_size"}
        assert img["timings"]["denoise_s"] > 0
    assert resp.headers["x-request-id"] == body["id"]
    assert resp.headers["x-diffusion-revision"] == REVISION  # behind a weighted route: who answered


def test_openai_endpoint_returns_png_of_requested_size(server):
    resp = server.post("/v1/images/generations", {"prompt": "a red car", "size": "56x40", "n": 1})
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert len(data) == 1
    assert png_pixels(base64.b64decode(data[0]["b64_json"])).shape == (40, 56, 3)


def test_official_openai_client_works_unchanged(server):
    client = _client(server)
    result = client.images.generate(model="tiny-sd", prompt="an astronaut riding a horse", n=2, size="64x64",
                                    response_format="b64_json", extra_body={"seed": 7, "steps": 3})
    assert len(result.data) == 2
    for item in result.data:
        assert png_pixels(base64.b64decode(item.b64_json)).shape == (64, 64, 3)
    # the default response format (no response_format sent) is b64_json as well
    plain = client.images.generate(prompt="a tree", size="64x64")
    assert plain.data[0].b64_json
    # errors arrive as the client's typed exceptions with the server's message
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.images.generate(prompt="a tree", n=9, size="64x64")
    assert "n must be between 1 and 4" in str(err.value)
    assert [m.id for m in client.models.list()] == ["tiny-sd"]


def test_concurrent_requests_form_batches_and_seeds_are_deterministic_across_batching(server):
    body = {"prompt": "a photo of a dog", "width": 64, "height": 64, "steps": 4}
    alone = server.post("/v1/generate", {**body, "seed": 1234}).json()["images"][0]
    assert alone["timings"]["batch_size"] == 1
    batches_before = server.sample("diffusion_sampler_batch_size_count")
    singles_before = server.sample("diffusion_sampler_batch_size_bucket", le="1.0")

    # After an idle spell the first arrival starts at once (no batching wait for a lone client);
    # the rest of the burst queues behind it and runs as one batch. Seed 1234 appears three times,
    # so at least two of its copies run inside a batch.
    seeds = [1234, 1234, 1234, 1, 2, 3]
    with ThreadPoolExecutor(len(seeds)) as pool:
        results = list(pool.map(lambda s: server.post("/v1/generate", {**body, "seed": s}), seeds))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    images = [r.json()["images"][0] for r in results]
    assert max(img["timings"]["batch_size"] for img in images) > 1
    batched = [img for img in images[:3] if img["timings"]["batch_size"] > 1]
    assert len(batched) >= 2, [img["timings"] for img in images]

    a = png_pixels(base64.b64decode(alone["image"]))
    for img in batched:
        b = png_pixels(base64.b64decode(img["image"]))
        # Same seed, alone or batched: the same image (CPU kernels may round one 8-bit level apart).
        assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.05
    other = png_pixels(base64.b64decode(images[3]["image"]))
    assert np.abs(a - other).mean() > 5, "different seeds give different images"

    # n=2 with seed s: the second image is seed s+1's image
    pair = server.post("/v1/generate", {**body, "seed": 2, "n": 2}).json()["images"]
    single3 = png_pixels(base64.b64decode(images[5]["image"]))
    assert pair[1]["seed"] == 3
    assert np.abs(png_pixels(base64.b64decode(pair[1]["image"])) - single3).max() <= 2

    # the batch-size histogram saw batches larger than one
    new_batches = server.sample("diffusion_sampler_batch_size_count") - batches_before
    new_singles = server.sample("diffusion_sampler_batch_size_bucket", le="1.0") - singles_before
    assert new_batches > new_singles, "some batch after the concurrent burst had more than one image"


BAD_INPUT = [
    # (id, path, body, status, param, words in the message)
    ("steps-over-limit", "/v1/generate", {"prompt": "x", "steps": 500}, 422, "steps", ["steps", "50"]),
    ("width-over-limit", "/v1/generate", {"prompt": "x", "width": 256}, 422, "width", ["width", "128"]),
    ("height-not-multiple-of-8", "/v1/generate", {"prompt": "x", "height": 60}, 422, "height", ["multiple of 8"]),
    ("too-many-images", "/v1/generate", {"prompt": "x", "n": 9}, 422, "n", ["n must be between 1 and 4"]),
    ("prompt-too-long", "/v1/generate", {"prompt": "x" * 201}, 422, "prompt", ["201", "limit is 200"]),
    ("negative-prompt-too-long", "/v1/generate", {"prompt": "x", "negative_prompt": "y" * 300}, 422,
     "negative_prompt", ["limit is 200"]),
    ("empty-prompt", "/v1/generate", {"prompt": "   "}, 422, "prompt", ["must not be empty"]),
    ("missing-prompt", "/v1/generate", {"width": 64}, 422, "prompt", ["prompt", "required"]),
    ("wrong-type", "/v1/generate", {"prompt": "x", "steps": "many"}, 422, "steps", ["steps", "integer"]),
    ("unknown-field", "/v1/generate", {"prompt": "x", "stepz": 3}, 422, "stepz", ["stepz"]),
    ("bad-scheduler", "/v1/generate", {"prompt": "x", "scheduler": "magic"}, 422, "scheduler", ["scheduler"]),
    ("guidance-out-of-range", "/v1/generate", {"prompt": "x", "guidance_scale": 99}, 422, "guidance_scale",
     ["between 0.0 and 50.0"]),
    ("timeout-over-limit", "/v1/generate", {"prompt": "x", "timeout_s": 9999}, 422, "timeout_s", ["at most 120"]),
    ("image-on-text-to-image", "/v1/generate", {"prompt": "x", "image": "aGVsbG8="}, 422, "image",
     ["text-to-image"]),
    ("openai-bad-size", "/v1/images/generations", {"prompt": "x", "size": "big"}, 422, "size", ["WIDTHxHEIGHT"]),
    ("openai-size-over-limit", "/v1/images/generations", {"prompt": "x", "size": "1024x1024"}, 422, "width",
     ["128"]),
    ("openai-n-over-limit", "/v1/images/generations", {"prompt": "x", "n": 5}, 422, "n", ["1 and 4"]),
    ("huge-n", "/v1/generate", {"prompt": "x", "n": 10**12}, 422, "n", ["1 and 4"]),
    ("zero-n", "/v1/generate", {"prompt": "x", "n": 0}, 422, "n", ["1 and 4"]),
    ("fractional-n", "/v1/generate", {"prompt": "x", "n": 2.5}, 422, "n", ["integer"]),
    ("negative-steps", "/v1/generate", {"prompt": "x", "steps": -3}, 422, "steps", ["between 1 and 50"]),
    ("boolean-steps", "/v1/generate", {"prompt": "x", "steps": True}, 422, "steps", ["integer"]),
    ("numeric-string-steps", "/v1/generate", {"prompt": "x", "steps": "4"}, 422, "steps", ["integer"]),
    ("negative-width", "/v1/generate", {"prompt": "x", "width": -64}, 422, "width", ["between 8 and 128"]),
    ("huge-height", "/v1/generate", {"prompt": "x", "height": 2**40}, 422, "height", ["between 8 and 128"]),
    ("negative-seed", "/v1/generate", {"prompt": "x", "seed": -1}, 422, "seed", ["seed"]),
    ("seed-beyond-64-bits", "/v1/generate", {"prompt": "x", "seed": 2**70}, 422, "seed", ["seed"]),
    ("prompt-not-a-string", "/v1/generate", {"prompt": ["a", "cat"]}, 422, "prompt", ["string"]),
    ("very-long-unicode-prompt", "/v1/generate", {"prompt": "\U0001F600" * 201}, 422, "prompt", ["limit is 200"]),
    ("openai-huge-size", "/v1/images/generations", {"prompt": "x", "size": "99999999999x9"}, 422, "width",
     ["between 8 and 128"]),
    ("openai-half-size", "/v1/images/generations", {"prompt": "x", "size": "64x"}, 422, "size", ["WIDTHxHEIGHT"]),
    ("openai-bad-response-format", "/v1/images/generations", {"prompt": "x", "response_format": "gif"}, 422,
     "response_format", ["b64_json"]),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_422_naming_the_field_and_limit(server, case):
    _, path, body, status, param, words = case
    resp = server.post(path, body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param
    for word in words:
        assert word in error["message"], error


def test_bodies_that_are_not_a_json_object_get_a_4xx_with_a_reason(server):
    # Not UTF-8 at all (a Latin-1 prompt sent as raw bytes).
    resp = server.post("/v1/generate", data=b'{"prompt": "caf\xe9"}', headers={"content-type": "application/json"})
    error = resp.json()["error"]
    assert resp.status_code == 400 and "malformed" in error["message"] and error["code"] == "invalid_body", error
    # No body, an empty body, a JSON array, and a form instead of JSON.
    for data, ctype in ((None, None), (b"", "application/json"), (b'["a cat"]', "application/json"),
                        (b"prompt=a+cat", "application/x-www-form-urlencoded")):
        resp = server.post("/v1/generate", data=data, headers={"content-type": ctype} if ctype else {})
        assert 400 <= resp.status_code < 500, (data, ctype, resp.status_code, resp.text)
        error = resp.json()["error"]
        assert error["message"] and (error["param"] or error["code"]), (data, ctype, error)


def test_malformed_json_is_400(server):
    resp = server.post("/v1/generate", data=b'{"prompt": "a cat",', headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert "malformed JSON" in resp.json()["error"]["message"]
    resp = server.post("/v1/images/generations", data=b"not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400


def test_too_large_body_is_413(server):
    resp = server.post("/v1/generate", {"prompt": "x" * 70_000})
    assert resp.status_code == 413
    assert "65536" in resp.json()["error"]["message"]
    # a chunked upload with no Content-Length is cut off as well
    chunks = (b"x" * 8192 for _ in range(12))
    resp = server.post("/v1/images/generations", data=chunks, headers={"content-type": "application/json"})
    assert resp.status_code == 413


def test_edits_on_a_text_to_image_model_is_422(server):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="PNG")
    with pytest.raises(openai.UnprocessableEntityError) as err:
        _client(server).images.edit(image=("in.png", buffer.getvalue(), "image/png"), prompt="make it blue",
                                    size="64x64")
    assert "text-to-image" in str(err.value)


def test_blocklisted_prompt_is_replaced_and_flagged(server):
    before = server.sample("diffusion_sampler_safety_checks_total", outcome="blocked_prompt")
    resp = server.post("/v1/generate", {"prompt": f"A {BLOCKED_TERM.upper()} scene", "n": 2})
    assert resp.status_code == 200
    for img in resp.json()["images"]:
        assert img["safety"] == {"outcome": "blocked_prompt", "replaced": True}
        assert png_pixels(base64.b64decode(img["image"])).max() == 0, "replaced by a black image"
    data = server.post("/v1/images/generations", {"prompt": "some other term here"}).json()["data"]
    assert data[0]["safety"] == "blocked_prompt"
    # a passed prompt says so
    assert server.post("/v1/images/generations", {"prompt": "a flower"}).json()["data"][0]["safety"] == "passed"
    after = server.sample("diffusion_sampler_safety_checks_total", outcome="blocked_prompt")
    assert after - before == 3


CONTRACT_METRICS = {
    # family name (as the parser reports it) -> extra labels
    "diffusion_sampler_requests": {"endpoint", "code"},
    "diffusion_sampler_request_duration_seconds": {"endpoint"},
    "diffusion_sampler_queue_wait_seconds": set(),
    "diffusion_sampler_batch_size": set(),
    "diffusion_sampler_queue_depth": set(),
    "diffusion_sampler_images_generated": set(),
    "diffusion_sampler_safety_checks": {"outcome"},
    "diffusion_sampler_blank_images": {"kind"},
    "diffusion_sampler_denoise_step_seconds": set(),
}


def test_metrics_carry_contract_names_with_pool_and_revision(server):
    assert server.post("/v1/images/generations", {"prompt": "a house"}).status_code == 200
    families = server.metrics()
    text = requests.get(server.url + "/metrics", timeout=10).text
    for name, extra in CONTRACT_METRICS.items():
        assert name in families, name
        samples = [s for s in families[name] if not s.name.endswith("_created")]
        assert samples, name
        for s in samples:
            assert s.labels.get("pool") == POOL and s.labels.get("revision") == REVISION, s
            assert extra <= set(s.labels), (name, s.labels)
    for exposed in ("diffusion_sampler_requests_total{", "diffusion_sampler_images_generated_total{",
                    "diffusion_sampler_safety_checks_total{", "diffusion_sampler_blank_images_total{"):
        assert exposed in text
    assert 'code="200",endpoint="generations"' in text
    # latency buckets reach 300 s and include each SLO threshold exactly
    les = {s.labels["le"] for s in families["diffusion_sampler_request_duration_seconds"]
           if s.name.endswith("_bucket")}
    assert {"0.3", "2.5", "300.0", "+Inf"} <= les
    assert {s.labels["outcome"] for s in families["diffusion_sampler_safety_checks"]} >= {
        "passed", "blocked_prompt", "blocked_image"}
    assert {s.labels["kind"] for s in families["diffusion_sampler_blank_images"]} >= {"blank", "nan"}
    assert server.sample("diffusion_sampler_images_generated_total") >= 1
    # CPU run: no GPU memory series
    assert "diffusion_sampler_gpu_memory_bytes" not in families or not families["diffusion_sampler_gpu_memory_bytes"]


def test_probes_and_openapi(server):
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "alive"}
    ready = requests.get(server.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["revision"] == REVISION
    doc = requests.get(server.url + "/openapi.json", timeout=5).json()
    assert {"/v1/images/generations", "/v1/generate", "/v1/images/edits"} <= set(doc["paths"])
    assert "multipart/form-data" in doc["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]


def test_logs_are_json_and_carry_prompt_hashes_never_prompts(server):
    prompt = "a very particular zebra 8c1f"
    resp = server.post("/v1/generate", {"prompt": prompt})
    assert resp.status_code == 200

    def our_lines():
        # The access line is written as the response goes out: it can reach the file a moment later.
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        return lines, [entry for entry in lines if entry.get("request_id") == resp.json()["id"]]

    wait_for(lambda: our_lines()[1], timeout=10, interval=0.1, what="the request's log line")
    lines, ours = our_lines()
    assert lines, "structured JSON log lines"
    assert ours and len(ours[0]["prompt_hash"]) == 16
    assert "zebra" not in server.log()
