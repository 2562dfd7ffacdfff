"""OPA-DPO data: the policy's own rollouts, corrected by an expert, filtered, stored as OPARecords.

    align build-data configs/toy/opa_dpo_data.yaml

Steps, each resumable:
1. prompts + images + reference answers (ToyWorld: a clean caption written from ground truth);
2. rollout: the policy samples one response per prompt (T=1.0, top_k=30, top_p=0.95 by default), appended to
   `rollouts.jsonl` batch by batch, so a killed build restarts after the last finished batch;
3. expert correction (`correct_all`: disk cache by request hash, bounded concurrency, failures recorded);
4. filters, as OPA-DPO's dataset builder: empty report, a repeated last sentence or a word repeated more than
   `max_word_repeats` times, empty revision; then the dataset and a JSON summary.

The rollout engine is passed in (align/rollout.py holds the HF one), so this package never imports `align`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import shutil
import tempfile
import time
import typing
from pathlib import Path
from typing import Protocol

import numpy as np
from datasets import Dataset, Image, load_from_disk
from tqdm.auto import tqdm

from data_builders import toyworld as tw
from data_builders.experts import CorrectionRequest, CorrectionResult, correct_all, sentences_of, summarize_results
from data_builders.importers import public_prompts
from data_builders.openai_expert import OpenAIExpert, OpenAIExpertConfig
from data_builders.oracle import OracleExpert
from data_builders.schema import OPA_FEATURES
from data_builders.toyworld_data import build_toyworld, objects_from_json


@dataclasses.dataclass
class RolloutSettings:
    temperature: float = dataclasses.field(
        default=0.2, metadata={"help": "Sampling temperature (OPA-DPO: 1.0; the toy policy does best near greedy)."}
    )
    top_k: int = dataclasses.field(default=0, metadata={"help": "Top-k sampling (OPA-DPO: 30; 0 = off)."})
    top_p: float = dataclasses.field(default=0.95, metadata={"help": "Nucleus sampling (OPA-DPO: 0.95)."})
    max_new_tokens: int = dataclasses.field(default=64, metadata={"help": "Longest response in tokens."})
    batch_size: int = dataclasses.field(default=64, metadata={"help": "Prompts per generate call."})

    def __post_init__(self):
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature > 0, 0 < top_p <= 1 and top_k >= 0")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")


@dataclasses.dataclass
class OPADataConfig:
    """`align build-data` config for OPA-DPO preference data."""

    recipe: typing.Literal["opa_dpo_data"] = dataclasses.field(
        default="opa_dpo_data", metadata={"help": "Selects this builder."}
    )
    output_dir: str = dataclasses.field(default="runs/opa_data", metadata={"help": "Where everything is written."})
    policy: str = dataclasses.field(
        default="runs/demo/sft_base/final", metadata={"help": "Checkpoint that rolls out (the base policy)."}
    )
    prompts: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Public RLAIF-V-style rows {image, question, chosen[, rejected]} (save_to_disk folder, .parquet "
            "or .jsonl; chosen becomes the reference); null = ToyWorld. Needs expert: openai (no ground truth)."
        },
    )
    world: tw.WorldConfig = dataclasses.field(default_factory=tw.WorldConfig, metadata={"help": "ToyWorld."})
    cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "ToyWorld cache root."})
    split: typing.Literal["train", "val", "test"] = dataclasses.field(default="train", metadata={"help": "Images."})
    limit: int | None = dataclasses.field(default=None, metadata={"help": "Prompts to use (null = the whole split)."})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of prompt choice and sampling."})
    rollout: RolloutSettings = dataclasses.field(default_factory=RolloutSettings, metadata={"help": "Sampling."})
    expert: typing.Literal["oracle", "openai"] = dataclasses.field(
        default="oracle", metadata={"help": "oracle (ground truth) or openai (any OpenAI-compatible VLM)."}
    )
    openai: OpenAIExpertConfig = dataclasses.field(
        default_factory=OpenAIExpertConfig, metadata={"help": "Used when expert: openai."}
    )
    concurrency: int = dataclasses.field(default=8, metadata={"help": "Expert requests in flight."})
    max_word_repeats: int = dataclasses.field(
        default=30, metadata={"help": "Drop a rollout whose last word repeats more often than this."}
    )

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 or null")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.prompts is not None and self.expert == "oracle":
            raise ValueError("prompts: public rows have no ground-truth objects for the oracle; set expert: openai")


class RolloutEngine(Protocol):
    name: str

    def generate(self, images: list[bytes], prompts: list[str], seed: int) -> list[str]:
        """One sampled response per (image, prompt); `seed` makes the batch reproducible."""
        ...


def hallucinated_caption(scene: str, objects: list[tw.SceneObject], rng, world: tw.WorldConfig) -> str:
    """A caption the policy did not write, for the off-policy DPO baseline: one present object misnamed as an
    absent same-scene class, and one absent object added, in the world's caption style."""
    objects = [tw.SceneObject(o.name, o.color, list(o.cells)) for o in objects]
    absent = [c for c in tw.SCENES[scene] if c not in {o.name for o in objects}]
    if absent:
        victim = objects[int(rng.integers(len(objects)))]
        victim.name = str(rng.choice(absent))
    text, _ = tw.caption(scene, objects, rng, world, inject=True)
    return text


def toyworld_prompts(cfg: OPADataConfig) -> list[dict]:
    """Detailed-description prompts with a clean reference caption (no injected object) per image, and an
    off-policy hallucinated caption for the baseline."""
    split = build_toyworld(cfg.world, cfg.cache_dir)[cfg.split].cast_column("image", Image(decode=False))
    n = len(split) if cfg.limit is None else min(cfg.limit, len(split))
    out = []
    for i, row in enumerate(split.select(range(n))):
        rng = np.random.default_rng([cfg.seed, i])
        objects = objects_from_json(row["objects"])
        reference, _ = tw.caption(row["scene"], objects, rng, cfg.world, inject=False)
        out.append(
            {
                "id": row["image_id"],
                "image": row["image"]["bytes"],
                "prompt": str(rng.choice(tw.CAPTION_PROMPTS)),
                "reference": reference,
                "offpolicy": hallucinated_caption(row["scene"], objects, rng, cfg.world),
                "objects": json.dumps({"scene": row["scene"], "objects": json.loads(row["objects"])}),
            }
        )
    return out


def roll_out(engine: RolloutEngine, prompts: list[dict], path: Path, settings: RolloutSettings, seed: int) -> dict:
    """id → response. Batches already in `path` (JSONL) are kept; the rest are generated and appended."""
    done: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                done[row["id"]] = row["response"]
            except (json.JSONDecodeError, KeyError):
                continue  # a line torn by a kill mid-write: that prompt is generated again
    position = {p["id"]: i for i, p in enumerate(prompts)}
    todo = [p for p in prompts if p["id"] not in done]
    batches = range(0, len(todo), settings.batch_size)
    with path.open("a") as f:
        for start in tqdm(batches, desc="rollout", leave=False):
            batch = todo[start : start + settings.batch_size]
            # seeded by where the batch starts in the whole prompt list, not in what is left: batches are written
            # whole, so a resumed build draws the same seeds, batches and samples as an uninterrupted one
            batch_seed = seed + position[batch[0]["id"]]
            replies = engine.generate([p["image"] for p in batch], [p["prompt"] for p in batch], batch_seed)
            for p, reply in zip(batch, replies, strict=True):
                done[p["id"]] = reply
                f.write(json.dumps({"id": p["id"], "response": reply}) + "\n")
            f.flush()
    return done


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
    prompts = toyworld_prompts(cfg) if cfg.prompts is None else public_prompts(cfg.prompts, cfg.limit)
    rollouts = roll_out(engine, prompts, out / "rollouts.jsonl", cfg.rollout, cfg.seed)
    requests = [
        CorrectionRequest(p["id"], p["image"], p["prompt"], rollouts[p["id"]], p["reference"], p["objects"])
        for p in prompts
    ]
    results = correct_all(expert, requests, out / "expert_cache", cfg.concurrency)
    source = f"toyworld/{cfg.split}" if cfg.prompts is None else str(cfg.prompts)
    records = []
    dropped: collections.Counter = collections.Counter()
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
        "rows_in": len(prompts),
        "rows_out": len(records),
        "dropped": dict(dropped),
        "expert": summarize_results(results, cfg.openai.price_in, cfg.openai.price_out),
        "corrected_sentences": _score_counts(results),
        "seconds": round(time.time() - t0, 1),
    }
    empty = f"{cfg.output_dir}: no rows left of {len(prompts)} (dropped: {dict(dropped)})"
    return finish_build(out, summary, records, OPA_FEATURES, empty)


def _score_counts(results: list[CorrectionResult]) -> dict[str, int]:
    counts = collections.Counter(s.score for r in results if r.report for s in r.report.sentences)
    return {f"score_{k}": counts[k] for k in (4, 3, 2, 1)}


def finish_build(out: Path, summary: dict, records: list[dict], features, empty: str) -> dict:
    """Write `summary.json`, then the dataset; no record is an error (message `empty`) after the summary is written,
    so the cause can be read there while every cached step (rollouts, expert replies) is kept for the rerun."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if not records:
        raise ValueError(f"{empty}; see {out / 'summary.json'} and rerun once the cause is fixed")
    save_dataset(Dataset.from_list(records, features=features), out / "dataset")
    return summary


def save_dataset(dataset: Dataset, path: Path) -> None:
    """Write aside, then swap in: a kill never leaves a half-written dataset at `path`."""
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".partial-"))
    dataset.save_to_disk(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def load_opa_dataset(path: str | Path) -> Dataset:
    path = Path(path)
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{path} is not an OPA dataset: build it with `align build-data <opa config>`")
    return load_from_disk(str(path))
