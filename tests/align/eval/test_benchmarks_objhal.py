"""Object HalBench (RLHF-V's CHAIR variant): the refined vocabulary, the rule-based path and the metrics by hand,
the LLM path through the real judge client against a local server, loading, and WordNet where it can be checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.eval.benchmarks import format_metrics, score_outputs
from align.eval.benchmarks.objhal import BENCHMARK as OBJHAL
from align.eval.benchmarks.objhal import DEFAULT_PROMPT, LLM_BENCHMARK, aggregate, load
from align.eval.chair_text import NOUN_EXCEPTIONS, NOUN_RULES, Vocabulary, caption_words, noun_lemma
from align.eval.judge import Judge, JudgeConfig
from align.eval.objhal_text import PROMPT_VERSION, load_vocabulary, parse_object_list, parse_synonyms
from tests.openai_server import openai_server_fixture  # noqa: F401  (provides the openai_server fixture)
from tests.shared_data import benchmark_dir, benchmarks_root, require_nltk_data

# a few categories of synonyms_refine.txt with its refined additions (brother, pedestrian, coffee table, remote
# control), plus the reference's parsing quirks: ', ' splits, terms stripped, a later category wins
SYNONYMS = """\
person, girl, boy, man, woman, child, people, children, baby, passenger, player, brother, pedestrian
dog, puppy
cat, kitten
elephant
bear
airplane, plane, jet
train
tie, bow, bow tie
toilet
chair, seat
sink
cup
bottle
dining table, table, coffee table
remote, remote control
wine glass
teddy bear
hot dog
cell phone, phone, iPhone
  motorcycle,  motor bike \t
umbrella, parasol
parasol, sunshade
"""
VOCAB = parse_synonyms(SYNONYMS)


def mentions(caption: str, vocab: Vocabulary = VOCAB) -> list[tuple[str, str]]:
    return caption_words(caption, vocab).mentions


def write_data(root: Path, truth: dict, questions: list[dict] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "synonyms_refine.txt").write_text(SYNONYMS)
    (root / "coco2014_image_objects.json").write_text(json.dumps(truth))
    if questions is not None:
        (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return root


def test_vocabulary_tables():
    cat = VOCAB.category
    assert cat["brother"] == cat["pedestrian"] == "person" and cat["coffee table"] == "dining table"
    assert cat["remote control"] == "remote" and cat["motor bike"] == "motorcycle"  # stripped
    assert cat["parasol"] == "parasol" and cat["umbrella"] == "umbrella"  # a later line wins
    assert parse_synonyms("dog,puppy, hound").category == {"dog,puppy": "dog,puppy", "hound": "dog,puppy"}
    double = VOCAB.double_words
    assert all(double[t] == t for t in ("coffee table", "remote control", "motor bike", "home plate", "train track"))
    assert double["bow tie"] == "tie" and double["toilet seat"] == "toilet" and double["wine glas"] == "wine glass"
    assert double["baby cub"] == double["adult cub"] == "cub" and double["passenger jet"] == "jet"
    assert len(double) == 9 + 2 + 24 + 5 - 1  # 9 multi-word terms ('bow tie' among them), 2, 12 animals x 2, 5
    with pytest.raises(ValueError, match="no synonym lines"):
        parse_synonyms("\n  \n")


def test_rule_based_mentions():
    assert mentions("My brother sits at a coffee table with a pedestrian.") == [
        ("brother", "person"),
        ("coffee table", "dining table"),  # merged: no 'table'
        ("pedestrian", "person"),
    ]
    assert mentions("Two remote controls and a motor bike.") == [
        ("remote control", "remote"),
        ("motor bike", "motorcycle"),
    ]
    assert mentions("A baby elephant, a teddy bear and a bow tie.") == [
        ("elephant", "elephant"),  # 'baby elephant' → elephant, no 'baby'
        ("teddy bear", "teddy bear"),
        ("tie", "tie"),
    ]
    assert mentions("A train on the train tracks.") == [("train", "train")]  # the pair only consumes
    assert mentions("Two wine glasses.") == [("wine glass", "wine glass")]  # glasses → glass
    assert mentions("A passenger jet and a passenger.") == [("jet", "airplane"), ("passenger", "person")]
    assert mentions("A tennis player.") == [("player", "person")]  # rules see 'player' (the LLM path drops it)
    assert mentions("Brethren with an iPhone.") == [("brother", "person")]  # lower-cased: 'iphone' is no term


def test_toilet_seat_rule():
    assert mentions("The seat of the toilet is up.") == [("toilet", "toilet")]
    assert mentions("A toilet seat and two seats.") == [("toilet", "toilet")]
    assert mentions("A seat next to a sink.") == [("seat", "chair"), ("sink", "sink")]


TRUTH = {"1": ["person", "dog"], "2": ["elephant"], "3": ["toilet", "sink"], "4": ["cat"]}


def test_metrics_by_hand(tmp_path):
    items = load(write_data(tmp_path, TRUTH))
    outputs = {
        "1": "Assistant: A man and a woman walk a dog near a table.",  # 4 mentions, the table hallucinated
        "2": "An elephant, an elephant and a cup.",  # 3 mentions (a repeat counts), the cup hallucinated
        "3": "  A toilet seat and a sink.\n",  # toilet, sink: nothing hallucinated
        "4": "There is nothing   here at all.",  # no vocabulary word: counts for chair_s, not for chair_s_refine
    }
    scored = score_outputs(OBJHAL, items, outputs)
    m = scored.metrics["overall"]
    assert m["chair_s"] == pytest.approx(2 / 4) and m["chair_s_refine"] == pytest.approx(2 / 3)
    assert (m["mentions"], m["hallucinated_mentions"], m["chair_i"]) == (9, 2, pytest.approx(2 / 9))
    assert m["recall"] == pytest.approx(5 / 6)  # person, dog | elephant | toilet, sink of 2 + 1 + 2 + 1
    # single-space split of the stripped answer: 11, 7, 6, and 8 (the run of spaces gives two empty words)
    assert m["length"] == pytest.approx((11 + 7 + 6 + 8) / 4)
    assert (m["n"], m["coco_responses"]) == (4, 3)
    second = scored.records[1]
    assert second["mentions"] == [["elephant", "elephant"], ["elephant", "elephant"], ["cup", "cup"]]
    assert second["hallucinated"] == [["cup", "cup"]] and second["recalled"] == ["elephant"]
    assert scored.metrics["extractor"] == "rules" and "tagger" not in scored.metrics
    assert scored.metrics["ground_truth"] == str(tmp_path / "coco2014_image_objects.json")
    assert "66.7" in format_metrics(scored.metrics)


def test_assistant_prefix_is_stripped(tmp_path):
    (item,) = [it for it in load(write_data(tmp_path, TRUTH)) if it["id"] == "4"]
    record = OBJHAL.score(item, "\n Assistant:  A kitten. Assistant: ")
    assert record["words"] == 2 and record["mentions"] == [["kitten", "cat"]]


def test_empty_aggregate_has_no_rates():
    m = aggregate([])["overall"]
    assert m["chair_s"] is None and m["chair_s_refine"] is None and m["n"] == 0


def test_load_default_items_questions_and_errors(tmp_path):
    items = load(write_data(tmp_path / "a", {"42": ["dog"], "7": []}))
    assert [it["id"] for it in items] == ["7", "42"] and all(it["optional"] for it in items)
    assert items[1] | {"vocabulary": None, "ground_truth_source": None} == {
        "id": "42", "image": "COCO_val2014_000000000042.jpg", "prompt": DEFAULT_PROMPT, "question": DEFAULT_PROMPT,
        "objects": ["dog"], "vocabulary": None, "ground_truth_source": None, "optional": True,
    }  # fmt: skip
    assert OBJHAL.generation == {"max_new_tokens": 512, "do_sample": False}
    assert load(tmp_path / "a" / "coco2014_image_objects.json")[0]["id"] == "7"  # the file itself
    questions = [
        {"image_id": 42, "question": "What is here?"},
        {"image_id": "7", "question": "Describe it.", "image": "x.png"},
    ]
    items = load(write_data(tmp_path / "b", {"42": ["dog"], "7": [], "8": []}, questions))
    assert [(it["id"], it["prompt"], it["image"], it["optional"]) for it in items] == [
        ("42", "What is here?", "COCO_val2014_000000000042.jpg", False),
        ("7", "Describe it.", "x.png", False),
    ]
    with pytest.raises(ValueError, match=r"has no objects for 1 of the 2 images .*\(first: 42\)"):
        load(write_data(tmp_path / "c", {"7": []}, questions))
    with pytest.raises(ValueError, match="questions.jsonl:2: image 42 again"):
        load(write_data(tmp_path / "d", {"42": []}, questions[:1] * 2))
    with pytest.raises(ValueError, match=r"questions.jsonl:1: need \{image_id: integer, question: string\}"):
        load(write_data(tmp_path / "e", {"42": []}, [{"image_id": "x42", "question": "q"}]))
    with pytest.raises(ValueError, match="no splits"):
        load(tmp_path / "a", "random")
    (tmp_path / "a" / "synonyms_refine.txt").unlink()
    with pytest.raises(FileNotFoundError, match="synonyms_refine.txt not found.*RLHF-V/RLHF-V"):
        load(tmp_path / "a")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "synonyms_refine.txt").write_text(SYNONYMS)
    with pytest.raises(FileNotFoundError, match="no Object HalBench ground truth in .*annotation files"):
        load(tmp_path / "f")


def test_ground_truth_from_annotation_files_wins(tmp_path, monkeypatch):
    """The COCO files are exact (the reference's own rules and vocabulary), so they win over a precomputed file."""
    monkeypatch.setenv("ALIGN_CACHE", str(tmp_path / "cache"))
    root = write_data(tmp_path / "data", {"1": ["cat"]})
    inst = {
        "images": [{"id": 1}, {"id": 2}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 18}],
        "categories": [{"id": 18, "name": "dog"}],
    }
    caps = {
        "images": [{"id": 1}],
        "annotations": [{"id": 5, "image_id": 1, "caption": "My brother at a coffee table."}],
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(inst))
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(caps))
    items = load(root)
    assert [(it["id"], it["objects"]) for it in items] == [("1", ["dining table", "dog", "person"]), ("2", [])]
    assert items[0]["ground_truth_source"].startswith(f"COCO annotations in {root / 'annotations'}")
    assert load(root / "coco2014_image_objects.json")[0]["objects"] == ["cat"]  # naming the file picks it


@pytest.mark.parametrize(
    "reply,expected",
    [
        ('```json\n["dog", "red car"]\n```', ["dog", "red car"]),
        ('Here they are:\n```json\n["dog"]\n```\nHope this helps.', ["dog"]),
        ("```json\n[]\n```", []),
        ('Objects in the answer:\n["dog", "cat"]', ["dog", "cat"]),  # no block: the last line, as it holds '["'
        ('["dog", "cat"]', ["dog", "cat"]),
        ('```json\n["dog",]\n```\n["cat"]', ["cat"]),  # a broken block falls back to the last line
        ('["dog"] are the objects.\nThat is all.', None),  # the last line is no JSON
        ("There is a dog and a cat.", None),
        ("[]", []),  # deviation 2: a bare empty list (the reference would ask again, then stop the run)
        ("Nothing visible:\n[]", []),
        ('```json\n{"objects": ["dog"]}\n```', None),  # deviation 3: not a list
        ('["dog", 3]', None),
    ],
)
def test_parse_object_list(reply, expected):
    assert parse_object_list(reply) == expected


QUESTIONS = [
    {"image_id": 1, "question": "Describe the image in detail."},
    {"image_id": 2, "question": "What is in this picture?"},
    {"image_id": 3, "question": "Describe the image in detail."},
    {"image_id": 4, "question": "What animal is this?"},
    {"image_id": 5, "question": "Is there a man?"},
    {"image_id": 6, "question": "What is the dog doing?"},
]
LLM_TRUTH = {"1": ["person", "dog"], "2": ["elephant"], "3": ["toilet", "cup"], "4": ["cat"], "5": ["person"]}
LLM_TRUTH |= {"6": ["dog"]}
ANSWERS = {
    "1": "Assistant: ANSWER-1 A man and his brother walk two dogs past a tennis player.",
    "2": "ANSWER-2 A baby elephant stands by its mother, next to a cup.",
    "3": "ANSWER-3 A toilet seat is up and a cup is on the tank.",
    "4": "ANSWER-4 A kitten naps on a sofa in the sun.",
    "5": "Yes, a man.",  # three words: no request, no objects
    "6": "ANSWER-6 The dog runs after a ball in the park.",
}
REPLIES = {  # by the answer the extraction prompt holds
    "ANSWER-1": ("text", 'Objects:\n["man", "brother", "dogs", "tennis player", "coffee table"]'),
    "ANSWER-2": ("text", '```json\n["elephant", "baby elephant", "cup"]\n```'),
    "ANSWER-3": ("text", '```json\n["toilet seat", "seat", "cup"]\n```'),
    "ANSWER-4": ("text", "A kitten and a sofa."),  # no list: unparsed
    "ANSWER-6": ("status", 500),  # the request fails
}


def reply_by_answer(body: dict):
    content = body["messages"][0]["content"]
    return next((r for key, r in REPLIES.items() if key in content), ("status", 500))


def judge_config(server, tmp_path: Path) -> JudgeConfig:
    return JudgeConfig(
        model="judge-x", base_url=server.base_url, api_key_env=None, max_retries=0, timeout=2.0,
        cache_dir=str(tmp_path / "cache"), concurrency=2,
    )  # fmt: skip


def test_llm_extraction_end_to_end(openai_server, tmp_path):
    openai_server.default = reply_by_answer
    items = load(write_data(tmp_path / "data", LLM_TRUTH, QUESTIONS))
    with pytest.raises(ValueError, match="objhal_llm is graded by an LLM judge"):
        score_outputs(LLM_BENCHMARK, items, ANSWERS)
    scored = score_outputs(LLM_BENCHMARK, items, ANSWERS, judge=Judge(judge_config(openai_server, tmp_path)))
    r = {rec["id"]: rec for rec in scored.records}
    assert len(openai_server.requests) == 5  # not for the three-word answer
    (first,) = [q["messages"] for q in openai_server.requests if "ANSWER-1" in q["messages"][0]["content"]]
    assert [m["role"] for m in first] == ["system"] and "Describe the image in detail." in first[0]["content"]
    assert "Assistant:" not in json.dumps(openai_server.requests) and "JSON list" in first[0]["content"]
    # 'dogs' → dog; 'tennis player' is no vocabulary term, so it is dropped, not read as 'player'
    assert r["1"]["names"] == ["man", "brother", "dog", "tennis player", "coffee table"]
    assert r["1"]["mentions"] == [
        ["man", "person"],
        ["brother", "person"],
        ["dog", "dog"],
        ["coffee table", "dining table"],
    ]
    assert r["1"]["hallucinated"] == [["coffee table", "dining table"]]
    assert r["2"]["names"] == ["elephant", "cup"]  # 'baby elephant' → elephant, de-duplicated
    assert r["3"]["names"] == ["toilet", "seat", "cup"] and r["3"]["mentions"] == [
        ["toilet", "toilet"],
        ["cup", "cup"],
    ]
    assert r["4"]["failure"] == "unparsed reply" and r["4"]["mentions"] is None
    assert r["5"]["extracted"] == [] and r["5"]["judge_model"] is None and r["5"]["failure"] is None
    assert r["6"]["failure"].startswith("judge error: InternalServerError")
    m = scored.metrics
    assert m["overall"] == {
        "chair_s": 2 / 4, "chair_s_refine": 2 / 3, "chair_i": 2 / 8, "recall": 5 / 6,
        "length": (13 + 12 + 13 + 3) / 4, "n": 4, "coco_responses": 3, "mentions": 8, "hallucinated_mentions": 2,
    }  # fmt: skip
    assert (m["extraction_errors"], m["unparsed"], m["extractor"]) == (2, 1, "llm")
    assert (m["judge_model"], m["judge_prompt"], m["tagger"]) == ("judge-x", PROMPT_VERSION, "textblob-pattern")

    # rerun: every answered request comes from the cache (the unparsed reply too); only the failed one is asked
    openai_server.default = lambda body: ("text", '["dog", "ball"]')
    again = score_outputs(LLM_BENCHMARK, items, ANSWERS, judge=Judge(judge_config(openai_server, tmp_path)))
    assert len(openai_server.requests) == 6 and "ANSWER-6" in openai_server.requests[-1]["messages"][0]["content"]
    assert again.metrics["extraction_errors"] == 1 and again.metrics["overall"]["n"] == 5
    third = score_outputs(LLM_BENCHMARK, items, ANSWERS, judge=Judge(judge_config(openai_server, tmp_path)))
    assert len(openai_server.requests) == 6 and third.metrics == again.metrics  # no request at all
    assert all(rec["judge_cached"] in (True, None) for rec in third.records)


def test_llm_with_a_user_prompt(openai_server, tmp_path):
    with pytest.raises(ValueError, match=r"lacks \{answer\}"):
        LLM_BENCHMARK.judge_prompt("Q: {question}")
    bench = LLM_BENCHMARK.judge_prompt("Q: {question}\nA: {answer}\nList the objects.")
    openai_server.default = ("text", '```json\n["puppy"]\n```')
    items = load(write_data(tmp_path / "data", LLM_TRUTH, QUESTIONS))[5:]
    scored = score_outputs(bench, items, {"6": "A {question} puppy runs on the grass."},
                           judge=Judge(judge_config(openai_server, tmp_path)))  # fmt: skip
    assert openai_server.requests[0]["messages"][0]["content"] == (
        "Q: What is the dog doing?\nA: A {question} puppy runs on the grass.\nList the objects."
    )
    (rec,) = scored.records
    assert rec["mentions"] == [["puppy", "dog"]] and rec["judge_prompt"].startswith("custom-")


# WordNet: the lemmas the rule-based path needs, for this vocabulary and the real refined one


def shared_benchmarks() -> Path | None:
    return benchmarks_root()


def refined_vocabulary() -> Vocabulary:
    """synonyms_refine.txt when this machine has it, else its equivalent: OPERA's synonym lists (CHAIR's shared
    file), stripped, plus the four refined additions (the only differences between the two files)."""
    root = shared_benchmarks()
    if root is not None and (root / "objhal" / "synonyms_refine.txt").is_file():
        return load_vocabulary(root / "objhal" / "synonyms_refine.txt")
    opera = json.loads((benchmark_dir("chair", "chair_vocabulary.json") / "chair_vocabulary.json").read_text())
    lines: dict[str, list[str]] = {}
    for word, category in opera["inverse_synonym_dict"].items():
        if word.strip():
            lines.setdefault(category, [category]).append(word)
    lines["person"] += ["brother", "pedestrian"]
    lines["dining table"].append("coffee table")
    lines["remote"].append("remote control")
    vocab = parse_synonyms("\n".join(", ".join(terms) for terms in lines.values()))
    assert len(vocab.objects) == 407  # as synonyms_refine.txt
    return vocab


@pytest.mark.parametrize("which", ["fixture", "refined"])
def test_noun_lemmas_match_wordnet(which):
    """The fallback's noun lemmas against WordNet's own (needs WordNet: make test puts ../shared's on NLTK's path)."""
    from nltk.stem import WordNetLemmatizer

    require_nltk_data(tagger=False)
    vocab, wnl = (VOCAB if which == "fixture" else refined_vocabulary()), WordNetLemmatizer()
    # the words, their double-word parts, every form a rule or an exception takes to one of them, plain plurals
    forms = set(vocab.lexicon) | set(NOUN_EXCEPTIONS) | {"brethren"}
    for w in vocab.lexicon:
        forms |= {w[: len(w) - len(new)] + old for old, new in NOUN_RULES if w.endswith(new)} | {w + "s", w + "es"}
    visible = set(vocab.objects) | {p for pair in vocab.double_words for p in pair.split()}

    def seen(lemma: str) -> str | None:
        return lemma if lemma in visible else None

    assert [f for f in sorted(forms) if seen(wnl.lemmatize(f)) != seen(noun_lemma(f, vocab.lexicon))] == []
    assert noun_lemma("brethren", vocab.lexicon) == "brother"
