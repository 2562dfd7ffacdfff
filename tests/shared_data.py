"""The public data some tests read from `../shared` beside the checkout (benchmark annotation files, NLTK's tagger
and WordNet): found, or the test is skipped on a developer's machine and fails under CI=true, where the folder is
always present, so that no check silently stops running there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def unavailable(reason: str):
    """Skip, or fail under CI=true: the data a test needs is not on this machine."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; under CI=true ../shared must be present beside the checkout")
    pytest.skip(reason)


def benchmarks_root() -> Path | None:
    """The public annotation files: $ALIGN_BENCHMARKS, else shared/benchmarks in or beside the checkout."""
    env = os.environ.get("ALIGN_BENCHMARKS")
    roots = [Path(env)] if env else [REPO / "shared" / "benchmarks", REPO.parent / "shared" / "benchmarks"]
    return next((r for r in roots if r.is_dir()), None)


def benchmark_dir(name: str, needs: str = "") -> Path:
    """shared/benchmarks/<name> (holding `needs`, when given), or skip / fail (see `unavailable`)."""
    root = benchmarks_root()
    path = None if root is None else root / name
    if path is None or not (path / needs).exists():
        unavailable(f"the {name} benchmark files are not on this machine (../shared/benchmarks/{name}/{needs})")
    return path


def require_nltk_data(tagger: bool = True) -> None:
    """NLTK's WordNet (and its perceptron tagger, when `tagger`) on NLTK's data path, as `make test` sets it."""
    from align.eval import tagging

    if not tagging.wordnet_installed() or (tagger and tagging.nltk_tagger() is None):
        unavailable(
            f"NLTK's data is not on NLTK's path (make test sets NLTK_DATA=../shared/nltk_data; {tagging.DOWNLOAD})"
        )
