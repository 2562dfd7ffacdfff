"""Generating on a public benchmark from a checkpoint (align/eval/public.py): a tiny saved LLaVA answers a POPE-format
question set on images written to a temp dir, through the real loader, generation, scorer, resume and CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import MICRO_SPEC
from PIL import Image

from align.cli import main
from align.config.loading import ConfigError, from_dict
from align.config.sections import BenchmarkSource, EvalConfig, GenerationConfig, ModelConfig
from align.eval import public
from align.eval.benchmarks.pope import PROMPT_SUFFIX
from align.eval.runner import RESULTS_FILE, evaluate_checkpoint, format_table

OBJECTS = ["cat", "dog", "cup"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from align.core.models import build_model, save_policy

    model, processor = build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full"), seed=0)
    return save_policy(model, processor, tmp_path_factory.mktemp("public") / "checkpoint-3")


@pytest.fixture
def pope_data(tmp_path):
    """Two POPE split files (3 questions each, over 2 images) and the image directory."""
    data, images = tmp_path / "pope", tmp_path / "images"
    data.mkdir()
    images.mkdir()
    for i, color in enumerate(["red", "blue"]):
        Image.new("RGB", (32, 32), color).save(images / f"img{i}.png")
    for split in ("adversarial", "random"):
        lines = [
            {"question_id": q + 1, "image": f"img{q % 2}.png", "text": f"Is there a {obj} in the image?",
             "label": "yes" if q % 2 == 0 else "no"}
            for q, obj in enumerate(OBJECTS)
        ]  # fmt: skip
        (data / f"coco_pope_{split}.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return data, images


def pope_cfg(data, images, **source) -> EvalConfig:
    src = BenchmarkSource(name="pope", data=str(data), images=str(images), **source)
    return EvalConfig(benchmarks=["pope"], sources=[src], generation=GenerationConfig(batch_size=4))


def test_pope_from_a_checkpoint_scores_every_split_and_resumes(checkpoint, pope_data, monkeypatch):
    results = evaluate_checkpoint(checkpoint, pope_cfg(*pope_data, limit=2), force=True)
    assert results["pope_adversarial"]["n"] == 2 and results["pope_random"]["n"] == 2  # limit is per split
    assert 0.0 <= results["pope"]["f1_mean"] <= 1.0
    assert results["meta"]["pope_source"]["limit"] == 2
    assert "pope:F1" in format_table({"ckpt": results})
    answers = checkpoint / "eval_outputs"
    (out,) = answers.glob("pope-*.jsonl")
    lines = out.read_text().splitlines()
    assert sorted(json.loads(x)["question_id"] for x in lines) == [
        "adversarial/1",
        "adversarial/2",
        "random/1",
        "random/2",
    ]

    # a killed run: one answer kept, the next line torn; the rerun generates only the three missing answers
    out.write_text(lines[0] + "\n" + lines[1][:10])
    prompts = []
    real = public.generate
    monkeypatch.setattr(
        public, "generate", lambda m, p, ims, texts, *a, **k: prompts.extend(texts) or real(m, p, ims, texts, *a, **k)
    )
    again = evaluate_checkpoint(checkpoint, pope_cfg(*pope_data, limit=2), force=True)
    assert len(prompts) == 3
    assert again["pope"] == results["pope"]  # greedy answers: the same numbers

    # a different setting is a different answer file, not a mix with the old answers
    evaluate_checkpoint(checkpoint, pope_cfg(*pope_data, limit=1), force=True)
    assert len(list(answers.glob("pope-*.jsonl"))) == 2


def test_missing_images_fail_before_any_generation(checkpoint, pope_data, monkeypatch):
    data, images = pope_data
    (images / "img1.png").unlink()
    monkeypatch.setattr(public, "generate", lambda *a, **k: pytest.fail("generated before checking the images"))
    with pytest.raises(FileNotFoundError, match=r"1 image files not found .*img1\.png"):
        evaluate_checkpoint(checkpoint, pope_cfg(data, images), force=True)


def test_items_without_a_fixed_set_ask_for_a_split(checkpoint, tmp_path):
    vocab = {"mscoco_objects": ["cat"], "inverse_synonym_dict": {"cat": "cat"}, "double_word_dict": {}}
    (tmp_path / "chair_vocabulary.json").write_text(json.dumps(vocab))
    (tmp_path / "coco2014_image_objects.json").write_text(json.dumps({"1": ["cat"]}))
    cfg = EvalConfig(benchmarks=["chair"], sources=[BenchmarkSource("chair", str(tmp_path), str(tmp_path))])
    with pytest.raises(ValueError, match="set a split to generate on .*opera500"):
        evaluate_checkpoint(checkpoint, cfg, force=True)


def test_config_checks_names_sources_and_judge():
    with pytest.raises(ValueError, match="'pope' needs an eval.sources entry"):
        EvalConfig(benchmarks=["pope"])
    with pytest.raises(ValueError, match="unknown 'popee'"):
        EvalConfig(benchmarks=["popee"])
    with pytest.raises(ValueError, match="graded by an LLM judge; set eval.judge"):
        EvalConfig(benchmarks=["mmhal"], sources=[BenchmarkSource("mmhal", "d", "i")])
    with pytest.raises(ValueError, match="once"):
        EvalConfig(benchmarks=["pope"], sources=[BenchmarkSource("pope", "a", "b"), BenchmarkSource("pope", "c", "d")])
    cfg = from_dict(
        EvalConfig,
        {"benchmarks": ["mmhal"], "sources": [{"name": "mmhal", "data": "d", "images": "i"}], "judge": {"model": "m"}},
    )
    assert cfg.sources[0].name == "mmhal" and cfg.judge.model == "m" and cfg.judge.api_key_env == "OPENAI_API_KEY"
    with pytest.raises(ConfigError, match=r"sources\[0\]\.imges: unknown key; did you mean"):
        from_dict(EvalConfig, {"benchmarks": ["pope"], "sources": [{"name": "pope", "data": "d", "imges": "i"}]})


def test_cli_generates_on_a_source_and_prints_the_table(checkpoint, pope_data, capsys):
    data, images = pope_data
    argv = ["eval", str(checkpoint), "--force", "--source", "pope", f"data={data}", f"images={images}", "limit=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pope:F1" in out and "checkpoint-3" in out
    saved = json.loads((checkpoint / RESULTS_FILE).read_text())
    assert saved["pope_adversarial"]["n"] == 1 and "toyworld_chair" not in saved
    assert main(["eval", str(checkpoint), "--source", "pope", f"data={data}"]) == 2
    assert "give images=..." in capsys.readouterr().err
    assert main(["eval", str(checkpoint), "--source", "pope", "data", "images=x"]) == 2
    assert "'data' is not KEY=VALUE" in capsys.readouterr().err


def test_toyworld_exported_as_pope_files_scores_as_the_toyworld_suite(checkpoint, small_world, cache_dir, tmp_path):
    """ToyWorld is one more data source: its test split written in POPE's format and run through the public path
    gives the numbers the built-in ToyWorld suite gives (same questions, prompt suffix and answer length)."""
    from conftest import SMALL_WORLD

    from align.config.sections import DataConfig
    from data_builders.toyworld_data import export_pope_files

    exported = export_pope_files(small_world["test"], tmp_path / "bench")
    assert exported["images"] == SMALL_WORLD.n_test and set(exported["pope_questions"]) == {
        "adversarial", "popular", "random"
    }  # fmt: skip
    source = BenchmarkSource("pope", str(tmp_path / "bench/pope"), str(tmp_path / "bench/images"), max_new_tokens=3)
    cfg = EvalConfig(benchmarks=["toyworld", "pope"], sources=[source], generation=GenerationConfig(batch_size=8))
    data_cfg = DataConfig(world=SMALL_WORLD, cache_dir=str(cache_dir))
    results = evaluate_checkpoint(checkpoint, cfg, force=True, data_cfg=data_cfg)
    generations = [json.loads(x) for x in (checkpoint / "eval_generations.jsonl").read_text().splitlines()]
    suite_answers = {
        (g["split"], f"{g['image_id']}.png", g["prompt"]): g["answer"] for g in generations if "split" in g
    }
    public_answers = {
        (g["id"].split("/")[0], g["image"], g["prompt"].removesuffix(PROMPT_SUFFIX)): g["text"]
        for g in generations
        if g.get("benchmark") == "pope"
    }
    assert len(public_answers) == sum(exported["pope_questions"].values()) == len(suite_answers)
    assert public_answers == suite_answers  # the same (image, question) got the same generated text
    assert all(a.strip() for a in public_answers.values())  # real replies (the micro model may give one to all)
    for split in ("adversarial", "popular", "random"):
        ours, suite = results[f"pope_{split}"], results[f"toyworld_pope_{split}"]
        assert ours["n"] == exported["pope_questions"][split]
        assert {k: ours[k] for k in ("accuracy", "f1", "yes_ratio")} == pytest.approx(
            {k: suite[k] for k in ("accuracy", "f1", "yes_ratio")}
        )


def test_each_benchmark_is_cached_on_its_own(checkpoint, pope_data, small_world, cache_dir, monkeypatch):
    """Scoring ToyWorld after POPE keeps POPE's numbers in the file; asking for both then regenerates nothing."""
    from conftest import SMALL_WORLD

    from align.config.sections import DataConfig

    data_cfg = DataConfig(world=SMALL_WORLD, cache_dir=str(cache_dir))
    pope_only = pope_cfg(*pope_data, limit=1)
    first = evaluate_checkpoint(checkpoint, pope_only, force=True, data_cfg=data_cfg)
    toy = EvalConfig(limit=2, pope=False, generation=GenerationConfig(batch_size=4))
    second = evaluate_checkpoint(checkpoint, toy, data_cfg=data_cfg)
    assert "toyworld_chair" in second and "pope" not in second  # only what was asked for
    saved = json.loads((checkpoint / RESULTS_FILE).read_text())
    assert saved["pope"] == first["pope"] and "toyworld_chair" in saved  # the file keeps both
    kinds = {json.loads(x)["benchmark"] for x in (checkpoint / "eval_generations.jsonl").read_text().splitlines()}
    assert kinds == {"pope", "toyworld"}

    monkeypatch.setattr(public, "generate", lambda *a, **k: pytest.fail("regenerated a cached benchmark"))
    monkeypatch.setattr("align.eval.toyworld.generate", lambda *a, **k: pytest.fail("regenerated ToyWorld"))
    both = dataclasses.replace(pope_only, benchmarks=["toyworld", "pope"], limit=2, pope=False)
    both.sources[0].limit = 1
    again = evaluate_checkpoint(checkpoint, both, data_cfg=data_cfg)
    assert again["pope"] == first["pope"] and again["toyworld_chair"] == second["toyworld_chair"]


def test_items_with_their_own_length_are_generated_with_it(tmp_path, monkeypatch):
    """AMBER's descriptions carry max_new_tokens 512 beside yes/no questions at the benchmark's 16; a source's
    max_new_tokens overrides both."""
    calls = []

    def fake_generate(model, processor, images, prompts, cfg, desc, max_new_tokens):
        calls.append((max_new_tokens, list(prompts)))
        return [f"answer to {p}" for p in prompts]

    monkeypatch.setattr(public, "generate", fake_generate)
    items = [{"id": "1", "prompt": "describe", "max_new_tokens": 512}, {"id": "2", "prompt": "yes or no?"}]
    gen = GenerationConfig(max_new_tokens=16, batch_size=2)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    answers = public.answer_items(None, None, "amber", items, paths, gen, tmp_path / "out.jsonl")
    assert sorted(calls) == [(16, ["yes or no?"]), (512, ["describe"])]
    assert answers == {"1": "answer to describe", "2": "answer to yes or no?"}
    calls.clear()
    public.answer_items(None, None, "amber", items, paths, gen, tmp_path / "fixed.jsonl", fixed_length=True)
    assert calls == [(16, ["describe", "yes or no?"])]
