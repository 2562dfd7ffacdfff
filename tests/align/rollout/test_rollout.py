"""OPA-DPO data build end to end: a real tiny policy loaded from disk samples, the oracle corrects, the dataset is
saved; a build killed mid-rollout resumes without regenerating finished batches; `align build-data` runs it."""

from __future__ import annotations

import json

import pytest

from align.cli import main as cli_main
from align.core.models import save_policy
from align.rollout.engine import HFRolloutEngine
from data_builders.configs import OPADataConfig, RolloutSettings
from data_builders.io import load_opa_dataset
from data_builders.opa_dpo import build
from tests.conftest import SMALL_WORLD
from tests.openai_server import openai_server_fixture  # noqa: F401  (provides the openai_server fixture)


@pytest.fixture
def policy_dir(micro_model, tmp_path):
    model, processor = micro_model
    return str(save_policy(model, processor, tmp_path / "policy"))


def opa_config(tmp_path, cache_dir, policy_dir, **kw) -> OPADataConfig:
    return OPADataConfig(
        output_dir=str(tmp_path / "opa"),
        policy=policy_dir,
        world=SMALL_WORLD,
        cache_dir=str(cache_dir),
        limit=10,
        rollout=RolloutSettings(max_new_tokens=12, batch_size=4),
        **kw,
    )


class KilledAfter:
    """Wraps the real engine and raises after `n` batches, as a killed process would stop."""

    def __init__(self, engine, n: int):
        self.engine, self.n, self.name, self.calls = engine, n, engine.name, []

    def generate(self, images, prompts, seed):
        if len(self.calls) == self.n:
            raise KeyboardInterrupt
        self.calls.append(len(prompts))
        return self.engine.generate(images, prompts, seed)


def test_build_resumes_after_a_kill_and_writes_records(tmp_path, cache_dir, policy_dir):
    cfg = opa_config(tmp_path, cache_dir, policy_dir)
    engine = HFRolloutEngine(policy_dir, cfg.rollout)
    with pytest.raises(KeyboardInterrupt):
        build(cfg, KilledAfter(engine, 2))
    lines = (tmp_path / "opa" / "rollouts.jsonl").read_text().splitlines()
    assert len(lines) == 8  # the two finished batches were kept

    resumed = KilledAfter(engine, 99)
    summary = build(cfg, resumed)
    assert resumed.calls == [2]  # only the 2 prompts left were sampled
    assert summary["rows_in"] == 10 and summary["rows_out"] + sum(summary["dropped"].values()) == 10
    data = load_opa_dataset(summary["dataset"])
    assert len(data) == summary["rows_out"]
    for row in data:
        report = json.loads(row["report"])
        assert row["rollout"] and row["revision"] and row["reference"]
        assert [s["copied"] for s in report["sentences"]]  # sentence-level report kept for the loss weights
        assert json.loads(row["meta"])["expert"] == "oracle-toyworld-v1"

    again = KilledAfter(engine, 99)
    assert build(cfg, again)["expert"]["cached"] == 10 and again.calls == []  # a rerun is free

    whole = opa_config(tmp_path / "whole", cache_dir, policy_dir)  # the same build, never interrupted
    build(whole, KilledAfter(engine, 99))
    assert (tmp_path / "whole" / "opa" / "rollouts.jsonl").read_text().splitlines() == (
        tmp_path / "opa" / "rollouts.jsonl"
    ).read_text().splitlines()  # a resumed rollout samples exactly what an uninterrupted one does


def test_sampling_is_reproducible_per_batch(policy_dir, small_world):
    engine = HFRolloutEngine(policy_dir, RolloutSettings(max_new_tokens=12))
    images = [small_world["train"][i]["image"] for i in range(3)]
    prompts = ["Describe the image in detail."] * 3
    assert engine.generate(images, prompts, seed=5) == engine.generate(images, prompts, seed=5)


def test_cli_build_data_runs_the_opa_recipe(tmp_path, cache_dir, policy_dir, capsys):
    config = tmp_path / "opa.yaml"
    config.write_text(
        "# align build-data opa.yaml\nrecipe: opa_dpo_data\n"
        f"output_dir: {tmp_path / 'cli'}\npolicy: {policy_dir}\ncache_dir: {cache_dir}\nlimit: 4\n"
        "world: {seed: 7, n_train: 64, n_val: 4, n_test: 12}\nrollout: {max_new_tokens: 8}\n"
    )
    assert cli_main(["build-data", str(config)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_in"] == 4


def test_missing_api_key_fails_before_any_rollout(tmp_path, cache_dir, policy_dir, monkeypatch):
    monkeypatch.delenv("ALIGN_TEST_MISSING_KEY", raising=False)
    cfg = opa_config(tmp_path, cache_dir, policy_dir, expert="openai")
    cfg.openai.api_key_env = "ALIGN_TEST_MISSING_KEY"
    engine = KilledAfter(HFRolloutEngine(policy_dir, cfg.rollout), 99)
    with pytest.raises(ValueError, match="ALIGN_TEST_MISSING_KEY"):
        build(cfg, engine)
    assert engine.calls == []


def test_public_prompts_with_an_openai_compatible_expert(tmp_path, cache_dir, policy_dir, small_world, openai_server):
    """RLAIF-V-style rows → rollouts by the real tiny policy → corrections from a local OpenAI-compatible server."""
    from datasets import Dataset

    rows = [
        {
            "idx": f"pub-{i}",
            "image": small_world["train"][i]["image"],
            "question": "Describe the image.",
            "chosen": small_world["train"][i]["caption"],
            "rejected": "a kite.",
        }
        for i in range(3)
    ]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "rlaifv.parquet"))

    edit = {"copied": "x", "score": 4, "error_type": "correct", "objects": [], "rewritten": "a cup.", "reason": "ok"}
    openai_server.default = ("json", {"sentences": [edit], "added": "", "added_reason": ""})  # every request
    cfg = opa_config(tmp_path, cache_dir, policy_dir, prompts=str(tmp_path / "rlaifv.parquet"), expert="openai")
    cfg.openai.base_url, cfg.openai.api_key_env, cfg.openai.max_retries = openai_server.base_url, None, 0
    summary = build(cfg, HFRolloutEngine(policy_dir, cfg.rollout))
    assert summary["rows_in"] == 3 and summary["expert"]["ok"] == 3 and summary["expert"]["prompt_tokens"] == 300
    data = load_opa_dataset(summary["dataset"])
    assert sorted(data["id"]) == ["pub-0", "pub-1", "pub-2"] and set(data["offpolicy"]) == {"a kite."}
    assert json.loads(data[0]["meta"])["dataset"].endswith("rlaifv.parquet")


def test_a_build_where_every_row_fails_says_so_and_keeps_its_work(tmp_path, cache_dir, policy_dir, openai_server):
    openai_server.default = ("status", 500)  # the endpoint is down for the whole build
    cfg = opa_config(tmp_path, cache_dir, policy_dir, expert="openai")
    cfg.openai.base_url, cfg.openai.api_key_env, cfg.openai.max_retries = openai_server.base_url, None, 0
    with pytest.raises(ValueError, match=r"no rows left of 10 \(dropped: \{'expert_failed': 10\}\)"):
        build(cfg, HFRolloutEngine(policy_dir, cfg.rollout))
    summary = json.loads((tmp_path / "opa" / "summary.json").read_text())
    assert summary["rows_out"] == 0 and summary["expert"]["failures"] == {"InternalServerError": 10}
    assert len((tmp_path / "opa" / "rollouts.jsonl").read_text().splitlines()) == 10  # sampling is not lost
    assert not (tmp_path / "opa" / "dataset").exists()


def test_sample_says_which_replies_were_cut_at_max_new_tokens(policy_dir, small_world):
    images = [small_world["train"][i]["image"] for i in range(4)]
    prompts = ["Describe the image in detail."] * 4
    short = HFRolloutEngine(policy_dir, RolloutSettings(max_new_tokens=1)).sample(images, prompts, seed=5)
    assert any(text for text, _ in short)
    assert all(not finished for text, finished in short if text)  # one token that is not the end token: cut
    engine = HFRolloutEngine(policy_dir, RolloutSettings(max_new_tokens=40))
    replies = engine.sample(images, prompts, seed=5)
    assert [text for text, _ in replies] == engine.generate(images, prompts, seed=5)
    for text, finished in replies:
        n = len(engine.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert finished or n >= 39  # a reply without its end token used up its tokens
