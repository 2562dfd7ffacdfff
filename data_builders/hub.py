"""Check a model name before `from_pretrained`, so an offline machine or a wrong hub id fails in seconds with one
line instead of a minute of retries and an `OSError` traceback.

    check_pretrained("llava-hf/llava-1.5-7b-hf", "tokenizer")   # a local dir or a cached id: returns at once
    with hub_errors("llava-hf/llava-1.5-7b-hf", "tokenizer"):
        tok = AutoTokenizer.from_pretrained("llava-hf/llava-1.5-7b-hf")

Why it is slow without this: when the first HEAD request of a file fails with a network error and the file is not
cached, huggingface_hub retries it with backoff (1+2+4+8+8 s, `file_download._get_metadata_or_catch_error(...,
retry_on_errors=True)`), once per file transformers asks for: ~49 s for one tokenizer in a sandbox without DNS.
Here a name that is not a local directory is looked up in the hub cache (no network); with HF_HUB_OFFLINE=1 a
miss is an error at once, otherwise one `model_info` request without retries decides. Used by every load site
(align/core/models.py, data_builders/rlhf_v.py); huggingface_hub is imported only when a hub id is checked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

HINT = "set HF_HUB_OFFLINE=1 to use the local cache only, or pass a local directory"
TIMEOUT_S = 10.0  # the one metadata request (connect + read)


class HubModelError(FileNotFoundError):
    """A model, processor or tokenizer name is neither a local directory nor loadable from the hub or its cache.
    A FileNotFoundError, so the CLI prints it as one `error: ...` line (exit 2)."""


def offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as huggingface_hub reads them, but read now, not at its import."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def is_cached(repo_id: str, cache_dir: str | Path | None = None) -> bool:
    """Whether the hub cache holds a snapshot of `repo_id` (any revision, any file): no network."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = Path(cache_dir or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)
    snapshots = root / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(any(s.iterdir()) for s in snapshots.iterdir() if s.is_dir())


def check_pretrained(name: str, what: str = "model", cache_dir: str | Path | None = None) -> None:
    """Return when `name` is a local directory or a hub id that `from_pretrained` can load soon; else raise
    HubModelError naming `what`, `name`, what was tried and how to fix it."""
    if Path(name).expanduser().exists():  # a local directory (or file): from_pretrained reads it, no hub
        return
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise HubModelError(f"{what} {name!r}: no such local directory, and not a valid hub id") from None
    if is_cached(name, cache_dir):
        return
    if offline():
        raise HubModelError(
            f"{what} {name!r} is not a local directory and not in the hub cache, and HF_HUB_OFFLINE=1 forbids "
            f"downloading it: pass a local directory, or download it once with network (`hf download {name}`)"
        )
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(name, timeout=TIMEOUT_S)
    except GatedRepoError:
        raise HubModelError(
            f"{what} {name!r} is gated on the hub: accept its terms on huggingface.co and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise HubModelError(
            f"{what} {name!r}: no such local directory, and no such model on the hub (or it is private: log in "
            "with `hf auth login`)"
        ) from None
    except HfHubHTTPError:
        return  # the hub answered (429, 5xx): from_pretrained's own retries may get through
    except Exception as e:  # DNS, connection refused, timeout, proxy: the hub cannot be reached
        raise HubModelError(
            f"{what} {name!r} is not a local directory and not in the hub cache, and the hub cannot be reached "
            f"({type(e).__name__}: {_first_line(e)}): {HINT}"
        ) from None


@contextlib.contextmanager
def hub_errors(name: str, what: str = "model"):
    """Turn a loader's OSError (transformers' "couldn't connect", "does not appear to have a file named ...") into
    one HubModelError line that names `what` and `name`."""
    try:
        yield
    except HubModelError:
        raise
    except OSError as e:
        hint = "" if Path(name).expanduser().is_dir() else f" ({HINT})"
        raise HubModelError(f"could not load {what} {name!r}: {_first_line(e)}{hint}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0].rstrip(".")
