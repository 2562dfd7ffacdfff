"""`align eval score` end to end on small files, and `read_outputs` on every output format it accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.cli import main
from align.eval.benchmarks import read_outputs

LABELS = ["yes", "no", "yes", "no"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_pope(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("adversarial", "random"):
        rows = [
            {"question_id": i, "image": "x.jpg", "text": "Is there a cat?", "label": y}
            for i, y in enumerate(LABELS, 1)
        ]
        write_jsonl(root / f"coco_pope_{split}.json", rows)
    return root


@pytest.mark.parametrize(
    "row,expected",
    [
        ({"question_id": 7, "prompt": "q", "text": "Yes", "answer_id": "a"}, ("7", "Yes")),  # LLaVA
        ({"question_id": "7", "answer": "No"}, ("7", "No")),
        ({"image_id": 391895, "caption": "A man on a bike."}, ("391895", "A man on a bike.")),  # OPERA
        ({"id": 1005, "response": "Yes"}, ("1005", "Yes")),  # AMBER
        ({"image_id": 2, "path": "VG_100K/2.jpg", "text": "A tree."}, ("2", "A tree.")),  # CCEval
        ({"question_id": 7, "text": "No", "category": "popular"}, ("popular/7", "No")),  # split named per line
    ],
)
def test_read_outputs_formats(tmp_path, row, expected):
    assert read_outputs(write_jsonl(tmp_path / "o.jsonl", [row])) == dict([expected])


def test_image_keyed_benchmarks_read_image_ids_first(tmp_path):
    """An Object HalBench answer line often has both ids; CHAIR-style benchmarks are keyed by image."""
    from align.eval.benchmarks import BENCHMARKS

    path = write_jsonl(tmp_path / "o.jsonl", [{"question_id": 0, "image_id": 391895, "text": "A dog."}])
    assert read_outputs(path) == {"0": "A dog."}
    for name in ("chair", "objhal", "objhal_llm", "cceval"):
        assert read_outputs(path, BENCHMARKS[name].output_ids) == {"391895": "A dog."}


def test_read_outputs_json_array_as_amber_reads_it(tmp_path):
    path = tmp_path / "amber.json"
    path.write_text(json.dumps([{"id": 1005, "response": "Yes"}, {"id": 1006, "response": "No"}], indent=1))
    assert read_outputs(path) == {"1005": "Yes", "1006": "No"}


def test_read_outputs_errors_name_file_and_line(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question_id": 1, "text": "Yes"}, "", "{not json"])
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not valid JSON.*\{question_id, text\} \(LLaVA\)"):
        read_outputs(bad)
    nofield = write_jsonl(tmp_path / "nofield.jsonl", [{"question_id": 1, "text": "Yes"}, {"question_id": 2}])
    with pytest.raises(ValueError, match=r"nofield.jsonl: line 2: no id and text fields.*\{id, response\} \(AMBER\)"):
        read_outputs(nofield)
    dup = write_jsonl(
        tmp_path / "dup.jsonl",
        [{"id": 1, "response": "Yes"}, {"id": 2, "response": "No"}, {"id": 1, "response": "No"}],
    )
    with pytest.raises(ValueError, match=r"dup.jsonl: line 3: duplicate id '1' \(first on line 1\)"):
        read_outputs(dup)
    array = tmp_path / "arr.json"
    array.write_text(json.dumps([{"id": 1, "response": "Yes"}, {"id": 2}]))
    with pytest.raises(ValueError, match="arr.json: item 2: no id and text fields"):
        read_outputs(array)
    with pytest.raises(ValueError, match="holds no outputs"):
        read_outputs(write_jsonl(tmp_path / "empty.jsonl", []))
    with pytest.raises(FileNotFoundError, match="not found"):
        read_outputs(tmp_path / "nope.jsonl")


def test_score_pope_prints_table_and_writes_json(tmp_path, capsys):
    data = write_pope(tmp_path / "pope")
    outputs = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": i, "text": "Yes"} for i in range(1, 5)])
    argv = [
        "eval",
        "score",
        "--benchmark",
        "pope",
        "--outputs",
        str(outputs),
        "--split",
        "random",
        "--data",
        str(data),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "pope random: 4 scored, 0 missing" in out
    assert "yes_ratio" in out and "f1_mean: 66.7" in out  # all "Yes": P 1/2, R 1 → F1 2/3
    report = json.loads((tmp_path / "answers.jsonl.pope-random.scores.json").read_text())
    assert report["benchmark"] == "pope" and report["split"] == "random" and report["data"] == str(data)
    assert report["counts"] == {"items": 4, "scored": 4, "missing": 0, "unmatched_outputs": 0}
    assert report["metrics"]["random"]["yes_ratio"] == 1.0
    samples = [json.loads(x) for x in Path(report["samples"]).read_text().splitlines()]
    assert samples[1] == {
        "id": "random/2",
        "split": "random",
        "label": "no",
        "pred": "yes",
        "correct": False,
        "output": "Yes",
    }


def test_score_missing_outputs_then_allow_missing(tmp_path, capsys):
    data = write_pope(tmp_path / "pope")
    outputs = write_jsonl(tmp_path / "a.jsonl", [{"question_id": i, "text": "No"} for i in (1, 2, 3)])
    argv = [
        "eval",
        "score",
        "--benchmark",
        "pope",
        "--outputs",
        str(outputs),
        "--split",
        "adversarial",
        "--data",
        str(data),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: 1 of 4 pope items have no output (first: adversarial/4)") and "--allow-missing" in err
    )
    out_json = tmp_path / "res" / "scores.json"
    assert main([*argv, "--allow-missing", "--json", str(out_json)]) == 0
    assert "3 scored, 1 missing" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["counts"]["missing"] == 1
    assert len((tmp_path / "res" / "scores.samples.jsonl").read_text().splitlines()) == 3


def test_score_amber_array_with_data_from_environment(tmp_path, monkeypatch, capsys):
    amber = tmp_path / "benchmarks" / "amber"
    (amber / "query").mkdir(parents=True)
    ann = [{"id": 1, "type": "generative", "truth": [], "hallu": []}]
    ann += [
        {"id": 2, "type": "discriminative-hallucination", "truth": "no"},
        {"id": 3, "type": "relation", "truth": "no"},
    ]
    (amber / "annotations.json").write_text(json.dumps(ann))
    (amber / "query" / "query_all.json").write_text(
        json.dumps([{"id": i, "image": "a.jpg", "query": "q"} for i in (1, 2, 3)])
    )
    outputs = tmp_path / "amber_out.json"
    outputs.write_text(json.dumps([{"id": 2, "response": "No"}, {"id": 3, "response": "no"}]))
    monkeypatch.setenv("ALIGN_BENCHMARKS", str(tmp_path / "benchmarks"))
    assert main(["eval", "score", "--benchmark", "amber", "--outputs", str(outputs)]) == 0
    out = capsys.readouterr().out
    assert "existence" in out and "relation" in out and "neither" in out
    metrics = json.loads((tmp_path / "amber_out.json.amber.scores.json").read_text())["metrics"]
    assert metrics["overall"]["accuracy"] == 0.5 and metrics["relation"]["neither"] == 1


def test_score_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ALIGN_BENCHMARKS", raising=False)
    outputs = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "text": "Yes"}])
    assert main(["eval", "score", "--benchmark", "popee", "--outputs", str(outputs)]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'popee'" in err and "did you mean 'pope'?" in err and err.count("\n") == 1
    assert main(["eval", "score", "--benchmark", "pope", "--outputs", str(outputs)]) == 2
    assert "ALIGN_BENCHMARKS is not set: pass --data" in capsys.readouterr().err
    assert main(["eval", "score", "--benchmark", "amber", "--outputs", str(outputs), "--data", str(tmp_path)]) == 2
    assert "annotations.json not found" in capsys.readouterr().err


def test_eval_of_checkpoint_paths_still_works(tmp_path, capsys):
    # `align eval PATH` is still the checkpoint eval; only `align eval score` goes to the scorer
    assert main(["eval", str(tmp_path / "missing_run")]) == 2
    assert "does not exist: give a checkpoint or a run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["eval", "score"])  # --benchmark and --outputs are required
    assert e.value.code == 2 and "--benchmark" in capsys.readouterr().err
