"""Penn Treebank POS tags for benchmark scorers, with no run-time download.

The reference scorers tag with `nltk.pos_tag` (AMBER's noun extraction) or spaCy (Object HalBench's phrase
cleanup). nltk's averaged-perceptron model is a data download that no PyPI package ships, so:
- when that model is installed (`nltk.download("averaged_perceptron_tagger_eng")`, found on nltk's data path),
  `pos_tag` is `nltk.pos_tag`, the reference's own tagger;
- otherwise it is the Pattern tagger bundled with `textblob` (a lexicon plus contextual rules, pure Python,
  PTB tags). It agrees with nltk on most nouns; a known miss is a plural noun followed by a verb read as a
  verb ("teddy bears are" → bears/VBZ).

`tagger_name()` says which one runs; scorers store it with their metrics so numbers from the two are not mixed up.
"""

from __future__ import annotations

import functools
import threading

# textblob's tagger loads its lexicon lazily without a lock: a thread tagging during another thread's first load
# sees part of it ('a' → NN). Judge-scored benchmarks score in threads, so one Pattern tagging call at a time.
_PATTERN_LOCK = threading.Lock()


@functools.cache
def _nltk_model_installed() -> bool:
    import nltk

    try:
        nltk.data.find("taggers/averaged_perceptron_tagger_eng/")
    except LookupError:
        return False
    return True


def tagger_name() -> str:
    return "nltk-perceptron" if _nltk_model_installed() else "textblob-pattern"


def pos_tag(tokens: list[str]) -> list[tuple[str, str]]:
    """(token, PTB tag) for each token, in order, tokens unchanged."""
    if not tokens:
        return []
    if _nltk_model_installed():
        import nltk

        return nltk.pos_tag(tokens)
    from textblob.en import tag

    with _PATTERN_LOCK:
        tagged = tag(" ".join(tokens), tokenize=False)  # Pattern splits on the spaces only: one tag per token
    if len(tagged) != len(tokens):  # a token holding whitespace would break the alignment
        raise ValueError(f"tagger returned {len(tagged)} tags for {len(tokens)} tokens: {tokens[:10]}")
    return [(tok, t) for tok, (_, t) in zip(tokens, tagged)]
