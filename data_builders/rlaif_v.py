"""RLAIF-V-style AI-feedback preference data: sample, divide into claims, check, score, pair, length-balance.

    align build-data configs/toy/rlaif_v_data.yaml     # one round; `align train configs/toy/rlaif_v.yaml` iterates

Steps, as RLAIF-V's pipeline (methods.md §2.3), each resumable:
1. the policy samples `samples` responses per prompt (T=0.7), appended to `samples.jsonl` batch by batch;
2. each response is divided into atomic claims with yes/no questions (data_builders/claims.py);
3. a labeler answers every question; a claim is rejected when P(yes) <= 0.5, i.e. P(yes) <= P(no); per response
   the claims and verdicts are appended to `feedback.jsonl` chunk by chunk, so a killed build resumes;
4. score = −(rejected claims); every two responses of a prompt whose scores differ by >= `min_score_diff` make a
   candidate pair (higher score = chosen), and `pairs_per_prompt` of them are drawn per prompt;
5. length balancing: the threshold t on (len_rejected − len_chosen) / len_rejected (words) that brings the mean
   chosen and rejected lengths closest is searched over 0, 0.02, ..., 0.98, and pairs above it are dropped
   (otherwise fewer claims, i.e. shorter answers, would win most pairs).
The output is a PreferenceRecord dataset (no spans: plain DPO) plus `summary.json`. The prompts are
data_builders/toyworld_data.py's or public rows, the sampling loop data_builders/rollout.py's (the engine is passed
in: align/rollout/engine.py), the resumable JSONL and the dataset write data_builders/io.py's.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np

from data_builders.claims import (
    CheckRequest,
    Claim,
    Divider,
    Labeler,
    SentenceDivider,
    ToyWorldDivider,
    claim_holds,
    parse_truth,
)
from data_builders.configs import RLAIFVDataConfig
from data_builders.endpoint import Usage
from data_builders.io import finish_build, read_jsonl
from data_builders.openai_feedback import OpenAIDivider, divide_all
from data_builders.progress import bar
from data_builders.rollout import RolloutEngine, roll_out, rollout_prompts
from data_builders.schema import PREFERENCE_FEATURES

THRESHOLDS = [round(0.02 * i, 2) for i in range(50)]


# ---------------------------------------------------------------- scores and pairs (pure)


def response_score(verdicts: list[bool]) -> int:
    """RLAIF-V's score: minus the number of rejected claims."""
    return -sum(not v for v in verdicts)


def candidate_pairs(scores: dict[str, int], texts: dict[str, str], min_diff: int) -> list[tuple[str, str]]:
    """(chosen id, rejected id) for every two responses whose scores differ by >= min_diff and whose texts
    differ, in a fixed order."""
    pairs = []
    for a, b in itertools.combinations(sorted(scores), 2):
        if abs(scores[a] - scores[b]) < min_diff or texts[a].strip() == texts[b].strip():
            continue
        pairs.append((a, b) if scores[a] > scores[b] else (b, a))
    return pairs


def _length_gap(pairs: list[dict]) -> float:
    chosen = np.mean([len(p["chosen"].split()) for p in pairs])
    rejected = np.mean([len(p["rejected"].split()) for p in pairs])
    return abs(chosen - rejected) / max(rejected, 1e-9)


def length_balance(pairs: list[dict]) -> tuple[list[dict], dict]:
    """Drop the pairs whose chosen is shorter than its rejected by more than a searched fraction of the rejected
    length; the fraction is the one of THRESHOLDS whose kept pairs have the closest mean lengths."""

    def keep(t: float) -> list[dict]:
        return [p for p in pairs if (_words(p["rejected"]) - _words(p["chosen"])) / max(_words(p["rejected"]), 1) <= t]

    tried = [(t, keep(t)) for t in THRESHOLDS]
    tried = [(t, kept) for t, kept in tried if kept]
    if not tried:
        return pairs, {"threshold": None, "kept": len(pairs)}
    best, kept = min(tried, key=lambda tk: _length_gap(tk[1]))  # the smallest t wins a tie
    stats = {
        "threshold": best,
        "kept": len(kept),
        "dropped": len(pairs) - len(kept),
        "gap_before": round(float(_length_gap(pairs)), 4) if pairs else None,
        "gap_after": round(float(_length_gap(kept)), 4),
    }
    return kept, stats


def _words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------- the build


def make_divider(cfg: RLAIFVDataConfig, out: Path) -> Divider:
    if cfg.divider == "toyworld":
        return ToyWorldDivider()
    if cfg.divider == "sentences":
        return SentenceDivider()
    return OpenAIDivider(cfg.openai, cache_dir=out / "divider_cache")


def sample_prompts(cfg: RLAIFVDataConfig, engine: RolloutEngine) -> tuple[list[dict], list[dict], dict]:
    """(prompts, one entry per sample: the prompt's fields with id '<prompt id>#<k>', what was read and skipped:
    bad public rows and prompts too long for the engine, `rollout_prompts`)."""
    prompts, read = rollout_prompts(cfg, engine)
    expanded = [{**p, "id": f"{p['id']}#{k}", "prompt_id": p["id"]} for p in prompts for k in range(cfg.samples)]
    return prompts, expanded, read


def check_responses(
    samples, responses, divider, labeler, path: Path, chunk: int, concurrency: int = 1
) -> tuple[dict, collections.Counter]:
    """id → {claims, score}; responses already in `path` are kept, the rest divided, checked and appended."""
    done, failed = read_jsonl(path), collections.Counter()  # a line torn by a kill is checked again
    todo = [s for s in samples if s["id"] not in done]
    with path.open("a") as f:
        for start in bar(range(0, len(todo), chunk), desc="feedback"):
            batch = todo[start : start + chunk]
            divided = divide_all(divider, [(s["prompt"], responses[s["id"]]) for s in batch], concurrency)
            claims: dict[str, list[Claim]] = {}
            for s, result in zip(batch, divided, strict=True):
                if isinstance(result, Exception):
                    failed["divider_failed"] += 1  # not written: divided again on a rerun
                else:
                    claims[s["id"]] = result
            answers = ask_once(labeler, batch, claims)
            for s in batch:
                if s["id"] not in claims:
                    continue
                probs = [answers[f"{s['id']}#{i}"] for i in range(len(claims[s["id"]]))]
                if any(p is None for p in probs):
                    failed["labeler_failed"] += 1
                    continue  # not written: a rerun checks this response again
                row = {
                    "id": s["id"],
                    "prompt_id": s["prompt_id"],
                    "claims": [{**c.to_dict(), "p_yes": p} for c, p in zip(claims[s["id"]], probs, strict=True)],
                    "score": response_score([p > 0.5 for p in probs]),
                }
                done[s["id"]] = row
                f.write(json.dumps(row) + "\n")
            f.flush()
    return done, failed


def ask_once(labeler: Labeler, batch: list[dict], claims: dict[str, list[Claim]]) -> dict[str, float | None]:
    """'<sample id>#<claim index>' → P(yes). The samples of one prompt share its image and often a claim, so each
    (prompt, question) is asked once (about half the questions at 4 samples per prompt on ToyWorld)."""
    unique: dict[tuple[str, str], CheckRequest] = {}
    for s in batch:
        for i, c in enumerate(claims.get(s["id"], [])):
            unique.setdefault(
                (s["prompt_id"], c.question), CheckRequest(f"{s['id']}#{i}", s["image"], c, s["objects"])
            )
    asked = dict(zip(unique, labeler.p_yes(list(unique.values())), strict=True))
    return {
        f"{s['id']}#{i}": asked[(s["prompt_id"], c.question)]
        for s in batch
        for i, c in enumerate(claims.get(s["id"], []))
    }


def labeler_agreement(feedback: dict[str, dict], samples: list[dict]) -> float | None:
    """Share of checked claims on which the labeler agrees with ToyWorld ground truth (None without truth)."""
    agree = total = 0
    for s in samples:
        row = feedback.get(s["id"])
        if row is None or s.get("objects") is None:
            continue
        scene, objects = parse_truth(s["objects"])
        for c in row["claims"]:
            if c["kind"] == "statement":
                continue
            claim = Claim(c["text"], c["question"], c["kind"], c["facts"])
            agree += claim_holds(claim, scene, objects) == (c["p_yes"] > 0.5)
            total += 1
    return agree / total if total else None


def make_pairs(
    cfg: RLAIFVDataConfig, prompts: list[dict], samples: list[dict], responses: dict, feedback: dict
) -> tuple[list[dict], dict]:
    """Up to `pairs_per_prompt` candidate pairs per prompt, drawn with a per-(seed, round, prompt) generator so a
    rerun draws the same ones; empty responses and responses not yet checked take no part."""
    by_prompt: dict[str, list[str]] = collections.defaultdict(list)
    for s in samples:
        if s["id"] in feedback and responses[s["id"]].strip():
            by_prompt[s["prompt_id"]].append(s["id"])
    pairs, no_pair, n_candidates = [], 0, 0
    for index, p in enumerate(prompts):
        ids = by_prompt.get(p["id"], [])
        scores = {i: feedback[i]["score"] for i in ids}
        candidates = candidate_pairs(scores, {i: responses[i] for i in ids}, cfg.min_score_diff)
        n_candidates += len(candidates)
        if not candidates:
            no_pair += 1
            continue
        rng = np.random.default_rng([cfg.seed, cfg.round, index])
        for k in sorted(rng.permutation(len(candidates))[: cfg.pairs_per_prompt]):
            chosen, rejected = candidates[k]
            meta = {"prompt_id": p["id"], "chosen_id": chosen, "rejected_id": rejected, "round": cfg.round}
            meta |= {"chosen_score": scores[chosen], "rejected_score": scores[rejected]}
            pairs.append({"prompt": p, "chosen": responses[chosen], "rejected": responses[rejected], "meta": meta})
    counts = {"candidates": n_candidates, "prompts_without_pair": no_pair, "drawn": len(pairs)}
    return pairs, counts


def paid_usage(*endpoints) -> dict:
    """Tokens the OpenAI-compatible divider and labeler were paid: this run, and over every run of this build (each
    cached answer keeps the usage it was paid with). Oracle and rule-based steps cost nothing."""
    this_run, all_runs = Usage(), Usage()
    for endpoint in endpoints:
        this_run += getattr(endpoint, "usage", Usage())
        if getattr(endpoint, "cache", None) is not None:
            all_runs += endpoint.cache.recorded_usage()
    return {"this_run": dataclasses.asdict(this_run), "all_runs": dataclasses.asdict(all_runs)}


def build(cfg: RLAIFVDataConfig, engine: RolloutEngine, labeler: Labeler) -> dict:
    """Write `output_dir/dataset` (PREFERENCE_FEATURES) and `summary.json`; returns the summary."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    divider = make_divider(cfg, out)
    prompts, samples, read = sample_prompts(cfg, engine)
    seed = cfg.seed + 100_003 * cfg.round  # a new draw each round, the same on a rerun of that round
    responses = roll_out(engine, samples, out / "samples.jsonl", cfg.rollout, seed)
    feedback, failed = check_responses(
        samples, responses, divider, labeler, out / "feedback.jsonl", cfg.chunk, cfg.concurrency
    )
    pairs, pair_counts = make_pairs(cfg, prompts, samples, responses, feedback)
    length_stats = {"threshold": None}
    if cfg.length_balance and pairs:
        pairs, length_stats = length_balance(pairs)
    source = f"{engine.name}+{divider.divider_id}+{labeler.labeler_id}"
    records = [
        {
            "id": f"{p['meta']['chosen_id']}>{p['meta']['rejected_id']}",
            "image": {"bytes": p["prompt"]["image"], "path": None},
            "prompt": p["prompt"]["prompt"],
            "chosen": p["chosen"],
            "rejected": p["rejected"],
            "chosen_spans": [],
            "rejected_spans": [],
            "source": source,
            "meta": json.dumps({"builder": "rlaif_v", **p["meta"]}),
        }
        for p in pairs
    ]
    scores = collections.Counter(row["score"] for row in feedback.values())
    summary = {
        "dataset": str(out / "dataset"),
        "round": cfg.round,
        "policy": cfg.policy,
        "source": source,
        "prompts": len(prompts),
        "rows_in": read["rows_in"],
        "skipped": read["skipped"],
        "skipped_examples": read["examples"],
        "responses": len(samples),
        "checked": len(feedback),
        "failed": dict(failed + collections.Counter(getattr(labeler, "failures", {}))),
        "usage": dataclasses.asdict(labeler.usage) if hasattr(labeler, "usage") else None,
        "paid": paid_usage(divider, labeler),
        "claims": sum(len(r["claims"]) for r in feedback.values()),
        "score_histogram": {str(k): scores[k] for k in sorted(scores)},
        "labeler_agreement_with_truth": labeler_agreement(feedback, samples),
        "pairs": {**pair_counts, "kept": len(records)},
        "length_balance": length_stats,
        "seconds": round(time.time() - t0, 1),
    }
    return finish_build(out, summary, records, PREFERENCE_FEATURES, f"{cfg.output_dir}: no preference pair")
