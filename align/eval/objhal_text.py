"""Object HalBench's text rules (RLHF-V / RLAIF-V `eval/eval_gpt_obj_halbench.py`): its refined COCO vocabulary,
the rule-based caption → mentions path, and the LLM path (extraction prompt, reply parsing, phrase cleanup).

Vocabulary (`synonyms_refine.txt`): one line per COCO category, terms split on ", " and stripped, the first term
the category (a term listed under two categories takes the later one, as the reference's dict does). Double
words: every multi-word term (mapped to itself), 'home plate' and 'train track' (no vocabulary words: they only
consume their two tokens), 'baby X'/'adult X' → X for the 12 animal words, 'passenger jet/train' → jet/train,
'bow tie' → tie, 'toilet seat' → toilet and 'wine glas' → wine glass. Blank lines and empty terms are skipped (no
token or phrase is ever empty, so this changes nothing).

Rule-based path: `nltk.word_tokenize(caption.lower())`, `WordNetLemmatizer().lemmatize(w)` (noun, no tagger),
double words merged left to right, every 'seat' dropped when 'toilet' is there, vocabulary words kept, repeats
included. That is `chair_text.caption_words(..., tagged=False)` with this vocabulary: WordNet's own lemmas where
WordNet is installed, else `noun_lemma`, exact for this vocabulary too (the WordNet facts it needs hold here;
tests/align/eval/test_benchmarks_objhal.py checks them against `WordNetLemmatizer`), with `chair_text`'s
tokenizer deviation 2 (an abbreviation such as 'e.g.' ends a sentence: no mention changes).

LLM path: the judge model lists the visible objects an answer names (`PROMPT`: this project's wording of the
reference's instructions, sent as one system message as the reference does). Reply parsing as the reference: the
JSON inside a ```json block, else, when the reply holds '["', its last line as JSON. Each phrase p is then
cleaned as the reference does with spaCy: the lemmas of the tokens of "a " + p; the double words among them, if
any; otherwise the runs of nouns (NN, NNS, NNP, NNPS) as lemma phrases. The phrases are de-duplicated in order,
'seat' goes when 'toilet' is there, and only phrases that equal a vocabulary term exactly are kept ('tennis
player' is dropped, not read as 'player').

Deviations in the LLM path, each changing a result only in the case named:
1. spaCy's `en_core_web_trf` (not on PyPI) tags and lemmatises there. Here the tokens are `chair_text.tokenize`'s
   (nltk's word tokens, lower-cased), the lemmas WordNet noun lemmas (`chair_text.noun_lemma`, exact for the
   vocabulary words), the tags `align.eval.tagging.pattern_tag` (textblob's Pattern tagger whatever NLTK data is
   installed: on bare noun phrases it is closer to spaCy than nltk's perceptron, which tags 'a puppy' JJ). A
   phrase whose nouns the taggers tag differently differs, as does a word spaCy lemmatises otherwise than
   WordNet ('glasses' → glass here). Lower-casing means a capitalised name the reference's spaCy keeps as a
   proper noun ('Dog') counts here as 'dog', and the one mixed-case term, 'iPhone', never matches (as in the
   rule-based path of both).
2. A reply whose last line is a bare `[]` (what the prompt asks for when nothing is visible) is read as an empty
   list. The reference's parser rejects it (no '["'), asks again up to 100 times, then stops the whole run on an
   assertion, so it never scores such an answer.
3. A reply that parses to anything but a list of strings is a failure here; the reference iterates over it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from align.eval import tagging
from align.eval.chair_text import Vocabulary, noun_lemma, read_once_per_version, tokenize

SYNONYMS_FILE = "synonyms_refine.txt"
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
# after the animal pairs, so 'bow tie' (a vocabulary term, first mapped to itself) becomes 'tie', as in the reference
LAST_DOUBLE_WORDS = {
    "passenger jet": "jet",
    "passenger train": "train",
    "bow tie": "tie",
    "toilet seat": "toilet",
    "wine glas": "wine glass",
}
NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})

PROMPT_VERSION = "align-objhal-extract-v1"  # goes into every record and the judge cache key; bump with PROMPT
PROMPT = """\
Your job is to pick out the names of objects from a question about a picture and the answer someone gave to it.

[Question]
{question}

[Answer]
{answer}

Treat the answer as true, and list every object that it says can be seen in the picture. Rules:
1. Only list objects that the answer itself names.
2. Give the bare name of each object, without its attributes.
3. Leave properties such as colour or material out of the names.
4. Be exact, and reply with a JSON list of names: ["object_1", ..., "object_n"].
5. If the answer names no visible object, reply with an empty JSON list: []."""
FIELDS = ("question", "answer")
_PLACEHOLDER = re.compile(r"\{(question|answer)\}")
_JSON_BLOCK = re.compile(r"```json\n(.*?)\n```", re.DOTALL)


def parse_synonyms(text: str, where: str = SYNONYMS_FILE) -> Vocabulary:
    """The reference's tables from the text of `synonyms_refine.txt` (see the module docstring)."""
    objects: list[str] = []
    category: dict[str, str] = {}
    for line in text.splitlines():
        terms = [t.strip() for t in line.strip().split(", ")]
        terms = [t for t in terms if t]
        if not terms:
            continue
        objects += terms
        category.update((t, terms[0]) for t in terms)
    if not objects:
        raise ValueError(f"{where}: no synonym lines (expected 'category, synonym, ...' per line)")
    double = {t: t for t in category if len(t.split(" ")) >= 2}
    double |= {"home plate": "home plate", "train track": "train track"}
    for animal in ANIMAL_WORDS:
        double |= {f"baby {animal}": animal, f"adult {animal}": animal}
    return Vocabulary.from_tables(objects, category, double | LAST_DOUBLE_WORDS)


def load_vocabulary(path: str | Path) -> Vocabulary:
    """`synonyms_refine.txt`, read once per file version (every answer's score looks it up)."""
    missing = (
        f"Object HalBench needs its refined COCO synonym list as {SYNONYMS_FILE} in the --data directory "
        "(RLHF-V/RLHF-V eval/data/synonyms_refine.txt)"
    )
    return read_once_per_version(path, _read_synonyms, missing)


def _read_synonyms(path: str) -> Vocabulary:
    return parse_synonyms(Path(path).read_text(), path)


def answer_text(output: str) -> str:
    """The answer as the reference reads it: every "Assistant:" removed, then surrounding whitespace."""
    return output.replace("Assistant:", "").strip()


def extraction_messages(question: str, answer: str, template: str = PROMPT) -> list[dict]:
    """One system message, as the reference sends; placeholders filled in one pass, so an answer that quotes
    "{question}" stays as written."""
    values = {"question": question, "answer": answer}
    return [{"role": "system", "content": _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)}]


def check_prompt(template: str) -> None:
    missing = [f for f in FIELDS if "{" + f + "}" not in template]
    if missing:
        raise ValueError(f"extraction prompt template lacks {', '.join('{' + f + '}' for f in missing)}")


def parse_object_list(reply: str) -> list[str] | None:
    """The object names in the judge's reply, or None when it holds no list of strings (see the docstring)."""
    found = _JSON_BLOCK.search(reply)
    value = _json(found.group(1)) if found else None
    if value is None:
        last = reply.strip().split("\n")[-1]
        if '["' in reply or last.strip() == "[]":
            value = _json(last)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def double_word_hits(lemmas: list[str], table: dict[str, str]) -> list[str]:
    """What the double words among `lemmas` become, left to right, each pair taking both places; nothing else."""
    hits, i = [], 0
    while i < len(lemmas):
        pair = " ".join(lemmas[i : i + 2])
        if pair in table:
            hits.append(table[pair])
            i += 2
        else:
            i += 1
    return hits


def noun_runs(tags: list[str], lemmas: list[str]) -> list[str]:
    """Each maximal run of noun-tagged tokens, as its lemmas joined by spaces."""
    runs, current = [], []
    for tag, lemma in zip(tags, lemmas):
        if tag in NOUN_TAGS:
            current.append(lemma)
        elif current:
            runs.append(" ".join(current))
            current = []
    if current:
        runs.append(" ".join(current))
    return runs


def refine_phrases(phrases: list[str], vocab: Vocabulary) -> list[str]:
    """The reference's cleanup of the extracted names: double words, else noun runs; de-duplicated in order."""
    refined: list[str] = []
    for phrase in phrases:
        tokens = tokenize(f"a {phrase}")
        lemmas = [noun_lemma(t, vocab.lexicon) for t in tokens]
        hits = double_word_hits(lemmas, vocab.double_words)
        if hits:
            refined += hits
            continue
        tags = [tag for _, tag in tagging.pattern_tag(tokens)]
        refined += noun_runs(tags, lemmas)
    return list(dict.fromkeys(refined))


def object_mentions(objects: list[str], vocab: Vocabulary) -> list[tuple[str, str]]:
    """(term, category) for each cleaned name that is a vocabulary term, after the toilet/seat rule."""
    if "toilet" in objects and "seat" in objects:
        objects = [o for o in objects if o != "seat"]
    return [(o, vocab.category[o]) for o in objects if o in vocab.objects]
