"""HallE-Switch (align/recipes/halle_switch.py) on a micro policy: the controller trains W alone and saves only W
beside the name of its base, a stopped run resumes to the weights of an uninterrupted one, the final model is
scored at each switch value, and the control-token and indication variants train and reload their new tokens."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from align.cli import main
from align.config.sections import EvalConfig, GenerationConfig, ModelConfig, OptimConfig
from align.config.switch import HalleSwitchConfig, SwitchDataConfig
from align.core.models import load_policy
from align.core.run_dir import SUMMARY_FILE
from align.core.switch import SWITCH_CONFIG, SWITCH_FILE, ControlTokens, HalleSwitch, find_switch, switch_value
from align.eval.runner import evaluate_checkpoint, resolve_checkpoints
from align.recipes import halle_switch
from tests.conftest import SMALL_WORLD, split_run


def _cfg(policy, cache_dir, out, steps=4, **kw) -> HalleSwitchConfig:
    run, kw = split_run(out, kw, logging_steps=1, save_steps=2, report_to="none", eval_at_end=False)
    return HalleSwitchConfig(
        run=run,
        model=ModelConfig(name_or_path=policy, lora_r=4, lora_alpha=8, lora_dropout=0.0),
        data=SwitchDataConfig(world=SMALL_WORLD, cache_dir=str(cache_dir)),
        optim=OptimConfig(lr=1e-2, warmup_steps=0, max_steps=steps, batch_size=4),
        eval=EvalConfig(limit=4, pope=False, generation=GenerationConfig(max_new_tokens=8, batch_size=4)),
        **kw,
    )


def test_controller_trains_w_alone_and_saves_only_what_it_trained(micro_opa_data, cache_dir, tmp_path):
    policy, _ = micro_opa_data
    cfg = _cfg(policy, cache_dir, tmp_path / "run", eval_at_end=True, sweep=[-1.0, 0.0, 1.0])
    cfg.eval = dataclasses.replace(cfg.eval, at_checkpoints=True)
    summary = halle_switch.main(cfg)
    step = json.loads((tmp_path / "run" / "eval" / "step-2.json").read_text())  # the callback scored W-only ckpts
    assert step["results"]["meta"]["eval_settings"]["switch"] == -1.0  # at 0 it would score the base every time
    final = tmp_path / "run" / "final"
    assert json.loads((final / SWITCH_CONFIG).read_text())["base_model"] == policy
    assert not list(final.glob("model*.safetensors")) and not (final / "adapter_config.json").exists()
    weight = load_file(str(final / SWITCH_FILE))["weight"]
    assert weight.abs().sum() > 0  # W moved off its zero start
    assert summary["trainable_parameters"] == weight.numel()
    # the base is untouched: the loaded model at ε = 0 is the policy itself
    loaded, processor = load_policy(final, device="cpu")
    base, _ = load_policy(policy, device="cpu")
    assert torch.equal(find_switch(loaded).weight, weight)
    base_params = {n: p for n, p in loaded.named_parameters() if "halle_switch" not in n}
    assert all(torch.equal(p, dict(base.named_parameters())[n]) for n, p in base_params.items())
    sweep = json.loads((tmp_path / "run" / "switch_sweep.json").read_text())["rows"]
    assert [r["switch"] for r in sweep] == [-1.0, 0.0, 1.0]
    assert all(0.0 <= r["chair_i"] <= 1.0 for r in sweep) and (tmp_path / "run" / "switch_sweep.png").is_file()
    results = evaluate_checkpoint(final, EvalConfig(limit=2, pope=False, switch=0.5))
    assert results["meta"]["eval_settings"]["switch"] == 0.5 and "toyworld_chair" in results
    # the command line: a run directory's checkpoints (W alone: no config.json) and final, at one ε
    out = tmp_path / "eval.json"
    assert main(["eval", str(final), "--switch", "-1", "--limit", "2", "--no-pope", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["meta"]["eval_settings"]["switch"] == -1.0
    assert [p.name for p in resolve_checkpoints(tmp_path / "run")] == ["checkpoint-2", "checkpoint-4", "final"]


def test_a_stopped_run_resumes_to_the_uninterrupted_weights(micro_opa_data, cache_dir, tmp_path, capsys):
    policy, _ = micro_opa_data
    out = tmp_path / "run"
    halle_switch.main(_cfg(policy, cache_dir, out, lora=True))
    whole = load_file(str(out / "final" / SWITCH_FILE))["weight"]
    whole_adapter = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert (out / "checkpoint-2" / SWITCH_FILE).is_file() and not list((out / "checkpoint-2").glob("model*"))
    for stale in ("final", "checkpoint-4"):  # as if killed after checkpoint-2
        shutil.rmtree(out / stale)
    (out / SUMMARY_FILE).unlink()
    resumed = halle_switch.main(_cfg(policy, cache_dir, out, lora=True))
    assert "train_loss_resumed_steps" in resumed["train"]  # it went on from checkpoint-2, W and adapter loaded
    assert torch.equal(load_file(str(out / "final" / SWITCH_FILE))["weight"], whole)
    resumed_adapter = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert all(torch.equal(resumed_adapter[k], v) for k, v in whole_adapter.items())
    capsys.readouterr()
    assert halle_switch.main(_cfg(policy, cache_dir, out, lora=True))["train"] == resumed["train"]
    assert "already finished" in capsys.readouterr().out  # a rerun of a finished run trains nothing


def test_control_tokens_train_their_rows_and_reload_with_them(micro_opa_data, cache_dir, tmp_path):
    policy, _ = micro_opa_data
    halle_switch.main(_cfg(policy, cache_dir, tmp_path / "run", steps=2, variant="control_tokens"))
    final = tmp_path / "run" / "final"
    model, processor = load_policy(final, device="cpu")
    switch = find_switch(model)
    assert isinstance(switch, ControlTokens)
    ids = processor.tokenizer.convert_tokens_to_ids(["<grounded>", "<imagine>"])
    base, base_processor = load_policy(policy, device="cpu")
    assert model.get_input_embeddings().num_embeddings == len(base_processor.tokenizer) + 2 == max(ids) + 1
    with switch_value(model, -1.0):
        assert switch.prompt("Describe.") == "<grounded> Describe."
    rows = halle_switch.encoded_rows(
        _cfg(policy, cache_dir, tmp_path / "x", variant="control_tokens"),
        [{"id": "a", "image": _png(), "prompt": "Describe.", "response": "A cup.", "epsilon": 1.0}],
        model,
        processor,
    )[0]
    assert ids[1] in rows[0]["input_ids"] and rows[0]["epsilon"] == 1.0


def test_indication_adds_brackets_and_scores_marked_objects(micro_opa_data, cache_dir, tmp_path):
    policy, _ = micro_opa_data
    summary = halle_switch.main(
        _cfg(policy, cache_dir, tmp_path / "run", steps=2, variant="indication", lora=True, eval_at_end=True)
    )
    model, processor = load_policy(tmp_path / "run" / "final", device="cpu")
    assert find_switch(model) is None
    tokens = processor.tokenizer.tokenize("a [spoon] .")
    assert tokens[1] == "[" and tokens[3] == "]"
    assert [r["switch"] for r in summary["sweep"]] == [None]
    assert summary["sweep"][0]["chair_i_marked"] <= summary["sweep"][0]["chair_i"]


def test_config_checks():
    with pytest.raises(ValueError, match="lora: the indication variant"):
        HalleSwitchConfig(variant="indication")
    with pytest.raises(ValueError, match="sweep"):
        HalleSwitchConfig(sweep=[-2.0])
    with pytest.raises(ValueError, match="objects"):
        SwitchDataConfig(source="annotations", path="x.json")
    with pytest.raises(ValueError, match="switch must be in"):
        EvalConfig(switch=1.5)
    assert isinstance(HalleSwitch(4), torch.nn.Module)


def _png():
    from PIL import Image

    return Image.new("RGB", (48, 48), (90, 40, 40))


def test_trains_on_halle_hall_factor_file_and_counts_bad_items(micro_opa_data, cache_dir, tmp_path, capsys):
    """HallE's own detail_switch_23k.json format: LLaVA-format items with hall_factor, read as is."""
    policy, _ = micro_opa_data
    _png().save(tmp_path / "a.png")
    turns = lambda text: [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": text}]  # noqa: E731
    items = [
        {"id": "1", "image": "a.png", "conversations": turns("A red cup."), "hall_factor": -1},
        {"id": "2", "image": "a.png", "conversations": turns("A red cup and a spoon."), "hall_factor": "1"},
        {"id": "3", "image": "a.png", "conversations": turns("A cup."), "hall_factor": 0.5},
        {"id": "4", "image": "gone.png", "conversations": turns("A cup."), "hall_factor": 1},
    ]
    (tmp_path / "switch.json").write_text(json.dumps(items))
    cfg = _cfg(policy, cache_dir, tmp_path / "run", steps=2)
    cfg.data = SwitchDataConfig(source="hall_factor", path=str(tmp_path / "switch.json"), cache_dir=str(cache_dir))
    summary = halle_switch.main(cfg)
    skipped = {reason: n for reason, n in summary["data"]["skipped"].items() if n}
    assert summary["data"]["rows"] == 2 and skipped == {"bad_hall_factor": 1, "bad_image": 1}
    assert "2/4 items kept" in capsys.readouterr().out
    assert load_file(str(tmp_path / "run" / "final" / SWITCH_FILE))["weight"].abs().sum() > 0
