"""NLTK's POS tagger and WordNet lemmatizer for the benchmark scorers, the reference tools' own, when installed.

The reference scorers tag with `nltk.pos_tag` (OPERA's CHAIR, AMBER) and lemmatise with `WordNetLemmatizer`
(CHAIR with the tag's POS, AMBER and Object HalBench as nouns). Both need NLTK data that no PyPI package ships:
`python -m nltk.downloader averaged_perceptron_tagger_eng wordnet` (or `$NLTK_DATA` pointing at a copy). Where it
is on NLTK's data path the scorers run the reference's steps; where it is not they fall back:
- tagger: the Pattern tagger bundled with `textblob` (a lexicon plus contextual rules, PTB tags). It agrees with
  nltk on most nouns; a known miss is a plural noun followed by a verb read as a verb ('teddy bears are');
- lemmatizer: `chair_text.noun_lemma`, WordNet's noun morphology with the WordNet facts the vocabularies need
  (exact for nouns; CHAIR then reads every token as a noun, `chair_text` deviation 1).
`notes()` says which ran; scorers store it with their metrics so numbers from the two are not mixed up.

Speed: `nltk.pos_tag` builds a new tagger (a 6 MB JSON read) per call and tags every token. Here one tagger is
loaded once, and `tags_at` computes the tags of the tokens a scorer needs only: the perceptron tags left to right,
each tag from the words around it and the two tags before it, and a word in the tagger's `tagdict` takes its tag
from there without looking at context, so a needed tag depends on the tags back to the nearest such words and no
further. Each tag is nltk's own `predict` over nltk's own features (memoised on everything they read), so the tags
are nltk's exactly (checked against `nltk.pos_tag` by tests/align/eval/test_tagging.py).
"""

from __future__ import annotations

import functools
import threading

import numpy as np

DOWNLOAD = "python -m nltk.downloader averaged_perceptron_tagger_eng wordnet"
TAGGER_RESOURCE = "taggers/averaged_perceptron_tagger_eng/"
WORDNET_POS = ("n", "v", "a", "r")  # the order of `lemma_options`
# textblob's tagger loads its lexicon lazily without a lock: a thread tagging during another thread's first load
# sees part of it ('a' → NN). Judge-scored benchmarks score in threads, so one Pattern tagging call at a time.
_PATTERN_LOCK = threading.Lock()
_PREDICTIONS: dict[tuple, str] = {}


@functools.cache
def nltk_tagger():
    """nltk's averaged-perceptron English tagger, loaded once, or None when its model is not on NLTK's path."""
    import nltk
    from nltk.tag.perceptron import PerceptronTagger

    try:
        nltk.data.find(TAGGER_RESOURCE)
    except LookupError:
        return None
    return PerceptronTagger()


@functools.cache
def wordnet_installed() -> bool:
    from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
    except LookupError:
        return False
    return True


def tagger_name() -> str:
    return "nltk-perceptron" if nltk_tagger() is not None else "textblob-pattern"


def lemmatizer_name() -> str:
    return "wordnet" if wordnet_installed() else "wordnet-noun-rules"


def notes(tagger: bool = True, fallback_tagger: str = "textblob-pattern") -> dict[str, str]:
    """What a scorer's text processing ran on, for its metrics: `reference` is 'yes' when it was the reference's
    own tagger (when `tagger`) and lemmatizer, else it says what to install. `fallback_tagger` names what the
    scorer tags with when nltk's model is missing ('none': it does not tag then)."""
    names = {"tagger": tagger_name() if nltk_tagger() is not None else fallback_tagger} if tagger else {}
    names["lemmatizer"] = lemmatizer_name()
    exact = wordnet_installed() and (not tagger or nltk_tagger() is not None)
    names["reference"] = "yes" if exact else f"no: NLTK data missing, results approximate (install: {DOWNLOAD})"
    return names


def text_mode(tagger: bool = True) -> str:
    """'reference' or 'fallback': part of cache keys for results that depend on it (COCO ground truth built here)."""
    return "reference" if notes(tagger)["reference"] == "yes" else "fallback"


def pos_tag(tokens: list[str]) -> list[tuple[str, str]]:
    """(token, PTB tag) for each token, in order, tokens unchanged: `nltk.pos_tag` when installed, else Pattern."""
    if not tokens:
        return []
    tagger = nltk_tagger()
    return tagger.tag(tokens) if tagger is not None else pattern_tag(tokens)


def pattern_tag(tokens: list[str]) -> list[tuple[str, str]]:
    """(token, PTB tag) by textblob's Pattern tagger, whatever NLTK data is installed. Object HalBench's phrase
    cleanup uses it always: its reference tags with spaCy, and on bare noun phrases Pattern is the closer of the
    two ('a puppy': NN here and in spaCy, JJ for nltk's perceptron), and a result then needs no NLTK data."""
    if not tokens:
        return []
    from textblob.en import tag

    with _PATTERN_LOCK:
        tagged = tag(" ".join(tokens), tokenize=False)  # Pattern splits on the spaces only: one tag per token
    if len(tagged) != len(tokens):  # a token holding whitespace would break the alignment
        raise ValueError(f"tagger returned {len(tagged)} tags for {len(tokens)} tokens: {tokens[:10]}")
    return [(tok, t) for tok, (_, t) in zip(tokens, tagged)]


def tags_at(tokens: list[str], positions: list[int]) -> dict[int, str]:
    """{position: the tag `nltk.pos_tag(tokens)` gives it} for the given positions (see the module docstring);
    Pattern's full tagging when nltk's model is not installed."""
    tagger = nltk_tagger()
    if tagger is None:
        tagged = pos_tag(tokens)
        return {i: tagged[i][1] for i in positions}
    tagdict = tagger.tagdict
    tags = {-1: tagger.START[0], -2: tagger.START[1]}  # nltk's prev and prev2 before the first token
    for i in positions:
        needed, stack = set(), [i]
        while stack:  # every position whose tag this one depends on
            j = stack.pop()
            if j >= 0 and j not in tags and j not in needed:
                needed.add(j)
                if tokens[j] not in tagdict:
                    stack += [j - 1, j - 2]
        for j in sorted(needed):
            tags[j] = tagdict.get(tokens[j]) or _predict(tagger, tokens, j, tags[j - 1], tags[j - 2])
    return {i: tags[i] for i in positions}


def _predict(tagger, tokens: list[str], i: int, prev: str, prev2: str) -> str:
    """nltk's tag for token i, not in the tagdict. nltk's features read the token, its normalised context
    (START + normalised tokens + END) at i .. i+4, and the two tags: that window is passed to nltk's own
    `_get_features` as a context of its own, with the same offsets."""
    n, padded = len(tokens), tagger.START + tagger.END
    window = [
        tagger.normalize(tokens[k]) if 0 <= k < n else padded[k + 2 if k < 0 else k - n + 2]
        for k in range(i - 2, i + 3)
    ]
    key = (tokens[i], prev, prev2, *window)
    tag = _PREDICTIONS.get(key)
    if tag is None:
        if len(_PREDICTIONS) > 1 << 18:
            _PREDICTIONS.clear()
        tag = _PREDICTIONS[key] = _scorer(tagger.model).predict(features(tokens[i], window, prev, prev2))
    return tag


def features(word: str, window: list[str], prev: str, prev2: str) -> tuple[str, ...]:
    """`PerceptronTagger._get_features` for a word and its window (context[i:i+5]), in nltk's order: 14 distinct
    feature names, each with value 1 (checked against nltk's own by tests/align/eval/test_tagging.py)."""
    before2, before, here, after, after2 = window
    return (
        "bias",
        "i suffix " + word[-3:],
        "i pref1 " + (word[0] if word else ""),
        "i-1 tag " + prev,
        "i-2 tag " + prev2,
        f"i tag+i-2 tag {prev} {prev2}",
        "i word " + here,
        f"i-1 tag+i word {prev} {here}",
        "i-1 word " + before,
        "i-1 suffix " + before[-3:],
        "i-2 word " + before2,
        "i+1 word " + after,
        "i+1 suffix " + after[-3:],
        "i+2 word " + after2,
    )


class PerceptronScores:
    """nltk's `AveragedPerceptron.predict` with each feature's weights as a vector over the classes (built the
    first time the feature is seen), so a prediction is one cumulative sum instead of Python loops over every
    (feature, class) weight. Exact: each class's score is the same sum in the same order (features in their
    order, each weight once; an absent weight adds 0.0, which changes no sum; `cumsum` adds row after row), and
    the best class is chosen as nltk does, the highest score and among equal scores the greatest label."""

    def __init__(self, model):
        self.weights, self.labels = model.weights, sorted(model.classes)
        self.index = {label: k for k, label in enumerate(self.labels)}
        self.vectors: dict[str, np.ndarray] = {}

    def vector(self, feature: str) -> np.ndarray:
        vec = self.vectors.get(feature)
        if vec is None:
            vec = np.zeros(len(self.labels))
            for label, weight in self.weights[feature].items():
                if label in self.index:  # nltk ranks model.classes only
                    vec[self.index[label]] = weight
            self.vectors[feature] = vec
        return vec

    def predict(self, names: tuple[str, ...]) -> str:
        """The best class for features that each have value 1 (as all of the tagger's do)."""
        rows = [self.vector(f) for f in names if f in self.weights]
        scores = np.cumsum(np.array(rows), axis=0)[-1] if rows else np.zeros(len(self.labels))
        return max(self.labels[k] for k in np.flatnonzero(scores == scores.max()))


@functools.cache
def _scorer(model) -> PerceptronScores:
    return PerceptronScores(model)


def wordnet_pos(tag: str) -> str:
    """The WordNet POS a PTB tag lemmatises with in OPERA's CHAIR: J adjective, V verb, R adverb, else noun."""
    return {"J": "a", "V": "v", "R": "r"}.get(tag[:1], "n")


@functools.lru_cache(maxsize=1 << 16)
def wordnet_lemma(token: str, pos: str = "n") -> str:
    """`WordNetLemmatizer().lemmatize(token, pos)` as nltk 3.8.1 computes it (OPERA's pin; AMBER's and RLHF-V's
    time), from WordNet's own tables as nltk loads them (needs WordNet installed). 3.8.1's morphy differs from
    today's in one case: for a word that neither WordNet nor its exception list has as a form of that POS, it
    re-applies the suffix rules until one gives a WordNet word ('dogss' -> 'dog'); nltk >= 3.9 returns the word."""
    from nltk.corpus import wordnet as wn

    forms = _morphy_381(wn, token, pos)
    return min(forms, key=len) if forms else token


def _morphy_381(wn, form: str, pos: str) -> list[str]:
    lemmas, rules = wn._lemma_pos_offset_map, wn.MORPHOLOGICAL_SUBSTITUTIONS[pos]

    def known(forms: list[str]) -> list[str]:
        return list(dict.fromkeys(f for f in forms if pos in lemmas.get(f, ())))

    def apply_rules(forms: list[str]) -> list[str]:
        return [f[: -len(old)] + new for f in forms for old, new in rules if f.endswith(old)]

    exceptions = wn._exception_map[pos]
    if form in exceptions:
        return known([form, *exceptions[form]])
    forms = apply_rules([form])
    found = known([form, *forms])
    while not found and forms:
        forms = list(dict.fromkeys(apply_rules(forms)))  # repeats change no result and would multiply
        found = known(forms)
    return found


@functools.lru_cache(maxsize=1 << 16)
def lemma_options(token: str) -> tuple[str, str, str, str]:
    """The token's WordNet lemma as a noun, verb, adjective and adverb (WORDNET_POS order)."""
    return tuple(wordnet_lemma(token, pos) for pos in WORDNET_POS)
