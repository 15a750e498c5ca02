"""The model-fetch init container: configuration errors are final (exit 2) and named; a cache
that already holds the pinned revision is reused without any download."""

from __future__ import annotations

import json

import pytest

from diffusion_sampler import fetch

pytestmark = pytest.mark.unit


def test_unknown_scheme_is_a_config_error(tmp_path, capsys):
    assert fetch.main({"MODEL_SOURCE": "pvc://models/x", "MODEL_DEST": str(tmp_path)}) == 2
    assert "only hf:// and s3://" in capsys.readouterr().err


def test_hf_requires_pinned_revision(tmp_path, capsys):
    assert fetch.main({"MODEL_SOURCE": "hf://org/model", "MODEL_DEST": str(tmp_path)}) == 2
    assert "MODEL_REVISION" in capsys.readouterr().err


def test_missing_dest(capsys):
    assert fetch.main({"MODEL_SOURCE": "hf://org/model", "MODEL_REVISION": "abc"}) == 2
    assert "MODEL_DEST" in capsys.readouterr().err


def test_cached_revision_is_reused(tmp_path, capsys):
    (tmp_path / fetch.MARKER).write_text(json.dumps({"source": "hf://org/model", "revision": "abc"}))
    assert fetch.main({"MODEL_SOURCE": "hf://org/model", "MODEL_REVISION": "abc", "MODEL_DEST": str(tmp_path)}) == 0
    assert "already in cache" in capsys.readouterr().out


def test_other_revision_in_cache_is_not_reused(tmp_path):
    (tmp_path / fetch.MARKER).write_text(json.dumps({"source": "hf://org/model", "revision": "old"}))
    assert not fetch.already_fetched(tmp_path, "hf://org/model", "new")
