"""Hallucination metrics as pure functions: CHAIR (captions) and POPE (yes/no questions).

CHAIR follows Rohrbach et al. / OPERA: a caption's words are mapped through a synonym table (plurals and
synonyms → class, two-word names merged first); CHAIR_i = hallucinated mentions / all mentions (a repeated
mention counts each time), CHAIR_s = captions with >= 1 hallucinated mention / captions, recall = distinct
correct classes / ground-truth classes (summed over captions), length = mean whitespace words.
POPE parses answers like the official scorer: keep the text before the first '.', drop commas, and answer
"no" if any space-separated word is 'No', 'no' or 'not'.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from data_builders.toyworld_text import SYNONYMS, caption_mentions, sentence_cells, split_sentences

__all__ = ["SYNONYMS", "caption_mentions", "chair", "parse_yes_no", "pope", "sentence_cells", "split_sentences"]

BRACKETED = re.compile(r"\[([^\[\]]*)\]")  # HallE's indication marks: "[spoon]" (or "[ spoon ]" decoded)


def chair(
    captions: Sequence[str],
    ground_truth: Sequence[set[str]],
    occupied: Sequence[set[int]] | None = None,
    synonyms: Mapping[str, str] = SYNONYMS,
    typical: Sequence[set[str]] | None = None,
) -> dict[str, float]:
    """CHAIR_s, CHAIR_i, recall and length over captions, with ground-truth class sets per caption.

    With `occupied` (grid cells holding an object, per caption), each hallucinated mention is also classed as a
    *substitution* (its sentence places it at an occupied cell: a present object misnamed) or an *addition*
    (an empty or unnamed cell: an absent object made up), reported as shares of hallucinated mentions.
    With `typical` (the classes typical of each caption's scene), `prior_share` is the share of hallucinated
    mentions that name an absent object typical of the scene: the hallucination the language prior suggests.

    Objects a caption writes in square brackets (HallE-Switch's indication: "[spoon]", the model's mark of an
    object it imagines) count as plain mentions in the figures above. `chair_i_marked` / `chair_s_marked` leave
    the marked ones out of the hallucinations while keeping them among the mentions (CCEval's CHAIR_i);
    `bracketed` is marked mentions per caption and `bracketed_absent_share` the share of them that are absent.
    """
    if len(captions) != len(ground_truth):
        raise ValueError(f"{len(captions)} captions but {len(ground_truth)} ground-truth sets")
    n_mentions = n_halluc = n_halluc_caps = n_correct = n_gt = n_words = n_subst = n_prior = 0
    marks = [0, 0, 0, 0]  # unmarked hallucinations, captions with one, marked mentions, marked absent ones
    for i, (cap, gt) in enumerate(zip(captions, ground_truth)):
        marks = [a + b for a, b in zip(marks, _marked_counts(cap, gt, synonyms))]
        mentions = caption_mentions(cap, synonyms)
        sentences = split_sentences(cap.lower())
        bad = [(c, si) for c, si in mentions if c not in gt]
        n_mentions += len(mentions)
        n_halluc += len(bad)
        n_halluc_caps += bool(bad)
        n_correct += len({c for c, _ in mentions if c in gt})
        n_gt += len(gt)
        n_words += len(cap.split())
        if occupied is not None:
            n_subst += sum(any(cell in occupied[i] for cell in sentence_cells(sentences[si])) for _, si in bad)
        if typical is not None:
            n_prior += sum(c in typical[i] for c, _ in bad)
    n = max(len(captions), 1)
    out = {
        "chair_s": n_halluc_caps / n,
        "chair_i": n_halluc / n_mentions if n_mentions else 0.0,
        "recall": n_correct / n_gt if n_gt else 0.0,
        "length": n_words / n,
        "mentions": float(n_mentions),
        "hallucinated_mentions": float(n_halluc),
        "n": float(len(captions)),
        "chair_i_marked": marks[0] / n_mentions if n_mentions else 0.0,
        "chair_s_marked": marks[1] / n,
        "bracketed": marks[2] / n,
        "bracketed_absent_share": marks[3] / marks[2] if marks[2] else 0.0,
    }
    if occupied is not None:
        out["substitution_share"] = n_subst / n_halluc if n_halluc else 0.0
        out["addition_share"] = (n_halluc - n_subst) / n_halluc if n_halluc else 0.0
    if typical is not None:
        out["prior_share"] = n_prior / n_halluc if n_halluc else 0.0
    return out


def _marked_counts(caption: str, gt: set[str], synonyms: Mapping[str, str]) -> tuple[int, int, int, int]:
    """(hallucinated mentions outside brackets, 1 if any, bracketed mentions, bracketed absent ones)."""
    marked = [c for text in BRACKETED.findall(caption) for c, _ in caption_mentions(text, synonyms)]
    bad_unmarked = [c for c, _ in caption_mentions(BRACKETED.sub(" ", caption), synonyms) if c not in gt]
    return len(bad_unmarked), int(bool(bad_unmarked)), len(marked), sum(c not in gt for c in marked)


def parse_yes_no(text: str) -> str:
    """Official POPE answer parsing (RUCAIBox/POPE evaluate.py)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def pope(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (yes = positive) and yes-ratio from raw answers and 'yes'/'no' labels."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    return yes_no_counts_scores([parse_yes_no(p) for p in predictions], labels)[0]


def yes_no_counts_scores(answers: Sequence[str], labels: Sequence[str]) -> tuple[dict[str, float], dict[str, int]]:
    """POPE's scores of parsed 'yes'/'no' answers against labels, and the counts (tp, fp, tn, fn) behind them."""
    tp = sum(a == "yes" and y == "yes" for a, y in zip(answers, labels))
    fp = sum(a == "yes" and y == "no" for a, y in zip(answers, labels))
    tn = sum(a == "no" and y == "no" for a, y in zip(answers, labels))
    fn = sum(a == "no" and y == "yes" for a, y in zip(answers, labels))
    n = max(len(labels), 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    scores = {
        "accuracy": (tp + tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n,
        "n": float(len(labels)),
    }
    return scores, {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
