"""DPO / DDPO recipe on a micro policy, and the equal-data RLHF-V pairs built from OPA-DPO records: chosen = revision,
rejected = rollout with valid spans; every LoRA weight trains; the first loss is log 2; DDPO with gamma 1 is DPO;
DDPO weights land on the corrected tokens; unusable pairs are counted, not fatal; the shipped configs run."""

from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import PIL.Image
import pytest
from datasets import Dataset, Image, load_from_disk

from align.cli import main as cli
from align.config.recipes import DPORecipeConfig
from align.config.sections import DataConfig, EvalConfig, GenerationConfig, ModelConfig, OptimConfig
from align.core.data import image_seq_length
from align.core.models import build_tiny_tokenizer, load_policy
from align.core.preference import build_dpo_trainer, encode_pair, encode_pairs
from align.recipes.dpo import main
from data_builders.experts import ExpertReport
from data_builders.rlhf_v import (
    PreferenceDataConfig,
    build_preference_data,
    preferences_from_opa,
    report_char_spans,
)
from data_builders.schema import OPA_FEATURES, PREFERENCE_FEATURES
from data_builders.spans import validate_spans
from tests.conftest import (
    SMALL_WORLD,
    assert_every_lora_weight_moved,
    assert_full_finetune_moves_every_weight,
    sample_report,
    split_run,
)

REPO = Path(__file__).resolve().parents[3]
G = 5.0
LOG2 = math.log(2)


def _png() -> bytes:
    buf = io.BytesIO()
    PIL.Image.new("RGB", (48, 48), "red").save(buf, format="PNG")
    return buf.getvalue()


def _unchanged_report() -> dict:
    report = sample_report()
    report["sentences"] = report["sentences"][:1]  # the correct sentence alone, copied as is
    report["added"] = ""
    return report


def _opa_row(row_id: str, report, png: bytes) -> dict:
    text = json.dumps(report) if isinstance(report, dict) else report
    return {
        "id": row_id,
        "image": {"bytes": png, "path": None},
        "prompt": "describe the image.",
        "reference": "there is a red cup at the top left.",
        "rollout": "",
        "revision": "",
        "report": text,
        "offpolicy": "",
        "source": "test",
        "meta": json.dumps({"dataset": "test"}),
    }


# ---------------------------------------------------------------- fixtures: a micro policy, OPA data, pairs


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory, micro_opa_data):
    """(policy, OPA dataset, preference dataset for training: the built pairs plus a duplicate and an empty pair)."""
    policy, opa = micro_opa_data
    root = tmp_path_factory.mktemp("dpo")
    summary = build_preference_data(PreferenceDataConfig(opa_dataset=opa, output_dir=str(root / "pref"), gamma=G))
    assert summary["rows_out"] >= 4, summary
    rows = [dict(r) for r in load_from_disk(summary["dataset"]).cast_column("image", Image(decode=False))]
    unusable = [
        {**rows[0], "id": "same", "rejected": rows[0]["chosen"], "rejected_spans": rows[0]["chosen_spans"]},
        {**rows[1], "id": "empty", "chosen": " ", "chosen_spans": []},
    ]
    train = root / "train_pairs"
    Dataset.from_list(rows + unusable, features=PREFERENCE_FEATURES).save_to_disk(str(train))
    return policy, opa, str(train), len(rows)


def dpo_config(tmp_path, policy, dataset, name="run", **kw) -> DPORecipeConfig:
    run, kw = split_run(tmp_path / name, kw, logging_steps=1, save_steps=100, eval_at_end=False)
    return DPORecipeConfig(
        run=run,
        dataset=dataset,
        model=ModelConfig(
            name_or_path=policy, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_vision=True, lora_projector=True
        ),
        data=DataConfig(world=SMALL_WORLD, max_length=160),
        optim=OptimConfig(lr=1e-2, warmup_steps=0, max_steps=3, batch_size=4),
        eval=EvalConfig(limit=2, pope=False, generation=GenerationConfig(max_new_tokens=8)),
        **kw,
    )


@pytest.fixture(scope="module")
def dpo_run(pref_data, tmp_path_factory):
    policy, _, dataset, _ = pref_data
    return main(dpo_config(tmp_path_factory.mktemp("dpo_run"), policy, dataset, loss="dpo"))


def _steps(summary: dict) -> list[dict]:
    return [h for h in summary["log_history"] if "pair" in h]


# ---------------------------------------------------------------- pairs from OPA-DPO records


def test_pairs_prefer_the_revision_over_the_rollout_and_drop_uncorrected_rows():
    png = _png()
    rows = [_opa_row("fixed", sample_report(), png), _opa_row("same", _unchanged_report(), png)]
    rows.append(_opa_row("broken", "not json", png))
    records, counts = preferences_from_opa(Dataset.from_list(rows, features=OPA_FEATURES), gamma=G)
    assert counts == {
        "rows_in": 3,
        "rows_out": 1,
        "skipped": {"uncorrected": 1, "empty_response": 0, "malformed_report": 1},
    }
    (pair,) = records
    report = sample_report()
    assert pair["chosen"] == ExpertReport.from_dict(report).revision
    assert pair["rejected"] == " ".join(s["copied"].strip() for s in report["sentences"])
    validate_spans(pair["chosen"], pair["chosen_spans"])
    validate_spans(pair["rejected"], pair["rejected_spans"])
    changed = {side: [pair[side][s:e] for s, e, _ in pair[f"{side}_spans"]] for side in ("chosen", "rejected")}
    assert changed == {
        "chosen": ["a blue knife is at the center.", "there is a green cat at the bottom right."],
        "rejected": ["a blue fork is at the center.", "a dog sings."],
    }
    assert {w for side in ("chosen_spans", "rejected_spans") for _, _, w in pair[side]} == {G}
    assert pair["image"]["bytes"] == png and json.loads(pair["meta"])["opa_meta"] == {"dataset": "test"}
    Dataset.from_list(records, features=PREFERENCE_FEATURES)  # the stored schema takes them as they are


def test_diff_spans_mark_the_changed_tokens_and_need_a_tokenizer():
    rows = [_opa_row("fixed", sample_report(), _png())]
    with pytest.raises(ValueError, match="tokenizer"):
        preferences_from_opa(rows, gamma=G, spans="diff")
    (pair,), _ = preferences_from_opa(rows, gamma=G, spans="diff", tokenizer=build_tiny_tokenizer())
    validate_spans(pair["chosen"], pair["chosen_spans"])
    validate_spans(pair["rejected"], pair["rejected_spans"])
    # the token diff is finer than the report: only "knife"/"fork" of the misrecognised sentence changed
    assert [pair["chosen"][s:e] for s, e, _ in pair["chosen_spans"]][0] == "knife"
    assert [pair["rejected"][s:e] for s, e, _ in pair["rejected_spans"]][0] == "fork"


def test_reference_as_chosen_pairs_the_reference_with_the_rollout_under_diff_spans():
    rows = [_opa_row("fixed", sample_report(), _png())]
    with pytest.raises(ValueError, match="spans='diff'"):
        preferences_from_opa(rows, gamma=G, chosen="reference")
    (pair,), counts = preferences_from_opa(
        rows, gamma=G, spans="diff", tokenizer=build_tiny_tokenizer(), chosen="reference"
    )
    assert pair["chosen"] == rows[0]["reference"] and counts["rows_out"] == 1
    assert pair["rejected"] == " ".join(s["copied"].strip() for s in sample_report()["sentences"])
    validate_spans(pair["chosen"], pair["chosen_spans"])
    validate_spans(pair["rejected"], pair["rejected_spans"])
    assert json.loads(pair["meta"])["chosen"] == "reference"
    with pytest.raises(ValueError, match="spans: diff"):
        PreferenceDataConfig(chosen="reference")


def test_build_data_cli_writes_pairs_and_a_summary(pref_data, tmp_path, capsys):
    _, opa, _, n_pairs = pref_data
    config = str(REPO / "configs/toy/preference_data.yaml")
    assert cli(["build-data", config, f"opa_dataset={opa}", f"output_dir={tmp_path}"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {**json.loads(capsys.readouterr().out), "seconds": summary["seconds"]}
    assert summary["rows_in"] == len(load_from_disk(opa)) and summary["rows_out"] == n_pairs
    assert summary["rows_out"] + sum(summary["skipped"].values()) == summary["rows_in"]
    assert load_from_disk(str(tmp_path / "dataset")).features == PREFERENCE_FEATURES
    policy = pref_data[0]  # spans: diff loads the policy's tokenizer from its checkpoint
    diff = ["build-data", config, f"opa_dataset={opa}", f"output_dir={tmp_path}", "spans=diff", f"policy={policy}"]
    assert cli(diff) == 2 and "spans: report -> diff" in capsys.readouterr().err  # another build on that dir
    assert cli([*diff, "--overwrite"]) == 0
    pairs = load_from_disk(str(tmp_path / "dataset"))
    assert json.loads(pairs[0]["meta"])["spans"] == "diff" and any(p["chosen_spans"] for p in pairs)


# ---------------------------------------------------------------- the recipe


def test_dpo_starts_at_log2_and_trains_every_lora_weight(dpo_run, pref_data):
    policy, _, _, n_pairs = pref_data
    first = _steps(dpo_run)[0]
    # at the first step the fresh LoRA is zero, so policy == reference: rewards 0 and the loss exactly log 2
    assert first["pair"] == pytest.approx(LOG2, abs=1e-6) and first["loss"] == pytest.approx(LOG2, abs=1e-4)
    assert first["rewards/chosen"] == first["rewards/rejected"] == first["rewards/margin"] == 0.0
    assert all(math.isfinite(h["loss"]) for h in dpo_run["log_history"] if "loss" in h)
    assert dpo_run["pairs"]["kept"] == n_pairs
    assert json.loads((Path(dpo_run["final"]).parent / "train_summary.json").read_text())["pairs"] == dpo_run["pairs"]
    assert_every_lora_weight_moved(policy, dpo_run["final"])


def test_duplicate_and_empty_pairs_are_counted_and_skipped(dpo_run):
    skipped = dpo_run["pairs"]["skipped"]
    assert skipped == {"empty_response": 1, "chosen_equals_rejected": 1, "bad_spans": 0, "prompt_too_long": 0}
    assert dpo_run["pairs"]["rows"] == dpo_run["pairs"]["kept"] + 2


def test_ddpo_with_gamma_one_is_dpo_and_gamma_changes_the_updates(dpo_run, pref_data, tmp_path):
    policy, _, dataset, _ = pref_data
    plain = _steps(dpo_run)
    ones = _steps(main(dpo_config(tmp_path, policy, dataset, "g1", loss="ddpo", gamma=1.0)))
    keys = ("pair", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "grad_norm")
    assert len(ones) == len(plain) == 3
    assert [h[k] for h in ones for k in keys] == pytest.approx([h[k] for h in plain for k in keys], abs=1e-6)
    weighted = _steps(main(dpo_config(tmp_path, policy, dataset, "g5", loss="ddpo")))  # the stored gamma = 5
    assert weighted[0]["pair"] == pytest.approx(LOG2, abs=1e-6)  # step 1: policy == reference whatever the weights
    assert weighted[1]["rewards/margin"] != pytest.approx(plain[1]["rewards/margin"], abs=1e-6)


def test_ddpo_weights_land_on_the_corrected_tokens(pref_data, tmp_path):
    policy, _, dataset, _ = pref_data
    model, processor = load_policy(policy, device="cpu")
    report = sample_report()
    report["sentences"] = report["sentences"][:2]
    report["added"] = ""
    chosen, chosen_spans, rejected, rejected_spans = report_char_spans(report, G)
    record = {"id": "hand", "image": _png(), "prompt": "describe the image.", "chosen": chosen, "rejected": rejected}
    record.update(chosen_spans=chosen_spans, rejected_spans=rejected_spans)

    def by_token(loss: str, side: str, **kw) -> list[tuple[str, float]]:
        cfg = dpo_config(tmp_path, policy, dataset, loss=loss, **kw)
        enc = encode_pair(processor, record, cfg, image_seq_length(model.config), {})[side]
        ids = enc["input_ids"][-len(enc["weights"]) :]
        return list(zip(processor.tokenizer.convert_ids_to_tokens(ids), enc["weights"], strict=True))

    first = [(w, 1.0) for w in ["there", "is", "a", "red", "cup", "at", "the", "top", "left", "."]]
    chosen_weights = by_token("ddpo", "chosen")
    assert chosen_weights[:10] == first and chosen_weights[-1] == ("</s>", 1.0)
    assert ("knife", G) in chosen_weights and ("knife", G) not in by_token("ddpo", "rejected")
    assert ("fork", G) in by_token("ddpo", "rejected")
    assert ("knife", 2.0) in by_token("ddpo", "chosen", gamma=2.0)  # a set gamma re-weights the stored spans
    assert {w for _, w in by_token("dpo", "chosen")} == {1.0}  # plain DPO ignores the spans


def test_bad_spans_are_counted_only_when_ddpo_uses_them(pref_data, tmp_path):
    policy, _, dataset, _ = pref_data
    model, processor = load_policy(policy, device="cpu")
    good = {"id": "g", "image": _png(), "prompt": "describe the image.", "chosen": "a red cup.", "rejected": "a fork."}
    bad = {**good, "id": "b", "chosen_spans": [[0, 99, G]], "rejected_spans": []}
    good.update(chosen_spans=[[2, 5, G]], rejected_spans=[])
    n_img = image_seq_length(model.config)
    for loss, kept in (("ddpo", 1), ("dpo", 2)):
        records, counts = encode_pairs([good, bad], processor, dpo_config(tmp_path, policy, dataset, loss=loss), n_img)
        assert len(records) == counts["kept"] == kept and counts["skipped"]["bad_spans"] == 2 - kept


def test_align_train_runs_the_shipped_ddpo_config(pref_data, tmp_path):
    policy, _, dataset, _ = pref_data
    assert cli(["validate", *(str(REPO / f"configs/toy/{n}.yaml") for n in ("dpo", "ddpo", "preference_data"))]) == 0
    overrides = [
        f"run.output_dir={tmp_path}",
        f"dataset={dataset}",
        f"model.name_or_path={policy}",
        "model.lora_r=4",
        "optim.lr=1e-2",
        "optim.max_steps=2",
        "optim.warmup_steps=0",
        "optim.batch_size=2",
        "run.logging_steps=2",
        "run.eval_at_end=false",
    ]
    assert cli(["train", str(REPO / "configs/toy/ddpo.yaml"), *overrides]) == 0
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert (tmp_path / "final" / "config.json").is_file()
    (logged,) = _steps(summary)  # step 2's own terms, not step 1's (where policy == reference, margin 0)
    assert logged["step"] == 2 and logged["rewards/margin"] != 0.0
    assert (tmp_path / "align_config.yaml").read_text().count("loss: ddpo") == 1


def test_full_finetune_trains_every_weight_against_a_frozen_copy(pref_data, tmp_path):
    policy, _, dataset, _ = pref_data
    cfg = dpo_config(tmp_path, policy, dataset)
    cfg = dataclasses.replace(cfg, model=ModelConfig(name_or_path=policy, finetune="full"), loss="ddpo")
    trainer, _, _ = build_dpo_trainer(cfg)
    assert_full_finetune_moves_every_weight(trainer)


def test_config_needs_a_start_policy():
    with pytest.raises(ValueError, match="name_or_path"):
        DPORecipeConfig(model=ModelConfig(name_or_path=None))
    with pytest.raises(ValueError, match="gamma"):
        DPORecipeConfig(gamma=0.0)


def test_sft_on_chosen_trains_on_the_chosen_side_only(pref_data, tmp_path):
    """The SFT-on-chosen baseline: the same pairs and batches as DPO, the chosen answers' mean token NLL as the loss,
    so any rejected text gives the same run, and every LoRA weight moves."""
    policy, _, dataset, _ = pref_data
    rows = [dict(r) for r in load_from_disk(dataset).cast_column("image", Image(decode=False))]
    other = [
        {**r, "rejected": "there is nothing.", "rejected_spans": []} if r["id"] not in ("empty", "same") else r
        for r in rows
    ]
    other_path = str(tmp_path / "other_rejected")
    Dataset.from_list(other, features=PREFERENCE_FEATURES).save_to_disk(other_path)
    runs = [main(dpo_config(tmp_path, policy, d, name, loss="sft")) for d, name in ((dataset, "a"), (other_path, "b"))]
    logs = [[h for h in r["log_history"] if "sft" in h] for r in runs]
    assert len(logs[0]) == 3 and all("pair" not in h and "rewards/chosen" not in h for h in logs[0])
    assert [h["sft"] for h in logs[0]] == pytest.approx([h["sft"] for h in logs[1]], abs=1e-6)
    assert [h["loss"] for h in logs[0]] == pytest.approx([h["sft"] for h in logs[0]], abs=1e-4)
    assert_every_lora_weight_moved(policy, runs[0]["final"])
