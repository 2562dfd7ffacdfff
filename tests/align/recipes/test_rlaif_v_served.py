"""Iterative RLAIF-V sampling from a served policy (the loopback OpenAI-compatible server standing in for vLLM):
round 0 samples the server's base, round 1 the adapter the loop pushed by path, which is round 0's LoRA over the
start policy and gives round 0's merged policy exactly; a rerun pushes the same name again (the server already
holds it) and asks for no sample twice."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from align.config.sections import ModelConfig
from align.core.models import load_policy
from align.recipes.rlaif_v import main
from data_builders import toyworld as tw
from data_builders.endpoint import ServedPolicyConfig
from tests.align.recipes.test_rlaif_v_loop import loop_config
from tests.openai_server import openai_server_fixture  # noqa: F401  (the fixture)


def caption(body: dict) -> tuple[str, str]:
    """A ToyWorld caption drawn from the request's seed: one to three objects, so the oracle scores differ."""
    seed = body["seed"]
    names = [tw.CLASSES[(seed * 7 + k * 3) % len(tw.CLASSES)] for k in range(1 + seed % 3)]
    return "text", " ".join(f"There is a {name} at the {tw.POSITIONS[seed % 9]}." for name in names)


def served_config(tmp_path, policy, cache_dir, server):
    cfg = loop_config(tmp_path, policy, cache_dir)
    served = ServedPolicyConfig(base_url=server.base_url, model="policy", max_retries=0)
    train = dataclasses.replace(cfg.train, run=dataclasses.replace(cfg.train.run, eval_at_end=False))
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, served=served), train=train)


def logits(path, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    model, _ = load_policy(path)
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels).logits


def test_rounds_sample_the_pushed_adapter_of_the_previous_rounds(micro_opa_data, tmp_path, cache_dir, openai_server):
    openai_server.default = caption
    policy, _ = micro_opa_data
    cfg = served_config(tmp_path, policy, cache_dir, openai_server)
    summary = main(cfg)
    out = Path(cfg.output_dir)
    assert [r["data"]["pairs"]["kept"] > 0 for r in summary["rounds"]] == [True, True]

    [pushed] = openai_server.adapter_requests
    name, folder = pushed["lora_name"], Path(pushed["lora_path"])
    assert name.startswith("rlaif_v-round1-") and folder == (out / "round-1" / "served_adapter").resolve()
    per_round = 8 * 4  # 8 prompts x 4 samples in each round, one request each
    assert len(openai_server.requests) == 2 * per_round
    assert {r["model"] for r in openai_server.requests[:per_round]} == {"policy"}
    assert {r["model"] for r in openai_server.requests[per_round:]} == {name}
    assert (out / "round-0" / "train" / "adapter" / "adapter_config.json").is_file()

    # what the server was told to sample in round 1 is round 0's trained policy
    model, _ = load_policy(folder)
    g = torch.Generator().manual_seed(0)
    n = model.config.image_seq_length
    ids = torch.randint(5, 40, (2, n + 6), generator=g)
    ids[:, :n] = model.config.image_token_id
    pixels = torch.rand(2, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    torch.testing.assert_close(
        logits(folder, ids, pixels), logits(summary["rounds"][0]["final"], ids, pixels), rtol=1e-4, atol=1e-5
    )
    assert not torch.allclose(logits(policy, ids, pixels), logits(folder, ids, pixels), atol=1e-4)

    # killed before round 1's dataset was written: the rerun pushes the same adapter (the server has it) and reads
    # every reply from the round's cache
    asked = len(openai_server.requests)
    for name_ in ("dataset", "summary.json"):
        path = out / "round-1" / "data" / name_
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    shutil.rmtree(out / "round-1" / "train")
    again = main(cfg)
    assert len(openai_server.requests) == asked
    assert [r["lora_name"] for r in openai_server.adapter_requests] == [name, name]
    assert again["rounds"][1]["data"]["pairs"] == summary["rounds"][1]["data"]["pairs"]


def test_a_full_fine_tune_cannot_be_served_round_after_round(micro_opa_data, tmp_path, cache_dir, openai_server):
    cfg = served_config(tmp_path, micro_opa_data[0], cache_dir, openai_server)
    full = dataclasses.replace(cfg.train, model=ModelConfig(name_or_path=micro_opa_data[0], finetune="full"))
    with pytest.raises(ValueError, match="finetune: lora"):
        dataclasses.replace(cfg, train=full)
