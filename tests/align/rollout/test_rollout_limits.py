"""The OPA data rollout with the real tiny policy (issue 16, items 5 and 7): a prompt longer than the policy takes and
a bad public row are skipped and counted in summary.json, never fatal; a torn rollouts.jsonl resumes to the file of
an uninterrupted build."""

from __future__ import annotations

import io
import json

import pytest
from datasets import Dataset, Features, Image, Value

from align.core.data import to_pil, user_prompt
from align.core.models import save_policy
from align.rollout.engine import HFRolloutEngine
from data_builders import opa_dpo
from data_builders.configs import OPADataConfig, RolloutSettings
from data_builders.experts import ExpertReport, SentenceEdit
from data_builders.opa_dpo import build
from tests.conftest import SMALL_WORLD


@pytest.fixture
def policy_dir(micro_model, tmp_path):
    model, processor = micro_model
    return str(save_policy(model, processor, tmp_path / "policy"))


class AcceptingExpert:
    """Keeps every rollout as it is: a one-sentence report that scores it correct."""

    expert_id = "accepting-v1"

    def correct(self, request):
        from data_builders.endpoint import Usage

        edit = SentenceEdit(request.response, 4, "correct", [], "a cup.", "ok")
        return ExpertReport([edit]), Usage()


def test_the_engine_measures_prompts_as_generate_feeds_them(policy_dir, small_world):
    settings = RolloutSettings(max_new_tokens=12)
    engine = HFRolloutEngine(policy_dir, settings)
    assert engine.max_prompt_tokens == engine.model.config.text_config.max_position_embeddings - 12
    assert HFRolloutEngine(policy_dir, RolloutSettings(max_prompt_tokens=50)).max_prompt_tokens == 50
    encoded = io.BytesIO()
    small_world["train"][0]["image"].save(encoded, format="PNG")
    for prompt in ("Describe the image.", "word " * 300):
        text = user_prompt(engine.processor, prompt)
        enc = engine.processor(images=[to_pil(encoded.getvalue(), "x")], text=[text], return_tensors="pt")
        assert engine.prompt_tokens(encoded.getvalue(), prompt) == enc["input_ids"].shape[1]


def test_too_long_prompts_and_bad_rows_are_skipped_and_counted(
    tmp_path, cache_dir, policy_dir, small_world, monkeypatch
):
    good = [small_world["train"][i]["image"] for i in range(3)]
    rows = [
        {"idx": f"ok-{i}", "image": image, "question": "Describe the image.", "chosen": "a cup."}
        for i, image in enumerate(good)
    ]
    rows += [
        {"idx": "long", "image": good[0], "question": "describe " * 25_000, "chosen": "a cup."},
        {"idx": "blank", "image": good[0], "question": " ", "chosen": "a cup."},
        {"idx": "broken", "image": {"bytes": b"\x89PNG torn", "path": None}, "question": "Describe.", "chosen": "x"},
    ]
    features = Features(
        {"idx": Value("string"), "image": Image(), "question": Value("string"), "chosen": Value("string")}
    )
    Dataset.from_list(rows, features=features).to_parquet(str(tmp_path / "rows.parquet"))
    monkeypatch.setattr(opa_dpo, "make_expert", lambda cfg: AcceptingExpert())
    cfg = OPADataConfig(
        output_dir=str(tmp_path / "opa"),
        policy=policy_dir,
        prompts=str(tmp_path / "rows.parquet"),
        expert="openai",
        rollout=RolloutSettings(max_new_tokens=8, batch_size=4),
    )
    summary = build(cfg, HFRolloutEngine(policy_dir, cfg.rollout))
    assert summary["rows_in"] == 6 and summary["rows_out"] + sum(summary["dropped"].values()) == 6
    assert {k: summary["dropped"][k] for k in ("prompt_too_long", "empty_question", "bad_image")} == {
        "prompt_too_long": 1,
        "empty_question": 1,
        "bad_image": 1,
    }
    examples = {e["reason"]: e["row"] for e in summary["skipped_examples"]}
    assert examples["prompt_too_long"] == "long" and "row 4 (blank)" in examples["empty_question"]
    assert json.loads((tmp_path / "opa" / "summary.json").read_text())["dropped"] == summary["dropped"]
    rollouts = [json.loads(line)["id"] for line in (tmp_path / "opa" / "rollouts.jsonl").read_text().splitlines()]
    assert rollouts == ["ok-0", "ok-1", "ok-2"]


def test_a_torn_rollouts_file_resumes_to_the_uninterrupted_one(tmp_path, cache_dir, policy_dir):
    def config(root) -> OPADataConfig:
        return OPADataConfig(
            output_dir=str(root / "opa"),
            policy=policy_dir,
            world=SMALL_WORLD,
            cache_dir=str(cache_dir),
            limit=10,
            rollout=RolloutSettings(max_new_tokens=12, batch_size=4),
        )

    engine = HFRolloutEngine(policy_dir, config(tmp_path).rollout)
    build(config(tmp_path / "whole"), engine)
    whole = (tmp_path / "whole" / "opa" / "rollouts.jsonl").read_bytes()
    lines = whole.splitlines(keepends=True)
    path = tmp_path / "opa" / "rollouts.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"".join(lines[:6]) + lines[6][:10])  # batch 1 half written, its 3rd row torn (power loss)
    summary = build(config(tmp_path), engine)
    assert path.read_bytes() == whole
    assert summary["rows_in"] == 10 and summary["rows_out"] + sum(summary["dropped"].values()) == 10
