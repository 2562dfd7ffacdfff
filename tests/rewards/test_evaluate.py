"""`align eval <reward model>` (rewards/evaluate.py): pair accuracy on a preference dataset agrees with scoring
each answer through `rewards.model.score`, and a file of rows is scored with its bad rows written back as errors,
not raised."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset

from align.cli import main as cli
from align.config.sections import ModelConfig
from align.core.models import build_model, save_policy
from data_builders import toyworld as tw
from data_builders.schema import PREFERENCE_FEATURES
from rewards.evaluate import RESULTS_FILE
from rewards.model import RewardModel, load_reward_model, save_reward_model, score
from tests.conftest import MICRO_SPEC


@pytest.fixture(scope="module")
def rm_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm-eval")
    model, processor = build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full"), seed=0)
    base = save_policy(model, processor, root / "base")
    backbone, _ = build_model(ModelConfig(name_or_path=str(base), finetune="lora", lora_r=4), seed=0)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    rm = save_reward_model(RewardModel(backbone), processor, root / "rm", base_model=str(base), facts=True)
    rng = np.random.default_rng(0)
    images = [tw.image_to_png(tw.render(tw.sample_scene(rng, tw.WorldConfig())[1], rng, 18.0)) for _ in range(3)]
    return rm, images, root


def test_pair_accuracy_matches_scoring_each_answer(rm_and_images, tmp_path, capsys):
    rm, images, _ = rm_and_images
    answers = [("a red cup.", "a dog and a cat."), ("two cars.", "no."), ("a spoon.", "a spoon and a bus.")]
    facts = [["a red cup at the top left"], ["two cars at the center"], None]
    records = [
        {
            "id": f"p{i}",
            "image": {"bytes": image, "path": None},
            "prompt": "Describe the image.",
            "chosen": good,
            "rejected": bad,
            "chosen_spans": [],
            "rejected_spans": [],
            "source": "test",
            "meta": json.dumps({"facts": fact} if fact else {}),
        }  # fmt: skip
        for i, (image, (good, bad), fact) in enumerate(zip(images, answers, facts, strict=True))
    ]
    Dataset.from_list(records, features=PREFERENCE_FEATURES).save_to_disk(str(tmp_path / "pairs"))
    model, processor, _ = load_reward_model(rm, device="cpu")
    pil = [Dataset.from_list(records[:2], features=PREFERENCE_FEATURES)[i]["image"] for i in range(2)]

    def margins(read: list) -> list[float]:
        good = score(model, processor, pil, ["Describe the image."] * 2, [a[0] for a in answers[:2]], read)
        bad = score(model, processor, pil, ["Describe the image."] * 2, [a[1] for a in answers[:2]], read)
        return [g - b for g, b in zip(good, bad, strict=True)]

    for flags, file, read in (([], RESULTS_FILE, facts[:2]),
                              (["--other-facts"], "reward_eval_other_facts.json", [facts[1], facts[0]])):  # fmt: skip
        assert cli(["eval", str(rm), "--pairs", str(tmp_path / "pairs"), *flags]) == 0
        result, expected = json.loads((rm / file).read_text()), margins(read)
        assert result["scored"] == 2 and result["skipped"] == {"no_facts": 1}  # the RM reads facts; p2 has none
        assert result["mean_margin"] == pytest.approx(sum(expected) / 2, abs=1e-5)
        assert result["pair_accuracy"] == sum(m > 0 for m in expected) / 2
    assert margins(facts[:2]) != margins([facts[1], facts[0]])  # the facts change the scores
    assert "pair accuracy" in capsys.readouterr().out


def test_a_rows_file_is_scored_and_bad_rows_come_back_as_errors(rm_and_images, tmp_path):
    rm, images, _ = rm_and_images
    (tmp_path / "a.png").write_bytes(images[0])
    rows = [
        json.dumps({"id": "ok", "image": "a.png", "prompt": "Describe.", "response": "a cup.", "facts": ["a cup"]}),
        "{not json",
        json.dumps({"id": "noimg", "image": "missing.png", "prompt": "D.", "response": "x", "facts": []}),
        json.dumps({"id": "nofacts", "image": "a.png", "prompt": "D.", "response": "x"}),
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(rows) + "\n")
    assert cli(["eval", str(rm), "--score", str(tmp_path / "rows.jsonl")]) == 0
    out = [json.loads(line) for line in (tmp_path / "rows.jsonl.rewards.jsonl").read_text().splitlines()]
    assert out[0]["id"] == "ok" and isinstance(out[0]["reward"], float)
    assert [e["line"] for e in out[1:]] == [2, 3, 4] and "facts" in out[3]["error"]


def test_policy_flags_on_a_reward_model_are_refused(rm_and_images):
    rm, _, root = rm_and_images
    assert cli(["eval", str(rm)]) != 0  # a reward model needs --pairs or --score
    assert cli(["eval", str(root / "base"), "--pairs", "x"]) != 0  # --pairs on a policy
