"""NLTK's tagger and WordNet as the scorers use them: lazy tags equal to nltk.pos_tag, nltk 3.8.1's lemmas, notes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from align.eval import tagging
from align.eval.chair_text import tokenize
from tests.align.eval.test_benchmarks_chair import opera_reference
from tests.shared_data import require_nltk_data

DATA = Path(__file__).parent / "data"


def test_tags_at_any_positions_equal_nltk_pos_tag():
    """Every position of 360 OPERA captions, and random subsets of positions asked in random order (the tags a
    needed tag depends on are computed on the way and memoised): the tags are nltk.pos_tag's."""
    require_nltk_data()
    import nltk

    rng = random.Random(0)
    captions = [row[1] for s in opera_reference()["sets"].values() for row in s["captions"][:60]]
    captions += ["", "A dog.", "Two 1990 cars, a well-known 3-legged dog and e.g. a cat!"]
    for caption in captions:
        tokens = tokenize(caption)
        expected = dict(enumerate(tag for _, tag in nltk.pos_tag(tokens)))
        assert tagging.tags_at(tokens, list(range(len(tokens)))) == expected, caption
        some = rng.sample(range(len(tokens)), k=min(len(tokens), rng.randint(0, 6)))
        assert tagging.tags_at(tokens, some) == {i: expected[i] for i in some}, caption


def test_features_are_nltks():
    """The feature names, in nltk's order, each with value 1, for words at the edges and inside a sentence."""
    require_nltk_data()
    tagger = tagging.nltk_tagger()
    tokens = ["a", "well-known", "1990", "dog", "", "."]
    context = tagger.START + [tagger.normalize(w) for w in tokens] + tagger.END
    for i, word in enumerate(tokens):
        nltk_features = tagger._get_features(i, word, context, "DT", "-START-")
        ours = tagging.features(word, context[i : i + 5], "DT", "-START-")
        assert list(nltk_features.items()) == [(name, 1) for name in ours], word


def test_tags_fall_back_to_pattern_without_nltk_model(no_nltk_data):
    tokens = ["a", "dog", "runs", "on", "the", "grass", "."]
    assert tagging.tags_at(tokens, [1, 2]) == {1: "NN", 2: "VBZ"}
    assert tagging.pos_tag(tokens) == tagging.pattern_tag(tokens) and tagging.tagger_name() == "textblob-pattern"


def test_wordnet_lemmas_are_nltk_381s():
    """OPERA pinned nltk 3.8.1: its morphy re-applies the suffix rules to a word WordNet lacks, later ones do not.
    The expected lemmas were computed under nltk 3.8.1 with the same WordNet 3.0."""
    require_nltk_data(tagger=False)
    from nltk.stem import WordNetLemmatizer

    expected = json.loads((DATA / "wordnet_lemmas_nltk381.json").read_text())
    for kind in ("differs", "same"):
        for pos, table in expected[kind].items():
            assert {w: tagging.wordnet_lemma(w, pos) for w in table} == table, (kind, pos)
    assert tagging.wordnet_lemma("dogss") == "dog" and WordNetLemmatizer().lemmatize("dogss") == "dogss"
    words = ["dogs", "geese", "skiing", "seated", "knives", "men", "better", "children", "buses", "mice"]
    for pos in tagging.WORDNET_POS:  # where WordNet has the form, both versions agree
        assert [tagging.wordnet_lemma(w, pos) for w in words] == [WordNetLemmatizer().lemmatize(w, pos) for w in words]
    assert tagging.lemma_options("seated") == ("seated", "seat", "seated", "seated")


def test_notes_say_which_ran(no_nltk_data):
    notes = tagging.notes()
    assert (notes["tagger"], notes["lemmatizer"]) == ("textblob-pattern", "wordnet-noun-rules")
    assert notes["reference"].startswith("no: NLTK data missing") and tagging.DOWNLOAD in notes["reference"]
    assert tagging.text_mode() == "fallback" and "tagger" not in tagging.notes(tagger=False)


def test_notes_with_nltk_data():
    require_nltk_data()
    assert tagging.notes() == {"tagger": "nltk-perceptron", "lemmatizer": "wordnet", "reference": "yes"}
    assert tagging.text_mode() == "reference"


@pytest.mark.parametrize("tag, pos", [("JJR", "a"), ("VBN", "v"), ("RB", "r"), ("NNS", "n"), ("DT", "n"), (".", "n")])
def test_wordnet_pos_as_opera(tag, pos):
    assert tagging.wordnet_pos(tag) == pos
