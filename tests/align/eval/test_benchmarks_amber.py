"""AMBER: discriminative (exact "Yes"/"No" answers, No-positive F1 by hand, dimension and sub-type buckets),
generative (every rule of the reference's noun loop by hand, the similarity hook, WordNet lemmas), AMBER score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.eval import tagging
from align.eval.benchmarks import BENCHMARKS, score_outputs
from align.eval.benchmarks import amber as amber_module
from align.eval.benchmarks.amber import load, make_benchmark, score
from align.eval.benchmarks.amber_generative import (
    Vocabulary,
    default_similarity,
    extract_nouns,
    judge_nouns,
    load_vocabulary,
)
from align.eval.chair_text import NOUN_EXCEPTIONS, NOUN_RULES, noun_lemma
from tests.shared_data import benchmark_dir, require_nltk_data

AMBER = BENCHMARKS["amber"]
# id: (type, truth, output); ids 1-2 are generative descriptions, as ids 1-1004 are in the real data
CASES = {
    3: ("discriminative-hallucination", "no", "No"),  # right
    4: ("discriminative-hallucination", "no", "no"),  # neither: lower case
    5: ("discriminative-attribute-state", "yes", "Yes"),  # right
    6: ("discriminative-attribute-state", "no", "Yes."),  # neither: trailing period
    7: ("discriminative-attribute-number", "no", "No"),  # right
    8: ("discriminative-attribute-action", "yes", "No"),  # wrong, answered No
    9: ("discriminative-relation", "yes", "No, there is not"),  # neither
    10: ("relation", "no", "No"),  # right
}
OUTPUTS = {str(i): out for i, (_, _, out) in CASES.items()}
# a small relation.json: H = keys and values; 'hound' is both an object and the association word of 'dog'
RELATION = {
    "dog": ["hound"],
    "hound": [],
    "grass": ["lawn"],
    "sky": [],
    "cat": ["kitten"],
    "car": ["truck"],
    "bird": [],
    "bus": [],
    "camera": [],
    "lamp": ["light"],
}
SAFE_WORDS = ["camera", "light"]
VOCAB = Vocabulary.from_tables(RELATION, SAFE_WORDS)
# id: (truth, hallu, description)
GENERATIVE = {
    1: (["dog", "grass"], ["cat", "car"], "A dog and a hound sit on the lawn. There is a camera, a cat and a bus."),
    2: (["sky"], ["bird"], "The sky is clear."),
}
GEN_OUTPUTS = {str(i): text for i, (_, _, text) in GENERATIVE.items()}


def shared_benchmarks() -> Path:
    return benchmark_dir("amber", "annotations.json").parent


def write_amber(data: Path) -> Path:
    """AMBER's data/ layout: annotations.json indexed by id - 1, query/query_all.json, relation.json and
    safe_words.txt (one word per line, no final newline, as AMBER's file)."""
    (data / "query").mkdir(parents=True)
    ann = [{"id": i, "type": "generative", "truth": t, "hallu": h} for i, (t, h, _) in GENERATIVE.items()]
    ann += [{"id": i, "type": t, "truth": truth} for i, (t, truth, _) in CASES.items()]
    queries = [{"id": i, "image": f"AMBER_{i}.jpg", "query": "Describe this image."} for i in GENERATIVE]
    queries += [{"id": i, "image": f"AMBER_{i}.jpg", "query": f"Is it so {i}?"} for i in CASES]
    (data / "annotations.json").write_text(json.dumps(ann))
    (data / "query" / "query_all.json").write_text(json.dumps(queries))
    (data / "relation.json").write_text(json.dumps(RELATION))
    (data / "safe_words.txt").write_text("\n".join(SAFE_WORDS))
    return data


@pytest.mark.parametrize(
    "output,exact,lenient",
    [
        ("Yes", "yes", "yes"),
        ("No", "no", "no"),
        ("yes", None, "yes"),
        ("Yes.", None, "yes"),
        ("No, there is not", None, "no"),
        (" No", None, "no"),  # no stripping, as in the reference
        ("No\n", None, "yes"),  # POPE parsing only splits on spaces, so "No\n" is not the word 'No'
    ],
)
def test_only_the_exact_strings_count(output, exact, lenient):
    r = score({"dimension": "existence", "subtype": None, "truth": "no"}, output)
    assert r["pred"] == exact and r["lenient"] == lenient and r["correct"] == (exact == "no")


def test_load_items_dimensions_and_splits(tmp_path):
    data = write_amber(tmp_path / "data")
    items = load(data)
    assert [it["id"] for it in items] == [str(i) for i in CASES]  # generative ids left out
    assert items[0] == {
        "id": "3",
        "image": "AMBER_3.jpg",
        "prompt": "Is it so 3?",
        "truth": "no",
        "dimension": "existence",
        "subtype": None,
    }
    assert [it["subtype"] for it in load(data, "attribute")] == ["state", "state", "number", "action"]
    assert [it["id"] for it in load(data, "relation")] == ["9", "10"]  # both relation types
    assert len(load(data, "existence")) == 2 and len(load(data, "discriminative")) == 8
    assert len(load(tmp_path)) == 8  # the repository root holding data/ works too


def test_unknown_splits_are_clear_errors(tmp_path):
    data = write_amber(tmp_path / "data")
    with pytest.raises(ValueError, match="unknown AMBER split 'exist'"):
        load(data, "exist")
    with pytest.raises(FileNotFoundError, match="annotations.json not found"):
        load(tmp_path / "nowhere")


def test_no_positive_metrics_by_hand(tmp_path):
    m = score_outputs(AMBER, load(write_amber(tmp_path / "data")), OUTPUTS).metrics
    # truth "no": 3 4 6 7 10; answered exactly "No": 3 7 8 10; both: 3 7 10; right: 3 5 7 10
    o = m["overall"]
    assert (o["precision"], o["recall"], o["accuracy"]) == pytest.approx((3 / 4, 3 / 5, 4 / 8))
    assert o["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6 + 1e-4))
    assert o["n"] == 8 and o["neither"] == 3
    # lenient (POPE parsing): 4 → no, 6 → yes, 9 → no; answered no 3 4 7 8 9 10, right no 3 4 7 10; right 3 4 5 7 10
    assert o["lenient_accuracy"] == pytest.approx(5 / 8)
    assert o["lenient_f1"] == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5 + 1e-4))


def test_dimension_and_subtype_buckets_by_hand(tmp_path):
    m = score_outputs(AMBER, load(write_amber(tmp_path / "data")), OUTPUTS).metrics
    assert list(m) == [
        "overall",
        "existence",
        "attribute",
        "attribute/state",
        "attribute/number",
        "attribute/action",
        "relation",
    ]
    ex, at, rel = m["existence"], m["attribute"], m["relation"]
    assert (ex["precision"], ex["recall"], ex["accuracy"], ex["neither"]) == pytest.approx((1, 0.5, 0.5, 1))
    assert ex["f1"] == pytest.approx(1 / 1.5001)
    assert (at["precision"], at["recall"], at["accuracy"], at["n"]) == pytest.approx((0.5, 0.5, 0.5, 4))
    assert m["attribute/state"]["f1"] == 0.0  # nobody answered "No": precision and recall 0, not NaN
    assert m["attribute/number"]["accuracy"] == 1.0 and m["attribute/action"]["accuracy"] == 0.0
    assert (rel["precision"], rel["recall"], rel["accuracy"]) == pytest.approx((1, 1, 0.5))


def test_one_dimension_scores_only_its_bucket(tmp_path):
    items = load(write_amber(tmp_path / "data"), "existence")
    scored = score_outputs(AMBER, items, OUTPUTS)
    assert list(scored.metrics) == ["overall", "existence"]
    assert scored.counts["unmatched_outputs"] == 6


def test_real_annotations():
    root = shared_benchmarks()
    items = load(root / "amber")
    assert len(items) == 14216 and all(int(it["id"]) > 1004 for it in items)
    sizes = {s: len(load(root / "amber", s)) for s in ("existence", "attribute", "relation")}
    assert sizes == {"existence": 4924, "attribute": 7628, "relation": 1664}
    subtypes = [it["subtype"] for it in items if it["dimension"] == "attribute"]
    assert (subtypes.count("state"), subtypes.count("number"), subtypes.count("action")) == (4764, 2072, 792)
    assert all(it["truth"] == "no" for it in items if it["dimension"] == "existence")


# --- generative task ---------------------------------------------------------------------------------------


def judged(nouns, truth, hallu, similarity=None) -> dict:
    return judge_nouns(nouns, truth, hallu, VOCAB, similarity)


def test_global_safe_word_counts_as_a_noun_but_is_never_hallucinated():
    r = judged(["camera", "light", "bus"], ["dog"], ["cat"])
    assert r["nouns"] == ["camera", "light", "bus"] and r["hallucinated"] == ["bus"]  # CHAIR 1/3, not 1/1
    assert r["covered"] == [] and r["hallu_mentioned"] == []


def test_association_word_covers_its_truth_object():
    r = judged(["lawn", "hound"], ["dog", "grass"], ["cat"])
    assert r["covered"] == ["dog", "grass"] and r["hallucinated"] == [] and r["truth_objects"] == 2


def test_hallu_word_counts_for_cog_and_as_a_hallucination():
    r = judged(["kitten", "cat", "bus"], ["dog"], ["cat", "car"])
    assert r["hallu_mentioned"] == ["cat"] and r["hallu_objects"] == 2  # 'kitten' and 'cat' mark the same object
    assert r["hallucinated"] == ["kitten", "cat", "bus"]


def test_first_entry_decides_which_object_a_word_marks():
    # safe list: assoc(hound)=[] + assoc(dog)=['hound'] + ['hound', 'dog']: 'hound' is first dog's association word
    assert judged(["hound"], ["hound", "dog"], [])["covered"] == ["dog"]
    # a truth object listed twice counts twice in Cover's denominator but is covered once
    r = judged(["dog", "dog"], ["dog", "dog"], [])
    assert r["covered"] == ["dog"] and r["truth_objects"] == 2
    # a word that is a truth and a hallu object of the image only ever covers
    r = judged(["cat"], ["cat"], ["cat"])
    assert (r["covered"], r["hallu_mentioned"], r["hallucinated"]) == (["cat"], [], [])


def test_repeated_noun_counts_each_time():
    r = judged(["bus", "bus", "dog", "dog"], ["dog"], [])
    assert r["hallucinated"] == ["bus", "bus"] and len(r["nouns"]) == 4 and r["covered"] == ["dog"]


def test_nouns_keep_case_lemmatise_plurals_and_repeat(nltk_mode):
    # 'Dogs' (sentence-initial) is its own lemma and no H word: the reference matches case-sensitively
    assert extract_nouns("Dogs lie on the grass near two dogs and a dog.", VOCAB) == ["grass", "dog", "dog"]
    assert extract_nouns("A dog and a hound sit on the lawn under the sky.", VOCAB) == ["dog", "hound", "lawn", "sky"]
    assert extract_nouns("", VOCAB) == []


def test_tagger_readings_are_the_references(nltk_mode):
    """nltk's perceptron tags 'puppy' JJ wherever it stands, so AMBER's own scorer never counts that H word;
    the fallback's Pattern tagger reads it as a noun. 'Puppies' (NNS) counts in both."""
    vocab = Vocabulary.from_tables({"dog": ["puppy"], "puppy": []}, [])
    nouns = extract_nouns("A puppy and two puppies sit by a dog.", vocab)
    assert nouns == (["puppy", "dog"] if nltk_mode == "reference" else ["puppy", "puppy", "dog"])


def table_similarity(table: dict[tuple[str, str], float]):
    """A stand-in for spaCy: 1.0 for the same word (as Doc.similarity), the table's value, else 0."""

    def similarity(a: str, b: str) -> float:
        return 1.0 if a == b else table.get((a, b), 0.0)

    return similarity


def test_similarity_step_as_the_reference_runs_it():
    # ha = [kitten, truck, cat, car], safe = [hound, lawn, dog, grass]
    sim = table_similarity({("bus", "truck"): 0.9, ("cat", "lawn"): 0.81, ("van", "truck"): 0.8})
    r = judged(["bus", "cat", "van"], ["dog", "grass"], ["cat", "car"], sim)
    # bus ~ truck marks car (Cog) and is still hallucinated; cat marks cat, then ~ lawn covers grass and is not
    # hallucinated; 0.8 is not above the threshold
    assert r["hallu_mentioned"] == ["cat", "car"] and r["covered"] == ["grass"]
    assert r["hallucinated"] == ["bus", "van"]
    assert judged(["bus", "cat", "van"], ["dog", "grass"], ["cat", "car"])["hallucinated"] == ["bus", "cat", "van"]
    # the first similar word wins, and a global safe word never reaches the step
    sim = table_similarity({("bus", "hound"): 0.95, ("bus", "grass"): 0.99, ("camera", "dog"): 0.99})
    assert judged(["bus", "camera"], ["dog", "grass"], [], sim)["covered"] == ["dog"]


def test_load_generative_and_all(tmp_path):
    data = write_amber(tmp_path / "data")
    items = load(data, "generative")
    assert items == [
        {
            "id": "1",
            "image": "AMBER_1.jpg",
            "prompt": "Describe this image.",
            "max_new_tokens": 512,  # descriptions are long; the yes/no questions keep the benchmark's 16
            "truth": ["dog", "grass"],
            "hallu": ["cat", "car"],
            "dimension": "generative",
            "vocabulary": str(data),
        },
        {**items[0], "id": "2", "image": "AMBER_2.jpg", "truth": ["sky"], "hallu": ["bird"]},
    ]
    assert [it["id"] for it in load(data, "all")] == [str(i) for i in (1, 2, *CASES)]
    assert [it["id"] for it in load(tmp_path, "all")][:2] == ["1", "2"]  # the repository root works too


def test_per_task_query_files(tmp_path):
    data = write_amber(tmp_path / "data")
    queries = json.loads((data / "query" / "query_all.json").read_text())
    (data / "query" / "query_all.json").unlink()
    (data / "query" / "query_discriminative.json").write_text(json.dumps(queries[2:]))
    assert len(load(data)) == 8
    with pytest.raises(FileNotFoundError, match="neither query_all.json nor query_generative.json"):
        load(data, "all")
    (data / "query" / "query_generative.json").write_text(json.dumps(queries[:2]))
    assert [it["id"] for it in load(data, "all")] == [str(i) for i in (1, 2, *CASES)]


def test_generative_data_errors_name_the_problem(tmp_path):
    data = write_amber(tmp_path / "data")
    ann = json.loads((data / "annotations.json").read_text())
    ann[1]["hallu"] = ["bird", "unicorn"]
    (data / "annotations.json").write_text(json.dumps(ann))
    with pytest.raises(ValueError, match=r"generative id 2 has objects that .*relation.json does not list: 'unicorn'"):
        load(data, "generative")
    assert len(load(data)) == 8  # the yes/no questions need no vocabulary
    (data / "relation.json").unlink()
    with pytest.raises(FileNotFoundError, match="relation.json not found"):
        load(data, "all")


def test_generative_metrics_by_hand(tmp_path, nltk_mode):
    data = write_amber(tmp_path / "data")
    m = score_outputs(make_benchmark(None), load(data, "generative"), GEN_OUTPUTS).metrics
    # id 1: dog, hound (→ dog), lawn (→ grass), camera (safe), cat (hallu: Cog and hallucinated), bus (hallucinated)
    # id 2: sky (covered)
    assert list(m) == ["generative"]
    g = m["generative"]
    assert (g["chair"], g["cover"], g["hal"], g["cog"]) == pytest.approx((2 / 7, 3 / 3, 1 / 2, 1 / 3))
    assert (g["n"], g["nouns"], g["hallucinated_nouns"]) == (2, 7, 2)
    assert (g["tagger"], g["similarity"]) == (tagging.tagger_name(), "none")


def test_similarity_hook_through_the_benchmark(tmp_path):
    items = load(write_amber(tmp_path / "data"), "generative")
    sim = table_similarity({("bus", "truck"): 0.9, ("cat", "lawn"): 0.81})
    scored = score_outputs(make_benchmark(sim, "table"), items, GEN_OUTPUTS)
    g = scored.metrics["generative"]
    # bus ~ truck marks car; cat ~ lawn is no longer hallucinated
    assert (g["chair"], g["cover"], g["hal"], g["cog"]) == pytest.approx((1 / 7, 1, 1 / 2, 2 / 3))
    assert g["similarity"] == "table" and scored.records[0]["hallucinated"] == ["bus"]


def test_amber_score_on_the_all_split(tmp_path):
    items = load(write_amber(tmp_path / "data"), "all")
    m = score_outputs(make_benchmark(None), items, {**GEN_OUTPUTS, **OUTPUTS}).metrics
    assert list(m) == ["generative", *NO_POSITIVE_GROUPS, "amber_score"]
    f1 = 2 * 0.75 * 0.6 / (0.75 + 0.6 + 1e-4)  # the discriminative overall F1 of test_no_positive_metrics_by_hand
    assert m["overall"]["f1"] == pytest.approx(f1) and m["overall"]["n"] == 8
    assert m["amber_score"] == pytest.approx((100 - 100 * 2 / 7 + 100 * f1) / 2)
    assert amber_module.amber_score(0.1, 0.8) == pytest.approx(85.0)


NO_POSITIVE_GROUPS = [
    "overall",
    "existence",
    "attribute",
    "attribute/state",
    "attribute/number",
    "attribute/action",
    "relation",
]


def test_module_benchmark_through_score_outputs(tmp_path):
    # nouns that settle before the similarity step or are far from every object, so spaCy (when installed)
    # gives the same numbers: id 1 covers dog and grass; id 2 covers sky, skips camera, hallucinates bus
    items = load(write_amber(tmp_path / "data"), "generative")
    outputs = {"1": "A dog on the grass.", "2": "The sky is clear. A camera and a bus."}
    scored = score_outputs(amber_module.BENCHMARK, items, outputs)
    g = scored.metrics["generative"]
    assert (g["chair"], g["cover"], g["hal"], g["cog"]) == pytest.approx((1 / 5, 1, 1 / 2, 0))
    assert g["similarity"] == default_similarity()[1] and BENCHMARKS["amber"].splits == amber_module.SPLITS
    assert scored.records[1] == {
        "id": "2",
        "dimension": "generative",
        "nouns": ["sky", "camera", "bus"],
        "hallucinated": ["bus"],
        "covered": ["sky"],
        "hallu_mentioned": [],
        "truth_objects": 1,
        "hallu_objects": 1,
        "output": "The sky is clear. A camera and a bus.",
    }
    assert amber_module.BENCHMARK.generation["max_new_tokens"] == 16  # yes/no answers; descriptions carry 512


# --- real AMBER files and WordNet ----------------------------------------------------------------------------


def real_vocabulary() -> Vocabulary:
    root = shared_benchmarks()
    return load_vocabulary(root / "amber")


def test_real_generative_items_and_vocabulary():
    vocab = real_vocabulary()
    root = shared_benchmarks() / "amber"
    items = load(root, "generative")
    assert [it["id"] for it in items] == [str(i) for i in range(1, 1005)]
    assert sum(len(it["truth"]) for it in items) == 5599 and sum(len(it["hallu"]) for it in items) == 4924
    assert len(load(root, "all")) == 15220
    assert (len(vocab.association), len(vocab.words)) == (340, 418)
    assert vocab.safe_words == set("orange snack line camera light shoe sign range individual".split())


def test_real_vocabulary_keeps_wordnets_quirks():
    lexicon = real_vocabulary().lexicon
    expected = {
        "dogs": "dog",
        "men": "men",  # a WordNet noun itself, as short as 'man'
        "vases": "vas",
        "leaves": "leaf",  # not H's 'leave'
        "sunglasses": "sunglass",  # H's 'sunglasses' can never be kept
        "potatoes": "potato",
        "TV": "TV",
        "TVs": "TVs",  # 'TV' is no WordNet noun as spelled
        "paragliders": "paragliders",  # WordNet lacks 'paraglider'
    }
    assert {w: noun_lemma(w, lexicon) for w in expected} == expected


def test_noun_lemmas_match_wordnet_wherever_amber_can_see():
    """The fallback's noun lemmas against WordNet's own (needs WordNet: make test puts ../shared's on NLTK's path)."""
    from nltk.stem import WordNetLemmatizer

    require_nltk_data(tagger=False)
    vocab, wnl = real_vocabulary(), WordNetLemmatizer()
    # H's words, every form from which a rule or an exception reaches one, their plurals and capitalised forms
    forms = set(vocab.words) | set(vocab.lexicon) | set(NOUN_EXCEPTIONS)
    for w in vocab.words:
        forms |= {w[: len(w) - len(new)] + old for old, new in NOUN_RULES if w.endswith(new)}
        forms |= {w + "s", w + "es", w.capitalize(), w.capitalize() + "s"}

    def seen(lemma: str) -> str | None:
        return lemma if lemma in vocab.words else None

    assert len(forms) > 1500
    assert [f for f in sorted(forms) if seen(wnl.lemmatize(f)) != seen(noun_lemma(f, vocab.lexicon))] == []
