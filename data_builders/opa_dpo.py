"""OPA-DPO data: the policy's own rollouts, corrected by an expert, filtered, stored as OPARecords.

    align build-data configs/toy/opa_dpo_data.yaml

Steps, each resumable:
1. prompts + images + reference answers (ToyWorld: a clean caption written from ground truth); bad public rows and
   prompts longer than the policy takes are skipped and counted in the summary's `dropped`;
2. rollout: the policy samples one response per prompt (T=1.0, top_k=30, top_p=0.95 by default), appended to
   `rollouts.jsonl` batch by batch, so a killed build restarts after the last whole batch and writes the same file;
3. expert correction (`correct_all`: disk cache by request hash, bounded concurrency, failures recorded); the
   summary's tokens and cost count every reply the rows use, cached ones from earlier runs included;
4. filters, as OPA-DPO's dataset builder: empty report, a repeated last sentence or a word repeated more than
   `max_word_repeats` times, empty revision; then the dataset and a JSON summary.

The prompts are ToyWorld's (`toyworld_prompts`, data_builders/toyworld_data.py) or public rows
(data_builders/importers.py); the rollout engine is passed in (the protocol and the resumable loop are
data_builders/rollout.py's, the Hugging Face engine is align/rollout/engine.py), so this package never imports
`align`. The dataset is written, and read back by the OPA-DPO recipe, through data_builders/io.py.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

from data_builders.configs import OPADataConfig
from data_builders.endpoint import Usage
from data_builders.experts import CorrectionRequest, CorrectionResult, correct_all, sentences_of, summarize_results
from data_builders.io import finish_build
from data_builders.openai_expert import OpenAIExpert
from data_builders.oracle import OracleExpert
from data_builders.rollout import RolloutEngine, roll_out, rollout_prompts
from data_builders.schema import OPA_FEATURES


def filter_reason(rollout: str, result: CorrectionResult, max_word_repeats: int) -> str | None:
    """Why a corrected rollout is dropped (None = kept); the reasons are OPA-DPO's filters plus expert failures."""
    if result.report is None:
        return "expert_failed"
    if not result.report.sentences:
        return "empty_report"
    sentences = sentences_of(rollout)
    words = rollout.split()
    if len(sentences) > 1 and sentences[-1] in sentences[:-1]:
        return "repeated_sentence"
    if words and words.count(words[-1]) > max_word_repeats:
        return "repeated_word"
    if not result.report.revision.strip():
        return "empty_revision"
    return None


def make_expert(cfg: OPADataConfig):
    return OracleExpert() if cfg.expert == "oracle" else OpenAIExpert(cfg.openai)


def build(cfg: OPADataConfig, engine: RolloutEngine) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    expert = make_expert(cfg)  # before the rollout: a missing API key fails now, not after an hour of sampling
    prompts, read = rollout_prompts(cfg, engine)  # bad rows and too-long prompts skipped, counted
    rollouts = roll_out(engine, prompts, out / "rollouts.jsonl", cfg.rollout, cfg.seed)
    requests = [
        CorrectionRequest(p["id"], p["image"], p["prompt"], rollouts[p["id"]], p["reference"], p["objects"])
        for p in prompts
    ]
    results = correct_all(expert, requests, out / "expert_cache", cfg.concurrency)
    source = f"toyworld/{cfg.split}" if cfg.prompts is None else str(cfg.prompts)
    prices = (cfg.openai.price_in, cfg.openai.price_out)
    records = []
    dropped: collections.Counter = collections.Counter(read["skipped"])
    for p, r in zip(prompts, results, strict=True):
        reason = filter_reason(rollouts[p["id"]], r, cfg.max_word_repeats)
        if reason:
            dropped[reason] += 1
            continue
        meta = {"dataset": source, "expert": expert.expert_id, "request_hash": r.request_hash}
        records.append(
            {
                "id": p["id"],
                "image": {"bytes": p["image"], "path": None},
                "prompt": p["prompt"],
                "reference": p["reference"],
                "rollout": rollouts[p["id"]],
                "revision": r.report.revision,
                "offpolicy": p["offpolicy"],
                "report": json.dumps(r.report.to_dict()),
                "source": f"{engine.name}+{expert.expert_id}",
                "meta": json.dumps(meta),
            }
        )
    summary = {
        "dataset": str(out / "dataset"),
        "rows_in": read["rows_in"],
        "rows_out": len(records),
        "dropped": dict(dropped),
        "skipped_examples": read["examples"],
        "expert": {**summarize_results(results, *prices), **cumulative_usage(results, *prices)},
        "corrected_sentences": _score_counts(results),
        "seconds": round(time.time() - t0, 1),
    }
    empty = f"{cfg.output_dir}: no rows left of {read['rows_in']} (dropped: {dict(dropped)})"
    return finish_build(out, summary, records, OPA_FEATURES, empty)


def _score_counts(results: list[CorrectionResult]) -> dict[str, int]:
    counts = collections.Counter(s.score for r in results if r.report for s in r.report.sentences)
    return {f"score_{k}": counts[k] for k in (4, 3, 2, 1)}


def cumulative_usage(results: list[CorrectionResult], price_in: float, price_out: float) -> dict:
    """Tokens and cost of every reply this build's rows use, whichever run paid for it: a cached reply carries the
    usage recorded when it was paid, so a resumed build counts what the earlier runs paid too (a reply shared by
    identical requests, one request hash, once); `paid_this_run` is what this run's requests cost."""
    total, this_run, seen = Usage(), Usage(), set()
    for r in results:
        if not r.cached:
            this_run += r.usage
            total += r.usage
            seen.add(r.request_hash)
    for r in results:
        if r.cached and r.request_hash not in seen:
            total += r.usage
            seen.add(r.request_hash)
    replies = {r.request_hash: r for r in results}.values()  # one per request hash, as the cache keeps them
    return {
        "paid_requests": sum(r.usage.prompt_tokens > 0 for r in replies),  # a failed reply counts in its run only
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
        "cost_usd": total.cost_usd(price_in, price_out),
        "paid_this_run": {
            "requests": sum(r.usage.prompt_tokens > 0 for r in results if not r.cached),
            "prompt_tokens": this_run.prompt_tokens,
            "completion_tokens": this_run.completion_tokens,
            "cost_usd": this_run.cost_usd(price_in, price_out),
        },
    }
