"""Iterative RLAIF-V: each round, the latest policy samples, AI feedback makes pairs, DPO trains on them.

    align train configs/toy/rlaif_v.yaml

Round r (r = 0, 1, ...), in `output_dir/round-r/`:
1. data/   `align build-data` of data_builders/rlaif_v.py with `policy` = the current policy (round 0: `policy`);
2. train/  DPO (align/core/preference.py; loss from `train`) with a fresh LoRA on the current policy, whose
           adapter-free weights are the reference (RLAIF-V: each iteration's reference is the model it starts from);
3. the merged `train/final` becomes the next round's policy, and is evaluated when `train.eval_at_end`; the round's
   LoRA adapter is kept in `train/adapter/`.
With `data.served` the rounds sample from a vLLM server instead of loading the policy: round 0 samples its base
(`data.served.model`, the same model as `policy`), round r the adapters of rounds 0..r-1 stacked into one LoRA over
that base (align/core/lora_stack.py: exact), written to `round-r/served_adapter/` and loaded into the server by path
under a name that carries its content hash; no server restart, no merged model to upload.
Under `accelerate launch` the main process builds each round's data (and evaluates) while the others wait; every
process trains.
A killed run resumes: finished rounds are reported finished, a round's data build and training resume on their own;
a changed config is refused unless `--resume` (go on under it, e.g. more rounds) or `--overwrite` (every round anew).
`rounds.json` lists each round's data summary, training loss and eval; `rounds.md` is the table.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from align.config.loading import save_config, to_dict
from align.config.recipes import DPORecipeConfig, RLAIFVConfig
from align.core.distributed import barrier, is_main
from align.core.lora_stack import write_stacked_adapter
from align.core.preference import train_dpo
from align.core.run_dir import ADAPTER_DIR, CONFIG_FILE, saved_config_changes
from align.core.trainer import write_summary
from align.eval.callback import attach_checkpoint_eval
from align.eval.runner import evaluate_checkpoint
from align.rollout.builds import build_rlaif_v_data
from data_builders.configs import RLAIFVDataConfig


def round_configs(cfg: RLAIFVConfig, r: int, policy: str) -> tuple[RLAIFVDataConfig, DPORecipeConfig]:
    """The data and train configs of round r, starting from `policy`."""
    root = Path(cfg.output_dir) / f"round-{r}"
    data = dataclasses.replace(cfg.data, output_dir=str(root / "data"), policy=policy, seed=cfg.seed, round=r)
    model = dataclasses.replace(cfg.train.model, name_or_path=policy)
    run = dataclasses.replace(cfg.train.run, output_dir=str(root / "train"), seed=cfg.seed + r)
    train = dataclasses.replace(cfg.train, model=model, dataset=str(root / "data" / "dataset"), run=run)
    return data, train


def served_adapter(cfg: RLAIFVConfig, r: int) -> tuple[str, Path] | None:
    """(name, folder) of the adapter the server samples in round r: rounds 0..r-1's LoRAs stacked over the start
    policy. None when nothing is served, and in round 0 (the server's base is the start policy)."""
    if cfg.data.served is None or r == 0:
        return None
    out = Path(cfg.output_dir)
    adapters = [out / f"round-{i}" / "train" / ADAPTER_DIR for i in range(r)]
    try:
        folder, digest = write_stacked_adapter(adapters, base=cfg.policy, out=out / f"round-{r}" / "served_adapter")
    except FileNotFoundError as e:  # a round trained before rounds kept their adapters
        raise FileNotFoundError(f"{e}, so round {r}'s policy cannot be served; rerun with --overwrite") from None
    rank = json.loads((folder / "adapter_config.json").read_text())["r"]
    print(f"[rlaif_v] round {r}: serving rounds 0-{r - 1} as one rank-{rank} adapter (--max-lora-rank >= {rank})")
    return f"rlaif_v-round{r}-{digest}", folder.resolve()


def run_round(cfg: RLAIFVConfig, r: int, policy: str) -> dict:
    data_cfg, train_cfg = round_configs(cfg, r, policy)
    data_summary = Path(data_cfg.output_dir) / "summary.json"
    if is_main() and not (Path(data_cfg.output_dir) / "dataset" / "dataset_info.json").is_file():
        print(f"[rlaif_v] round {r}: sampling and checking with {policy}")
        build_rlaif_v_data(data_cfg, adapter=served_adapter(cfg, r))
    barrier()  # the other processes wait for the round's data
    print(f"[rlaif_v] round {r}: DPO on {data_cfg.output_dir}/dataset")
    trained = train_round(train_cfg, keep_adapter=train_cfg.model.finetune == "lora")  # a finished round says so
    return {
        "round": r,
        "start": policy,
        "final": trained["final"],
        "data": json.loads(data_summary.read_text()),
        "train_loss": trained["train"].get("train_loss"),
        "eval": trained.get("eval"),
    }


def train_round(cfg: DPORecipeConfig, keep_adapter: bool) -> dict:
    """One round's DPO: a fresh LoRA on the round's start policy, evaluated at the end."""
    summary = train_dpo(cfg, prepare=attach_checkpoint_eval, keep_adapter=keep_adapter)
    if summary.pop("finished", False):  # already trained and evaluated: nothing is rewritten
        return summary
    if cfg.run.eval_at_end:
        summary["eval"] = evaluate_checkpoint(summary["final"], cfg.eval, data_cfg=cfg.data)
    return write_summary(cfg.run, summary)


def format_rounds(start_eval: dict | None, rounds: list[dict]) -> str:
    rows = ["| policy | pairs | CHAIR_s | CHAIR_i | recall | POPE F1 |", "|---|---|---|---|---|---|"]

    def row(name: str, pairs, ev: dict | None) -> str:
        if not ev:
            return f"| {name} | {pairs} | | | | |"
        c, pope = ev["toyworld_chair"], ev.get("toyworld_pope", {}).get("f1_mean")
        f1 = f"{100 * pope:.1f}" if pope is not None else ""
        return f"| {name} | {pairs} | {100 * c['chair_s']:.1f} | {100 * c['chair_i']:.1f} | {100 * c['recall']:.1f} | {f1} |"  # noqa: E501

    rows.append(row("start", "", start_eval))
    rows += [row(f"round {r['round']}", r["data"]["pairs"]["kept"], r["eval"]) for r in rounds]
    return "\n".join(rows) + "\n"


def begin_rounds(cfg: RLAIFVConfig) -> Path:
    """The output_dir of the loop under `train.run.existing`: `overwrite` deletes every round (its data was sampled
    by the old policies); `auto` refuses a config that differs from the saved one; `resume` goes on under it."""
    out, mode = Path(cfg.output_dir), cfg.train.run.existing
    if not is_main():
        barrier()  # the main process checks, clears and saves the config
        return out
    if mode == "overwrite":
        for old in [*out.glob("round-*"), out / "rounds.json", out / "rounds.md"]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    elif changes := saved_config_changes(out, to_dict(cfg), mode, missing_ok=True):
        print(f"[rlaif_v] --resume under a changed config: {'; '.join(changes)}")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG_FILE)
    barrier()
    return out


def main(cfg: RLAIFVConfig) -> dict:
    out = begin_rounds(cfg)
    t0 = time.time()
    start_eval = None
    if cfg.eval_start and cfg.train.run.eval_at_end:
        start_eval = evaluate_checkpoint(cfg.policy, cfg.train.eval, data_cfg=cfg.train.data)
    policy, rounds = cfg.policy, []
    for r in range(cfg.rounds):
        rounds.append(run_round(cfg, r, policy))
        policy = rounds[-1]["final"]
    summary = {"final": policy, "start_eval": start_eval, "rounds": rounds, "seconds": round(time.time() - t0, 1)}
    table = format_rounds(start_eval, rounds)
    if is_main():
        (out / "rounds.json").write_text(json.dumps(summary, indent=2))
        (out / "rounds.md").write_text(table)
    print(table)
    return summary
