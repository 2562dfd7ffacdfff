"""Cached eval results are tied to the checkpoint's weights (issue 17, item 3): re-saved weights are scored again,
unchanged ones reuse eval_results.json. The suite is replaced by a counter so only the cache logic runs."""

from __future__ import annotations

import json
import os

from align.config.sections import DataConfig, EvalConfig
from align.core.run_dir import weights_fingerprint
from align.eval import runner
from align.eval.runner import evaluate_checkpoint
from tests.conftest import SMALL_WORLD


def counting_suite(calls: list):
    def suite(model, processor, data_cfg, eval_cfg):
        calls.append(1)
        return {"toyworld_chair": {"chair_s": 0.1 * len(calls)}, "meta": {"images": 1}}, [{"id": "a", "text": "t"}]

    return suite


def save_weights(checkpoint, payload: bytes, bump_ns: int = 0) -> None:
    """Write the checkpoint's weight file (as a re-save would: new content or at least a new mtime)."""
    f = checkpoint / "model.safetensors"
    f.write_bytes(payload)
    if bump_ns:
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + bump_ns))


def test_re_saved_weights_are_scored_again_and_unchanged_ones_reused(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(runner.EVAL_SUITES, "toyworld", counting_suite(calls))
    checkpoint = tmp_path / "final"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    save_weights(checkpoint, b"weights-1")
    cfg, data = EvalConfig(limit=1), DataConfig(world=SMALL_WORLD)
    live = object()  # a model is given, so nothing is loaded from the fake checkpoint

    first = evaluate_checkpoint(checkpoint, cfg, model=_Model(), processor=live, data_cfg=data)
    assert calls == [1] and first["toyworld_chair"]["chair_s"] == 0.1
    stored = json.loads((checkpoint / "eval_results.json").read_text())
    assert stored["meta"]["benchmarks"]["toyworld"]["weights"] == weights_fingerprint(checkpoint)

    again = evaluate_checkpoint(checkpoint, cfg, model=_Model(), processor=live, data_cfg=data)
    assert calls == [1] and again["toyworld_chair"] == first["toyworld_chair"]  # same weights: reused

    save_weights(checkpoint, b"weights-1", bump_ns=10_000_000)  # re-saved, same size: the mtime tells
    rescored = evaluate_checkpoint(checkpoint, cfg, model=_Model(), processor=live, data_cfg=data)
    assert calls == [1, 1] and rescored["toyworld_chair"]["chair_s"] == 0.2
    save_weights(checkpoint, b"weights-two")  # other weights
    evaluate_checkpoint(checkpoint, cfg, model=_Model(), processor=live, data_cfg=data)
    assert len(calls) == 3


def test_the_fingerprint_covers_single_sharded_and_adapter_files_only(tmp_path):
    for name in ("model-00001-of-00002.safetensors", "adapter_model.safetensors", "optimizer.pt", "config.json"):
        (tmp_path / name).write_bytes(b"x" * 3)
    assert sorted(weights_fingerprint(tmp_path)) == ["adapter_model.safetensors", "model-00001-of-00002.safetensors"]
    assert all(size == 3 for size, _ in weights_fingerprint(tmp_path).values())


class _Model:
    """Just enough of a model for the runner's train/eval flag handling."""

    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        self.training = mode
        return self
