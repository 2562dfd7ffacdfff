"""data_builders/hub.py: a model name that cannot be loaded fails in seconds with one line, never reaching a hub."""

from __future__ import annotations

import time

import httpx2
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError

from data_builders.hub import HINT, HubModelError, check_pretrained, hub_errors, is_cached

BOGUS = "no-such-org-xyz/no-such-model-xyz"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def no_network(*args, **kwargs):
    raise AssertionError("the hub was asked")


def test_a_local_directory_is_used_as_is(tmp_path, monkeypatch):
    monkeypatch.setattr(HfApi, "model_info", no_network)
    check_pretrained(str(tmp_path), "model")


def test_offline_and_not_cached_fails_at_once_naming_the_model(empty_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(HfApi, "model_info", no_network)
    t0 = time.monotonic()
    with pytest.raises(HubModelError) as e:
        check_pretrained(BOGUS, "tokenizer")
    assert time.monotonic() - t0 < 2
    message = str(e.value)
    assert BOGUS in message and "HF_HUB_OFFLINE=1" in message and "tokenizer" in message
    assert "\n" not in message
    assert isinstance(e.value, FileNotFoundError)  # the CLI prints it as `error: ...`, exit 2


def test_a_cached_model_needs_no_network(empty_cache, monkeypatch):
    snapshot = empty_cache / "models--some-org--some-model" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(HfApi, "model_info", no_network)
    assert is_cached("some-org/some-model")
    check_pretrained("some-org/some-model")
    assert not is_cached(BOGUS)


def test_an_unreachable_hub_is_one_request_and_one_line(empty_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def unreachable(self, repo_id, **kwargs):
        calls.append(kwargs.get("timeout"))
        raise httpx2.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "model_info", unreachable)
    with pytest.raises(HubModelError) as e:
        check_pretrained(BOGUS, "model")
    assert len(calls) == 1 and calls[0] is not None and calls[0] <= 30  # no retries, a short timeout
    assert BOGUS in str(e.value) and HINT in str(e.value) and "ConnectError" in str(e.value)


def test_a_name_the_hub_does_not_know(empty_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def not_found(self, repo_id, **kwargs):
        request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}")
        raise RepositoryNotFoundError("404", response=httpx2.Response(404, request=request))

    monkeypatch.setattr(HfApi, "model_info", not_found)
    with pytest.raises(HubModelError, match="no such model on the hub"):
        check_pretrained(BOGUS)


def test_an_invalid_name_is_not_looked_up(empty_cache, monkeypatch):
    monkeypatch.setattr(HfApi, "model_info", no_network)
    with pytest.raises(HubModelError, match="not a valid hub id"):
        check_pretrained("not a/valid id")


def test_a_loader_oserror_becomes_one_line():
    with pytest.raises(HubModelError) as e:
        with hub_errors(BOGUS, "processor"):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection")
    first = "We couldn't connect to 'https://huggingface.co' to load the files"
    assert str(e.value) == f"could not load processor {BOGUS!r}: {first} ({HINT})"
