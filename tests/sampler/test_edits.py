"""Image-to-image on a model loaded as an image-to-image pipeline: the OpenAI edits endpoint
(multipart, through the official client) and the native endpoint with a base64 image."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from .conftest import png_pixels

pytestmark = pytest.mark.sampler


def _png(size=(64, 64), color=(200, 30, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_openai_client_edit_returns_image_of_requested_size(img2img_server):
    client = openai.OpenAI(base_url=img2img_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    result = client.images.edit(image=("in.png", _png((80, 48)), "image/png"), prompt="make it blue",
                                size="64x48", n=2, extra_body={"steps": 4, "seed": 3, "strength": 0.5})
    assert len(result.data) == 2
    for item in result.data:
        assert png_pixels(base64.b64decode(item.b64_json)).shape == (48, 64, 3)


def test_native_image_to_image_and_its_input_errors(img2img_server):
    image = base64.b64encode(_png()).decode()
    ok = img2img_server.post("/v1/generate", {"prompt": "a painting", "image": image, "steps": 4, "seed": 9})
    assert ok.status_code == 200, ok.text
    assert ok.json()["images"][0]["seed"] == 9
    missing = img2img_server.post("/v1/generate", {"prompt": "a painting"})
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "image"
    masked = img2img_server.post("/v1/generate", {"prompt": "x", "image": image, "mask": image})
    assert masked.status_code == 422 and "does not take a mask" in masked.json()["error"]["message"]
    broken = img2img_server.post("/v1/generate", {"prompt": "x", "image": base64.b64encode(b"nope").decode()})
    assert broken.status_code == 422 and "not a readable image" in broken.json()["error"]["message"]


def test_uploads_that_are_not_images_are_422_naming_the_part(img2img_server):
    bad_b64 = img2img_server.post("/v1/generate", {"prompt": "x", "image": "@@ not base64 @@"})
    assert bad_b64.status_code == 422 and bad_b64.json()["error"]["param"] == "image"
    assert "not valid base64" in bad_b64.json()["error"]["message"]
    text = img2img_server.post("/v1/images/edits", data={"prompt": "x"},
                               files={"image": ("notes.txt", b"just some text", "text/plain")})
    assert text.status_code == 422 and text.json()["error"]["param"] == "image", text.text
    assert "not a readable image" in text.json()["error"]["message"]
    mask = img2img_server.post("/v1/images/edits", data={"prompt": "x"},
                               files={"image": ("in.png", _png(), "image/png"), "mask": ("m.png", b"\x89PNG broken")})
    assert mask.status_code == 422 and mask.json()["error"]["param"] == "mask", mask.text
    no_image = img2img_server.post("/v1/images/edits", data={"prompt": "x"}, files={"other": ("a", b"b")})
    assert no_image.status_code == 422 and no_image.json()["error"]["param"] == "image", no_image.text
