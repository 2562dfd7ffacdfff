"""CHAIR's caption → COCO object mentions, as OPERA's `chair.py` finds them, with NLTK's data or without it.

The reference (shikiw/OPERA `chair.py`, itself Maxlinn/CHAIR-metric-standalone's port of LisaAnne/Hallucination):
lower-case; `nltk.word_tokenize`; `nltk.pos_tag`; `WordNetLemmatizer().lemmatize(token, pos)` with the tag's
WordNet POS (J/V/N/R, anything else a noun); merge adjacent pairs found in `double_word_dict`, left to right, a
merged pair taking both tokens; drop every 'seat' if 'toilet' is there; keep the words in `mscoco_objects`, each
mapped to its category by `inverse_synonym_dict`, repeats kept. Len counts the tokens after merging.

Here the tokens are the same: `NLTKWordTokenizer` per sentence with nltk 3.8.1's quote and punctuation rules
(OPERA's pin; nltk >= 3.9 also splits an opening single quote and en/em dashes off a word, which would make 'dog
and dog—cat mentions), the sentences from an *untrained* `PunktSentenceTokenizer` (`word_tokenize` needs the
punkt model, which is not installed here). Lemmas, two ways (`align.eval.tagging` says which ran):
- reference (NLTK's perceptron tagger and WordNet on NLTK's data path): the reference's steps exactly, tags from
  nltk's tagger, lemmas from WordNet with nltk 3.8.1's morphy (`reference_lemmas`). Checked caption by caption
  against OPERA's `chair.py` on six of OPERA's public caption sets (tests/align/eval/test_benchmarks_chair.py);
- fallback (no NLTK data): every token lemmatised as a noun by WordNet's noun morphology, reproduced below only
  as far as CHAIR can see it: which candidate lemmas are WordNet nouns is known for the vocabulary words only,
  so the noun lemma is exact whenever it matters, i.e. whenever WordNet's lemma or this one is a vocabulary word.
Reference quirks kept on purpose: 'men' stays 'men' (a WordNet noun, as short as 'man'), 'vases' → 'vas',
'sports' → 'sport' (so 'sports ball' never merges, 'ball' still counts), plurals of words WordNet lacks stay
plural ('bikers', 'smartphones', 'pitbulls' are not mentions), 'motor bike' merges into a word the vocabulary
only has as ' motor bike' (its synonym list is split on ', ', so it and ' cheesecake' never match), and the
tagger's own readings: 'geese' in 'two geese' is JJ, hence no goose; 'seated' is VBN, hence seat → chair.

Deviations from the reference, each changing a result only in the case named:
1. Fallback only: no POS tagger, so tokens OPERA's tagger calls verbs or adjectives get the noun lemma. OPERA
   counts verb forms whose verb lemma is a vocabulary word ('skiing' → ski → skis, 'skateboarding',
   'snowboarding', 'seated' → seat → chair, 'tied' → tie, 'batting' → bat, 'taxiing' → taxi → car); the
   fallback does not. A plural the tagger mislabels ('cars' as VBZ stays 'cars' there, 'geese' as JJ) is missed
   there and counted here, and 'parking'/'potted' tagged VBG/VBN become park/pot there, which breaks 'parking
   meter'/'potted plant'. On OPERA's caption sets this moves CHAIR_s by up to 2.8 points (README, "Scorer
   fidelity"); 3.8.1's morphy on non-words ('dogss' → dog there) is not reproduced either.
2. The untrained Punkt knows no abbreviations: 'e.g.' or 'mr.' end a sentence and lose their period to a
   separate token. Len grows by one for each; no mention changes (no vocabulary word is an abbreviation), though
   the tagger sees one more token there.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nltk.tokenize.destructive import NLTKWordTokenizer
from nltk.tokenize.punkt import PunktSentenceTokenizer

from align.eval import tagging

VOCABULARY_FILE = "chair_vocabulary.json"

# WordNet 3.0 facts, as nltk's morphy uses them for nouns (derived with nltk 3.10 over Debian's wordnet-base)
NOUN_RULES = (
    ("s", ""),
    ("ses", "s"),
    ("ves", "f"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
)
# noun.exc entries that lead to or from a vocabulary word (CHAIR's, Object HalBench's, AMBER's relation.json) and
# change a result there; an exception replaces the rules, so one entry can only matter where its key is a token
NOUN_EXCEPTIONS = {
    "brethren": "brother",  # Object HalBench's refined vocabulary has 'brother'; OPERA's does not
    "buffaloes": "buffalo",
    "busses": "bus",
    "calves": "calf",
    "camerae": "camera",  # AMBER
    "children": "child",
    "flamingoes": "flamingo",
    "geese": "goose",
    "grandchildren": "grandchild",
    "knives": "knife",
    "leaves": "leaf",  # AMBER; noun.exc also gives 'leave', which the shorter 'leaf' always beats
    "men": "man",
    "mice": "mouse",
    "oxen": "ox",
    "pocketknives": "pocketknife",
    "potatoes": "potato",  # AMBER
    "taxies": "taxi",
    "thieves": "thief",
    "tomatoes": "tomato",  # AMBER
}
# vocabulary words (and double-word parts) that are not WordNet nouns: no other form lemmatises to them
NOT_IN_WORDNET = frozenset(
    "biker bluejay brindle children coworker firetruck glas hairdryer hot iPhone knive lenovo longboard macbook "
    "netbook paddleboat pitbull potted riverboat sailboard shortboard skimboard skis smartphone solider sports "
    "stovetop teddybear televison".split()
)
# WordNet nouns outside the vocabulary that win over a vocabulary candidate (morphy keeps the shortest, the
# token itself first): 'men' (not man), 'vases' → vas, 'sports' → sport
OUTSIDE_WINNERS = frozenset({"men", "vas", "sport"})

_SENTENCES = PunktSentenceTokenizer()  # untrained: no data, splits after every sentence-final '.', '!' or '?'


class WordTokenizer381(NLTKWordTokenizer):
    """`NLTKWordTokenizer` with nltk 3.8.1's opening-quote and punctuation rules (copied from nltk 3.8.1,
    Apache-2.0), so that 'dog and dog—cat stay single tokens as they did for OPERA."""

    STARTING_QUOTES = [
        (re.compile("([«“‘„]|[`]+)", re.U), r" \1 "),
        (re.compile(r"^\""), r"``"),
        (re.compile(r"(``)"), r" \1 "),
        (re.compile(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` "),
        (re.compile(r"(?i)(\')(?!re|ve|ll|m|t|s|d|n)(\w)\b", re.U), r"\1 \2"),
    ]
    PUNCTUATION = [
        (re.compile(r'([^\.])(\.)([\]\)}>"\'' "»”’ " r"]*)\s*$", re.U), r"\1 \2 \3 "),
        (re.compile(r"([:,])([^\d])"), r" \1 \2"),
        (re.compile(r"([:,])$"), r" \1 "),
        (re.compile(r"\.{2,}", re.U), r" \g<0> "),
        (re.compile(r"[;@#$%&]"), r" \g<0> "),
        (re.compile(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "),
        (re.compile(r"[?!]"), r" \g<0> "),
        (re.compile(r"([^'])' "), r"\1 ' "),
        (re.compile(r"[*]", re.U), r" \g<0> "),
    ]


_WORDS = WordTokenizer381()


def nltk_tokenize(text: str) -> list[str]:
    """`nltk.word_tokenize(text.lower())` without the punkt download (deviation 2 in the module docstring): the
    reference `tokenize` reproduces, here in full through nltk."""
    return nltk_tokens(text.lower())


def nltk_tokens(text: str) -> list[str]:
    """`nltk.word_tokenize(text)` on the text as given (no case folding), with the untrained Punkt and nltk
    3.8.1's word rules described in the module docstring; AMBER tokenizes its responses this way."""
    return [w for sentence in _SENTENCES.tokenize(text) for w in _WORDS.tokenize(sentence)]


# Fast path, exact by nltk's code. A *plain* text is ASCII lower-case words, single spaces between them, a word
# followed by at most one ',' or '.', no contraction the word tokenizer splits (CONTRACTIONS2 without an apostrophe;
# the others need one). In it the untrained Punkt breaks after every 'word.' of 2+ letters that has a next word
# (first pass: period-final, no abbreviations known → sentbreak; second pass keeps it: no collocations, neither an
# initial nor a number) and never after a one-letter initial 'x.' (next word lower-case, no orthographic context →
# not a sentence starter → abbreviation). The word tokenizer then splits off every ',' (followed by a space or at
# the end) and each sentence's final '.', and leaves an initial's '.' on it; nothing else applies.
_PLAIN = re.compile(r"[a-z]+[,.]?(?: [a-z]+[,.]?)*")
_PLAIN_TOKEN = re.compile(r"[a-z]\.(?= )|[a-z]+|[,.]")
_SPLIT_CONTRACTIONS = re.compile(r"\b(?:cannot|gimme|gonna|gotta|lemme|wanna)\b")
# A sure sentence break in any text: 'word.' (2+ ASCII lower-case letters, after a space, a newline or the text's
# start) then spaces/newlines and an ASCII lower-case letter. Punkt's context there is that word, the period and
# the next token, so it breaks as above, and no context or realignment on either side reaches across (the
# whitespace before the word ends the previous context; a letter opens the next sentence, so nothing realigns):
# the text's tokens are its chunks' tokens, each chunk tokenized alone.
_SURE_BREAK = re.compile(r"(?:^|(?<=[ \n]))[a-z]{2,}\.([ \n]+)(?=[a-z])")


def plain_tokens(lowered: str) -> list[str] | None:
    """The tokens of an already lower-cased plain text (see above), or None when it is not plain."""
    if _PLAIN.fullmatch(lowered) is None or _SPLIT_CONTRACTIONS.search(lowered) is not None:
        return None
    return _PLAIN_TOKEN.findall(lowered)


def tokenize(text: str) -> list[str]:
    """`nltk_tokenize(text)`, faster: the lower-cased text is cut at sure sentence breaks, plain chunks take the
    fast path and the others nltk's (checked against `nltk_tokenize` by tests/align/eval/test_benchmarks_chair.py)."""
    lowered = text.lower()
    tokens = plain_tokens(lowered.rstrip())  # trailing whitespace changes no sentence and no token
    if tokens is not None:
        return tokens
    tokens, start = [], 0
    for cut in _SURE_BREAK.finditer(lowered):
        chunk = lowered[start : cut.start(1)]
        tokens += plain_tokens(chunk) or nltk_tokens(chunk)
        start = cut.end(1)
    chunk = lowered[start:]
    tokens += plain_tokens(chunk.rstrip()) or nltk_tokens(chunk)
    return tokens


@functools.lru_cache(maxsize=1 << 16)  # captions reuse a small vocabulary: most calls are repeats
def noun_lemma(token: str, lexicon: frozenset[str]) -> str:
    """`WordNetLemmatizer().lemmatize(token)` wherever either answer is in `lexicon` (the vocabulary's WordNet
    nouns plus OUTSIDE_WINNERS): the exception or every rule's form, the token first, keep those in the
    lexicon, return the shortest, else the token unchanged."""
    if token in NOUN_EXCEPTIONS:
        forms = [token, NOUN_EXCEPTIONS[token]]
    else:
        forms = [token] + [token[: -len(old)] + new for old, new in NOUN_RULES if token.endswith(old)]
    found = [f for f in forms if f in lexicon]
    return min(found, key=len) if found else token


@dataclass(frozen=True)
class Vocabulary:
    """OPERA's tables: `objects` (every synonym, as split), `category` (synonym → COCO category),
    `double_words` (two-word term → the word it becomes), and the `lexicon` `noun_lemma` looks up."""

    objects: frozenset[str]
    category: Mapping[str, str]
    double_words: Mapping[str, str]
    lexicon: frozenset[str]

    @classmethod
    def from_tables(cls, objects, category: Mapping[str, str], double_words: Mapping[str, str]) -> Vocabulary:
        """A word not in NOT_IN_WORDNET counts as a WordNet noun: exact for OPERA's vocabulary, the regular
        plural rules for words added to it."""
        words = set(objects) | {p for pair in double_words for p in pair.split()} | set(double_words.values())
        lexicon = frozenset(w for w in words if w and " " not in w and w not in NOT_IN_WORDNET) | OUTSIDE_WINNERS
        missing = set(objects) - set(category)
        if missing:
            raise ValueError(f"vocabulary words without a category: {sorted(missing)[:5]}")
        return cls(frozenset(objects), dict(category), dict(double_words), lexicon)

    @functools.cached_property
    def double_firsts(self) -> frozenset[str]:
        """Each `double_words` key's text before its first space: a word not among them starts no merge."""
        return frozenset(pair.split(" ", 1)[0] for pair in self.double_words)

    @functools.cached_property
    def words_that_count(self) -> frozenset[str]:
        """The lemmas that can change a caption's mentions or merges: vocabulary words and double-word parts."""
        return self.objects | {p for pair in self.double_words for p in pair.split()}

    @functools.cached_property
    def tagged_lemmas(self) -> dict[str, str | tuple[str, ...]]:
        """Memo of `_lemma_or_options(token, self.words_that_count)`, filled by `reference_lemmas`."""
        return {}

    @functools.cached_property
    def lemmas(self) -> dict[str, str]:
        """Memo of `noun_lemma(token, self.lexicon)`, filled by `caption_words`."""
        return {}


def load_vocabulary(path: str | Path) -> Vocabulary:
    """`chair_vocabulary.json`: {mscoco_objects: [...], inverse_synonym_dict: {...}, double_word_dict: {...}}.
    Read once per file version (every caption's score looks it up)."""
    missing = (
        f"CHAIR needs OPERA's synonym tables as {VOCABULARY_FILE} "
        "(mscoco_objects, inverse_synonym_dict, double_word_dict; see Maxlinn/CHAIR-metric-standalone)"
    )
    return read_once_per_version(path, _read_vocabulary, missing)


def read_once_per_version(path: str | Path, read, missing: str):
    """`read(path)`, cached per file version: one stat per call, as `Path.is_file` (symbolic links followed), whose
    identity and mtime name the version, so no path resolution is needed. `missing` says what the file is."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(f"{path} not found: {missing}")
    return _read_version(read, os.fspath(path), st.st_dev, st.st_ino, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_version(read, path: str, device: int, inode: int, mtime_ns: int):
    return read(path)


def _read_vocabulary(path: str) -> Vocabulary:
    raw = json.loads(Path(path).read_text())
    keys = ("mscoco_objects", "inverse_synonym_dict", "double_word_dict")
    if not isinstance(raw, dict) or not all(k in raw for k in keys):
        raise ValueError(f"{path}: expected a JSON object with {', '.join(keys)}")
    return Vocabulary.from_tables(*(raw[k] for k in keys))


def merge_double_words(words: list[str], table: Mapping[str, str]) -> list[str]:
    """Left to right: a pair in `table` becomes one word and takes both places ('train track' keeps 'train'
    from firing even though 'train track' itself is no vocabulary word)."""
    return _merge(words, table, frozenset(pair.split(" ", 1)[0] for pair in table))


def _merge(words: list[str], table: Mapping[str, str], firsts: frozenset[str]) -> list[str]:
    """`merge_double_words`, looking a pair up only where its first word can start one (`firsts`)."""
    out, i, n = [], 0, len(words)
    while i < n:
        word = words[i]
        if word in firsts:
            pair = " ".join(words[i : i + 2])  # the last word alone when i = n - 1, as OPERA's slice does
            if pair in table:
                out.append(table[pair])
                i += 2
                continue
        out.append(word)
        i += 1
    return out


@dataclass(frozen=True)
class CaptionWords:
    tokens: list[str]  # lemmas after merging (OPERA's `raw_words`): their count is the caption's Len
    mentions: list[tuple[str, str]]  # (vocabulary word, category) in caption order, repeats kept


def caption_words(caption: str, vocab: Vocabulary, tagged: bool = True) -> CaptionWords:
    """The caption's tokens and its vocabulary mentions, OPERA's `caption_to_words` (`tagged`: each token
    lemmatised with its POS tag's WordNet POS, as OPERA's CHAIR; else as a noun, as Object HalBench's rule-based
    path). The reference's own tagger and WordNet run where installed (`reference_lemmas`), else `noun_lemma`."""
    tokens = tokenize(caption)
    if tagging.wordnet_installed() and (not tagged or tagging.nltk_tagger() is not None):
        lemmatised = reference_lemmas(tokens, vocab, tagged)
    else:
        lemmas, lexicon = vocab.lemmas, vocab.lexicon
        if len(lemmas) > 1 << 16:  # bounded, as noun_lemma's own cache
            lemmas.clear()
        lemmatised = [lemmas.get(t) or lemmas.setdefault(t, noun_lemma(t, lexicon)) for t in tokens]
    merged = _merge(lemmatised, vocab.double_words, vocab.double_firsts)
    words = merged
    if "toilet" in words and "seat" in words:  # "the seat of the toilet" is no chair
        words = [w for w in words if w != "seat"]
    return CaptionWords(merged, [(w, vocab.category[w]) for w in words if w in vocab.objects])


def reference_lemmas(tokens: list[str], vocab: Vocabulary, tagged: bool = True) -> list[str]:
    """`WordNetLemmatizer().lemmatize(token, pos)`, pos from `nltk.pos_tag(tokens)` when `tagged`, else noun.
    Only the tokens whose lemma depends on the POS and can then be a vocabulary word or a double-word part are
    tagged (`tagging.tags_at`): the others' lemma cannot change a mention or a merge, so they keep their noun
    lemma, which is their reference lemma unless they are read otherwise than as a noun there."""
    if not tagged:
        return [tagging.wordnet_lemma(t) for t in tokens]
    memo = vocab.tagged_lemmas
    if len(memo) > 1 << 16:
        memo.clear()
    known = [memo.get(t) or memo.setdefault(t, _lemma_or_options(t, vocab.words_that_count)) for t in tokens]
    ambiguous = [i for i, k in enumerate(known) if isinstance(k, tuple)]
    if not ambiguous:
        return known
    tags = tagging.tags_at(tokens, ambiguous)
    for i in ambiguous:
        known[i] = known[i][POS_INDEX[tagging.wordnet_pos(tags[i])]]
    return known


POS_INDEX = {pos: k for k, pos in enumerate(tagging.WORDNET_POS)}


def _lemma_or_options(token: str, relevant: frozenset[str]) -> str | tuple[str, ...]:
    """The token's lemma when its POS cannot change a mention or a merge, else its lemma for each POS."""
    options = tagging.lemma_options(token)
    n, v, a, r = options
    return options if not n == v == a == r and relevant.intersection(options) else n
