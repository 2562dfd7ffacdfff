"""Iterative RLAIF-V on a micro policy: two rounds run, each samples with the policy the previous round trained,
every LoRA-adapted weight moves each round, a rerun resumes without redoing work; the policy labeler's P(yes)
is the softmax over its yes/no tokens; the shipped config runs through the CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import load_from_disk

from align.cli import main as cli
from align.config.loading import ConfigError
from align.config.recipes import DPORecipeConfig, RLAIFVConfig
from align.config.sections import DataConfig, EvalConfig, GenerationConfig, ModelConfig, OptimConfig, RunConfig
from align.core.data import user_prompt
from align.core.models import load_policy
from align.recipes.rlaif_v import main
from align.rollout.builds import build_rlaif_v_data
from align.rollout.labeler import PolicyLabeler
from data_builders.claims import CheckRequest, ToyWorldDivider
from data_builders.configs import RLAIFVDataConfig, RolloutSettings
from data_builders.endpoint import OpenAIExpertConfig
from data_builders.toyworld import SHORT_ANSWER_SUFFIX, image_to_png, render
from tests.conftest import SMALL_WORLD, assert_every_lora_weight_moved
from tests.openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[3]


def loop_config(tmp_path, policy: str, cache_dir, **kw) -> RLAIFVConfig:
    return RLAIFVConfig(
        output_dir=str(tmp_path / "rlaif_v"),
        policy=policy,
        rounds=2,
        eval_start=False,
        data=RLAIFVDataConfig(
            world=SMALL_WORLD,
            cache_dir=str(cache_dir),
            limit=8,
            rollout=RolloutSettings(max_new_tokens=16, batch_size=16, temperature=1.0, top_p=1.0),
            labeler="oracle",
        ),
        train=DPORecipeConfig(
            model=ModelConfig(name_or_path=policy, lora_r=4, lora_alpha=8, lora_vision=True, lora_projector=True),
            data=DataConfig(world=SMALL_WORLD, max_length=160, cache_dir=str(cache_dir)),
            optim=OptimConfig(lr=1e-2, warmup_steps=0, max_steps=2, batch_size=4),
            eval=EvalConfig(limit=2, pope=False, generation=GenerationConfig(max_new_tokens=8)),
            run=RunConfig(logging_steps=1, eval_at_end=True),
        ),
        **kw,
    )


def test_two_rounds_each_on_the_latest_policy_and_resume(micro_opa_data, tmp_path, cache_dir):
    policy, _ = micro_opa_data
    cfg = loop_config(tmp_path, policy, cache_dir)
    summary = main(cfg)
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert rounds[0]["start"] == policy and rounds[1]["start"] == rounds[0]["final"]
    assert summary["final"] == rounds[1]["final"]
    for r in rounds:
        assert r["data"]["round"] == r["round"] and r["data"]["policy"] == r["start"]
        assert r["data"]["pairs"]["kept"] > 0 and r["eval"]["meta"]["images"] == 2
        assert math.isfinite(r["train_loss"])
        assert_every_lora_weight_moved(r["start"], r["final"])
    samples = [(Path(cfg.output_dir) / f"round-{r}" / "data" / "samples.jsonl").read_text() for r in (0, 1)]
    assert samples[0] != samples[1]  # round 1 sampled anew, from its own policy
    assert "| round 1 |" in (Path(cfg.output_dir) / "rounds.md").read_text()

    train_summary = Path(cfg.output_dir) / "round-1" / "train" / "train_summary.json"
    stamp = train_summary.stat().st_mtime_ns
    again = main(cfg)  # everything done: nothing is sampled or trained again
    assert train_summary.stat().st_mtime_ns == stamp and again["final"] == summary["final"]
    with pytest.raises(ConfigError, match="rounds: 2 -> 3"):  # a changed loop is refused before any work
        main(dataclasses.replace(cfg, rounds=3))


def test_policy_labeler_is_the_softmax_over_yes_and_no(micro_opa_data):
    policy, _ = micro_opa_data
    model, processor = load_policy(policy)
    labeler = PolicyLabeler(model, processor, policy, batch_size=2)
    tok = processor.tokenizer
    assert labeler.yes == [tok.convert_tokens_to_ids("yes")] and labeler.no == [tok.convert_tokens_to_ids("no")]
    claims = ToyWorldDivider().divide("q", "there is a red cup at the top left. there is a dog at the center.")
    png = image_to_png(render([], np.random.default_rng(0), noise=0.0))
    requests = [CheckRequest(f"r#{i}", png, c) for i, c in enumerate(claims)]
    answers = labeler.p_yes(requests)
    assert len(answers) == len(claims) and all(0 < a < 1 for a in answers)
    # the first request alone, unpadded, by hand
    image = PIL.Image.open(io.BytesIO(png)).convert("RGB")
    text = user_prompt(processor, claims[0].question + SHORT_ANSWER_SUFFIX)
    enc = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits[0, -1].softmax(-1)
    y, n = probs[labeler.yes].sum(), probs[labeler.no].sum()
    assert abs(answers[0] - float(y / (y + n))) < 1e-5


def test_shipped_config_runs_through_the_cli(micro_opa_data, tmp_path, cache_dir):
    policy, _ = micro_opa_data
    out = tmp_path / "cli"
    cli(
        [
            "train",
            str(REPO / "configs" / "toy" / "rlaif_v.yaml"),
            f"output_dir={out}",
            f"policy={policy}",
            "rounds=1",
            "eval_start=false",
            f"data.world.seed={SMALL_WORLD.seed}",
            f"data.world.n_train={SMALL_WORLD.n_train}",
            f"data.world.n_val={SMALL_WORLD.n_val}",
            f"data.world.n_test={SMALL_WORLD.n_test}",
            f"data.cache_dir={cache_dir}",
            "data.limit=6",
            "data.rollout.max_new_tokens=12",
            "data.rollout.temperature=1.0",
            "train.optim.max_steps=1",
            "train.optim.warmup_steps=0",
            "train.optim.batch_size=2",
            "train.model.lora_r=2",
            "train.run.eval_at_end=false",
        ]
    )
    rounds = json.loads((out / "rounds.json").read_text())
    assert len(rounds["rounds"]) == 1 and Path(rounds["final"], "config.json").is_file()


def test_openai_divider_and_labeler_build_with_a_failing_check_retried(micro_opa_data, tmp_path, cache_dir):
    """`align build-data` wired to an OpenAI-compatible server (the local test server): the divider's claims are
    asked with the image, P(yes) comes from log-probs, checks that keep failing are counted and asked again on a
    rerun (the divider's replies come from its cache), and the pairs follow the labeler's verdicts."""
    policy, _ = micro_opa_data
    server = FakeOpenAIServer().start()
    failing = {"on": True}

    def reply(body):
        content = body["messages"][-1]["content"]
        if isinstance(content, str):  # the divider: a claim every answer passes, one that odd-length answers fail
            parity = "odd" if len(content.rsplit("Answer to split:\n", 1)[1]) % 2 else "even"
            claims = [{"claim": "x", "question": "Is it an image?"}, {"claim": parity, "question": f"Is it {parity}?"}]
            return ("json", {"claims": claims})
        question = next(part["text"] for part in content if part["type"] == "text")
        if "odd" in question and failing["on"]:
            return ("status", 500)
        p_yes = 0.2 if "odd" in question else 0.9
        return ("logprobs", [("Yes", math.log(p_yes)), ("no", math.log(1 - p_yes))])

    server.default = reply
    cfg = RLAIFVDataConfig(
        output_dir=str(tmp_path / "data"),
        policy=policy,
        world=SMALL_WORLD,
        cache_dir=str(cache_dir),
        limit=4,
        rollout=RolloutSettings(max_new_tokens=12, batch_size=16, temperature=1.0, top_p=1.0),
        divider="openai",
        labeler="openai",
        openai=OpenAIExpertConfig(base_url=server.base_url, model="test", api_key_env=None, max_retries=0),
        length_balance=False,
    )
    try:
        with pytest.raises(ValueError, match="no preference pair"):  # only even answers checked: all score 0
            build_rlaif_v_data(cfg)
        first = json.loads((tmp_path / "data" / "summary.json").read_text())
        odd = first["failed"]["labeler_failed"]
        samples = [json.loads(line) for line in (tmp_path / "data" / "samples.jsonl").read_text().splitlines()]
        odd_prompts = {s["id"].split("#")[0] for s in samples if len(s["response"]) % 2}
        assert 0 < odd < 16 and first["checked"] == 16 - odd
        assert first["failed"]["InternalServerError"] == len(odd_prompts)  # one question per prompt is asked
        images = [p for r in server.requests if isinstance(r["messages"][-1]["content"], list)
                  for p in r["messages"][-1]["content"] if p["type"] == "image_url"]  # fmt: skip
        assert images and all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in images)

        failing["on"], before = False, len(server.requests)
        summary = build_rlaif_v_data(cfg)
        rerun = server.requests[before:]
        assert all(isinstance(r["messages"][-1]["content"], list) for r in rerun)  # no divider call: cached
        assert summary["checked"] == 16 and summary["failed"] == {}
        rows = load_from_disk(summary["dataset"])
        assert len(rows) > 0
        assert all(len(r["chosen"]) % 2 == 0 and len(r["rejected"]) % 2 == 1 for r in rows)
    finally:
        server.stop()
