"""PPO sampling from a served policy (`served`; the loopback OpenAI-compatible server stands in for vLLM): every
step saves its LoRA and loads it into the server by path under a name of its content (the step before's name is
unloaded), the step's captions are asked of that name, and the run trains on them; a run stopped after a checkpoint
resumes without asking the server for a caption twice."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from align.recipes import ppo
from data_builders.endpoint import ServedPolicyConfig
from tests.align.recipes.test_ppo import _cfg
from tests.align.recipes.test_rlaif_v_served import caption
from tests.openai_server import openai_server_fixture  # noqa: F401  (the fixture)


def test_each_step_samples_its_own_lora_from_the_server(micro_opa_data, cache_dir, tmp_path, openai_server):
    openai_server.default = caption
    policy, _ = micro_opa_data
    served = ServedPolicyConfig(base_url=openai_server.base_url, model="policy", max_retries=0)
    cfg = _cfg(policy, None, cache_dir, tmp_path / "ppo", steps=2, reward="oracle", served=served)
    summary = ppo.main(cfg)

    loads = openai_server.adapter_requests
    assert [Path(r["lora_path"]).name for r in loads] == ["step-0", "step-1"]
    assert loads[0]["lora_name"] != loads[1]["lora_name"] and all(r["lora_name"].startswith("ppo-") for r in loads)
    asked = [r["model"] for r in openai_server.requests]
    assert asked == [loads[0]["lora_name"]] * 4 + [loads[1]["lora_name"]] * 4  # rollout_batch_size per step
    assert sorted(p.name for p in (tmp_path / "ppo" / ppo.SERVED_DIR).iterdir()) == ["step-1"]
    assert openai_server.adapter_unloads == [loads[0]["lora_name"]]  # step 0's, once step 1's was loaded

    # step 1's served adapter is the LoRA the run held after step 1 (its checkpoint)
    served_lora = load_file(str(Path(loads[1]["lora_path"]) / "adapter_model.safetensors"))
    trained = load_file(str(tmp_path / "ppo" / "checkpoint-1" / ppo.POLICY_FILE))
    assert {k.replace(".default", "") for k in trained} == set(served_lora)
    for key, value in trained.items():
        assert torch.equal(served_lora[key.replace(".default", "")], value), key
    assert all(torch.isfinite(torch.tensor(h["reward/score"])) for h in summary["log_history"])
    assert all(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)  # trained on the served captions

    # stopped after checkpoint-1: the resumed step 2 loads the same adapter again and reads its captions from cache
    for name in ("checkpoint-2", "final", "train_summary.json"):
        path = tmp_path / "ppo" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    ppo.main(cfg)
    assert len(openai_server.requests) == 8 and openai_server.adapter_requests[-1] == loads[1]
