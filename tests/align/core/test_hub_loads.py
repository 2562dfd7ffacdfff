"""align/core/models.py's load paths fail in seconds, in one line naming the model, on a hub id that cannot be had
(data_builders/hub.py); nothing here reaches a hub."""

from __future__ import annotations

import json
import time

import pytest
from huggingface_hub import HfApi

from align.config.sections import ModelConfig
from align.core.models import build_model
from data_builders.hub import HubModelError

BOGUS = "no-such-org-xyz/no-such-model-xyz"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(HfApi, "model_info", lambda *a, **k: pytest.fail("the hub was asked"))


def test_a_hub_id_that_is_not_cached_fails_at_once(offline):
    t0 = time.monotonic()
    with pytest.raises(HubModelError) as e:
        build_model(ModelConfig(name_or_path=BOGUS))
    assert time.monotonic() - t0 < 5
    assert f"model {BOGUS!r}" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)


def test_a_lora_adapter_whose_base_is_not_cached(offline, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": BOGUS}))
    with pytest.raises(HubModelError, match=f"base model '{BOGUS}'.*HF_HUB_OFFLINE"):
        build_model(ModelConfig(name_or_path=str(adapter)))
