"""AMBER's generative task: an image description's nouns against the image's truth and hallu objects.

The reference (junyangwang0410/AMBER `inference.py`) scores each response so:
1. nouns: `nltk.word_tokenize` on the response as written (no case folding), `nltk.pos_tag`, the tokens tagged
   NN*, each lemmatised by `WordNetLemmatizer().lemmatize` (noun); only those in the hallucination vocabulary H
   (keys and values of `relation.json`, matched case-sensitively) are kept, repeats included;
2. the image's `safe` list is every truth object's associated words (relation.json), each standing for its
   object, then the truth objects; `ha` is the same for the hallu objects;
3. per noun: a global safe word (`safe_words.txt`) is skipped but still counts as a noun; a noun in `safe` marks
   the object of its *first* entry there as covered and is done; a noun in `ha` marks the object of its first
   entry there and goes on; then the first `ha` word with spaCy similarity above 0.8 marks its object, and the
   first `safe` word above 0.8 marks its object and ends the noun; a noun that got this far is hallucinated.
Metrics, micro over responses: CHAIR = hallucinated nouns / nouns kept; Cover = covered truth objects / truth
objects; Hal = responses with >= 1 hallucinated noun / responses; Cog = marked hallu objects / hallu objects.

Reference behaviour kept on purpose (it moves numbers, so it is part of the protocol):
- case matters: a sentence-initial 'Dogs' lemmatises to itself and is no H word; 'TV' matches only as 'TV';
- a hallu noun both marks Cog and counts as hallucinated; a word that is a truth and a hallu object of the same
  image (61 images) only ever covers;
- first-entry order: an association word comes before every object name, so a word that names one truth object
  and is another's association word covers the other; a truth object listed twice counts twice in Cover's
  denominator and can be covered once;
- WordNet's noun lemmas as they fall: 'men' stays 'men' (so only the singular 'man' counts), 'vases' becomes
  'vas', 'leaves' becomes 'leaf' (H has 'leave'), and the H words 'sunglasses', 'chopsticks', 'earrings' and
  'slippers' never count, WordNet turning them into singulars H lacks; a plural of an H word WordNet lacks
  ('paragliders') stays plural and does not count. A multi-word H entry could never match one token (AMBER's
  file has none).

Deviations, each changing a result only in the case named (all offline, nothing downloaded at run time):
1. Similarity: spaCy's `en_core_web_lg` is no PyPI package. When `spacy` and that model are importable it is used
   (`nlp(a).similarity(nlp(b))`, cached per pair); otherwise the similarity step is dropped and only exact and
   association matches count, which raises CHAIR and Hal and lowers Cover and Cog against the reference. Any
   `similarity(a, b) -> float` can be plugged in (`amber.make_benchmark`); the metrics name the choice
   (`similarity`: "en_core_web_lg", "none" or the name given).
2. POS tags and lemmas: with NLTK's tagger and WordNet installed, nltk's own (`align.eval.tagging`: the tags of
   the tokens whose noun lemma is in H, which are the only ones that can change a result, and WordNet's lemmas
   with nltk 3.8.1's morphy, current at AMBER's release). Its readings are part of the protocol then: nltk's
   perceptron tags 'puppy' JJ wherever it stands, so that H word never counts. Without the tagger, textblob's
   Pattern tagger, which tags some nouns differently (a plural before a verb read as a verb, 'puppy' NN); the
   metrics name both (`tagger`, `lemmatizer`, and `reference`: yes only with both NLTK models).
3. Tokens: `chair_text.nltk_tokens`, nltk's word tokenizer with nltk 3.8.1's rules (AMBER pins no version; 3.8.1
   was current at its release; nltk >= 3.9 also splits an opening single quote and en/em dashes off a word) on
   sentences from an untrained Punkt (the trained one is a download). It knows no abbreviations, so 'Mr.' or
   'e.g.' lose their period to a token of their own: no H word (none is an abbreviation) changes, but the tagger
   sees one more token there.
4. Lemmas without WordNet: `chair_text.noun_lemma` with WordNet 3.0's facts as far as H needs them
   (NOT_IN_WORDNET and OUTSIDE_WINNERS below, noun exceptions in chair_text), exact for AMBER's relation.json
   (checked against `WordNetLemmatizer` by tests/align/eval/test_benchmarks_amber.py); a word added to
   relation.json gets the regular rules, and 3.8.1's morphy on non-words ('dogss' → dog) is not reproduced.
5. Rates are exact fractions in [0, 1]; the reference prints percentages rounded to 0.1 from counters whose
   denominators start at 0.001, and prints Hal as 100 minus the share of responses without a hallucination.
6. A truth or hallu object missing from relation.json's keys is an error naming the id when the data is loaded
   (the reference stops with a bare KeyError while scoring).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from align.eval import tagging
from align.eval.chair_text import nltk_tokens, noun_lemma

RELATION_FILE = "relation.json"
SAFE_WORDS_FILE = "safe_words.txt"
SPACY_MODEL = "en_core_web_lg"
SIMILARITY_THRESHOLD = 0.8  # the reference's --similarity_score default; a pair must be strictly above it
# H words that are not WordNet 3.0 nouns as spelled (derived with nltk 3.10 over Debian's wordnet-base): a token
# equal to one is kept as is, and no other form lemmatises to it
NOT_IN_WORDNET = frozenset(
    "TV air-conditioning baconic bedsheet cann cathole chopsticks closestool cooktop doghole e-book earing earrings "
    "ebook electrombile hot kiwifruit paraglider pissoir rpoe sanitizer scoon seegull showerpuff slippers "
    "streetlamp waterfont".split()
)
# WordNet nouns outside H that beat an H candidate (morphy keeps the shortest, the token itself first): 'men'
# (not man), 'vases' → vas, the singulars of H's plurals that WordNet lacks, and 'leaf' (for 'leaves', whose
# noun.exc entry also offers H's 'leave')
OUTSIDE_WINNERS = frozenset({"men", "vas", "sunglass", "chopstick", "earring", "slipper", "leaf"})

Similarity = Callable[[str, str], float]


@dataclass(frozen=True)
class Vocabulary:
    """relation.json's `association` (object → associated words), H (`words`), the global `safe_words`, and the
    `lexicon` that `noun_lemma` looks up (H's WordNet nouns plus OUTSIDE_WINNERS)."""

    association: Mapping[str, list[str]]
    words: frozenset[str]
    safe_words: frozenset[str]
    lexicon: frozenset[str]

    @classmethod
    def from_tables(cls, association: Mapping[str, list[str]], safe_words) -> Vocabulary:
        """A lower-case single word not in NOT_IN_WORDNET counts as a WordNet noun (WordNet's lemmas are lower
        case): exact for AMBER's file, the regular rules for words added to it."""
        words = frozenset(association) | frozenset(w for ws in association.values() for w in ws)
        nouns = {w for w in words if " " not in w and w == w.lower() and w not in NOT_IN_WORDNET}
        return cls(dict(association), words, frozenset(safe_words), frozenset(nouns) | OUTSIDE_WINNERS)


def load_vocabulary(data: str | Path) -> Vocabulary:
    """relation.json and safe_words.txt from AMBER's data/ directory, read once per file version."""
    paths = [Path(data) / RELATION_FILE, Path(data) / SAFE_WORDS_FILE]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: AMBER's generative task needs {RELATION_FILE} and {SAFE_WORDS_FILE} "
                "from AMBER's data/ directory"
            )
    return _read_vocabulary(*map(os.fspath, paths), *(p.stat().st_mtime_ns for p in paths))


@functools.lru_cache(maxsize=4)
def _read_vocabulary(relation: str, safe: str, relation_mtime: int, safe_mtime: int) -> Vocabulary:
    table = json.loads(Path(relation).read_text())
    if not isinstance(table, dict) or not all(
        isinstance(ws, list) and all(isinstance(w, str) for w in ws) for ws in table.values()
    ):
        raise ValueError(f"{relation}: expected a JSON object {{object: [associated word, ...]}}")
    # one word per line, as the reference reads it (only the newline removed)
    return Vocabulary.from_tables(table, [w for w in Path(safe).read_text().split("\n") if w])


def unknown_objects(annotation: dict, vocab: Vocabulary) -> list[str]:
    """The annotation's truth and hallu objects that relation.json has no entry for."""
    return [o for key in ("truth", "hallu") for o in annotation[key] if o not in vocab.association]


def extract_nouns(text: str, vocab: Vocabulary) -> list[str]:
    """The response's NN* tokens as noun lemmas, those in H only, in order, repeats kept."""
    tokens = nltk_tokens(text)
    if tagging.wordnet_installed():
        lemmas = [tagging.wordnet_lemma(t) for t in tokens]
    else:
        lemmas = [noun_lemma(t, vocab.lexicon) for t in tokens]
    in_h = [i for i, lemma in enumerate(lemmas) if lemma in vocab.words]  # only their tags can change a result
    tags = tagging.tags_at(tokens, in_h) if in_h else {}
    return [lemmas[i] for i in in_h if tags[i].startswith("NN")]


def matching_list(objects: list[str], vocab: Vocabulary) -> tuple[list[str], list[int]]:
    """(words, owners): every object's associated words, then the objects; owners[k] is the index of the object
    words[k] stands for. The first entry of a word decides the object it marks (see the module docstring)."""
    words, owners = [], []
    for i, obj in enumerate(objects):
        words += vocab.association[obj]
        owners += [i] * len(vocab.association[obj])
    return words + list(objects), owners + list(range(len(objects)))


def first_similar(noun: str, words: list[str], similarity: Similarity | None) -> int | None:
    """Index of the first word whose similarity to the noun exceeds the threshold (None: none, or no step)."""
    if similarity is None:
        return None
    return next((j for j, w in enumerate(words) if similarity(noun, w) > SIMILARITY_THRESHOLD), None)


def judge_nouns(
    nouns: list[str], truth: list[str], hallu: list[str], vocab: Vocabulary, similarity: Similarity | None = None
) -> dict:
    """One response's record: its nouns, the hallucinated ones, the truth objects covered and the hallu objects
    mentioned (each object once, in annotation order), and the two object counts."""
    safe, safe_owner = matching_list(truth, vocab)
    ha, ha_owner = matching_list(hallu, vocab)
    covered, mentioned, hallucinated = [False] * len(truth), [False] * len(hallu), []
    for noun in nouns:
        if noun in vocab.safe_words:  # too generic to judge, but still a noun in CHAIR's denominator
            continue
        if noun in safe:
            covered[safe_owner[safe.index(noun)]] = True
            continue
        if noun in ha:  # no `continue`: a hallu object is also a hallucination
            mentioned[ha_owner[ha.index(noun)]] = True
        if (j := first_similar(noun, ha, similarity)) is not None:
            mentioned[ha_owner[j]] = True
        if (j := first_similar(noun, safe, similarity)) is not None:
            covered[safe_owner[j]] = True
            continue
        hallucinated.append(noun)
    return {
        "nouns": nouns,
        "hallucinated": hallucinated,
        "covered": [o for o, hit in zip(truth, covered) if hit],
        "hallu_mentioned": [o for o, hit in zip(hallu, mentioned) if hit],
        "truth_objects": len(truth),
        "hallu_objects": len(hallu),
    }


def score(item: dict, output: str, similarity: Similarity | None = None) -> dict:
    """A generative item's record (item: `truth`, `hallu`, `vocabulary` = the data directory)."""
    vocab = load_vocabulary(item["vocabulary"])
    nouns = extract_nouns(output, vocab)
    return {"dimension": "generative", **judge_nouns(nouns, item["truth"], item["hallu"], vocab, similarity)}


def aggregate(records: list[dict], similarity_name: str = "none") -> dict:
    """CHAIR, Cover, Hal and Cog over all responses (a rate is 0.0 when its denominator is 0), with counts and
    which tagger and similarity produced them."""
    nouns = sum(len(r["nouns"]) for r in records)
    hallucinated = sum(len(r["hallucinated"]) for r in records)
    truth = sum(r["truth_objects"] for r in records)
    hallu = sum(r["hallu_objects"] for r in records)
    return {
        "chair": hallucinated / nouns if nouns else 0.0,
        "cover": sum(len(r["covered"]) for r in records) / truth if truth else 0.0,
        "hal": sum(bool(r["hallucinated"]) for r in records) / len(records) if records else 0.0,
        "cog": sum(len(r["hallu_mentioned"]) for r in records) / hallu if hallu else 0.0,
        "n": len(records),
        "nouns": nouns,
        "hallucinated_nouns": hallucinated,
        **tagging.notes(),
        "similarity": similarity_name,
    }


def spacy_installed() -> bool:
    """Whether spaCy and its `en_core_web_lg` model can be imported (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("spacy", SPACY_MODEL))


def default_similarity() -> tuple[Similarity | None, str]:
    """(function, name) of the similarity step: spaCy's when installed, else (None, "none") (deviation 1)."""
    return (spacy_similarity, SPACY_MODEL) if spacy_installed() else (None, "none")


@functools.cache
def _spacy_nlp():
    import spacy

    return spacy.load(SPACY_MODEL)  # loaded at the first comparison: about 600 MB


@functools.lru_cache(maxsize=1 << 12)
def _spacy_doc(word: str):
    return _spacy_nlp()(word)


@functools.lru_cache(maxsize=1 << 18)  # each noun is compared with every safe and ha word of its image
def spacy_similarity(a: str, b: str) -> float:
    """The reference's `nlp(a).similarity(nlp(b))`: cosine of the mean word vectors, 0 for a word without one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # spaCy's "no word vector" warning, silenced there too
        return float(_spacy_doc(a).similarity(_spacy_doc(b)))
