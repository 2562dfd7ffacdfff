"""A short DPO run on a tiny LLaVA with each attention backend, through the recipe's own code (align.core.preference
.train_dpo): the same losses (to --tol) and each backend's steps/s. Part of bench/gpu_check.sh; no download.

    python bench/gpu_dpo_check.py                              # CUDA: triton_fused vs sdpa, 20 steps
    python bench/gpu_dpo_check.py --attn sdpa eager --steps 4  # a CPU dry run of the script itself

The model is a tiny LLaVA built in-process (head_dim 64, which every backend takes) and saved to a temp dir; the pairs
are ToyWorld images with their true caption (chosen) against one with a made-up object (rejected).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from datasets import Image as DatasetImage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from align.config.recipes import DPORecipeConfig  # noqa: E402
from align.config.sections import DataConfig, ModelConfig, OptimConfig, RunConfig, TinyModelSpec  # noqa: E402
from align.core.models import build_model, save_policy  # noqa: E402
from align.core.preference import train_dpo  # noqa: E402
from data_builders import toyworld as tw  # noqa: E402
from data_builders.schema import PREFERENCE_FEATURES  # noqa: E402
from data_builders.toyworld_data import build_toyworld, hallucinated_caption, objects_from_json  # noqa: E402

WORLD = tw.WorldConfig(seed=3, n_train=64, n_val=2, n_test=2)
SPEC = TinyModelSpec(text_hidden=256, text_heads=4, text_kv_heads=2, text_mlp=512, vision_hidden=128, vision_heads=2)


def pairs(root: Path) -> str:
    train = build_toyworld(WORLD, root / "cache")["train"].cast_column("image", DatasetImage(decode=False))
    rows = []
    for i, r in enumerate(train):
        rng = np.random.default_rng(i)
        rejected = hallucinated_caption(r["scene"], objects_from_json(r["objects"]), rng, WORLD)
        pair = {"chosen": r["caption"], "rejected": rejected, "chosen_spans": [], "rejected_spans": []}
        rows.append({"id": r["image_id"], "image": r["image"], "prompt": tw.CAPTION_PROMPTS[0], **pair,
                     "source": "toy", "meta": "{}"})  # fmt: skip
    path = root / "pairs"
    Dataset.from_list(rows, features=PREFERENCE_FEATURES).save_to_disk(str(path))
    return str(path)


def run(policy: str, dataset: str, attn: str, steps: int, out: Path) -> dict:
    cfg = DPORecipeConfig(
        run=RunConfig(output_dir=str(out / attn), logging_steps=1, save_steps=10_000, eval_at_end=False,
                      existing="overwrite"),
        dataset=dataset,
        model=ModelConfig(name_or_path=policy, lora_r=8, lora_alpha=16, lora_dropout=0.0, attn_implementation=attn),
        data=DataConfig(world=WORLD),
        optim=OptimConfig(lr=1e-3, warmup_steps=0, max_steps=steps, batch_size=8),
    )  # fmt: skip
    t0 = time.time()
    summary = train_dpo(cfg)
    losses = [h["loss"] for h in summary["log_history"] if "loss" in h]
    return {"losses": losses, "seconds": round(time.time() - t0, 2), "train_steps_per_second":
            summary["train"].get("train_steps_per_second")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attn", nargs=2, default=["triton_fused", "sdpa"], help="the backend checked, then the peer")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tol", type=float, default=1e-3, help="largest allowed |loss difference| at any step")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu_dpo_check.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, processor = build_model(ModelConfig(tiny=SPEC, finetune="full"), seed=0)
        policy = str(save_policy(model, processor, root / "policy"))
        dataset = pairs(root)
        results = {attn: run(policy, dataset, attn, args.steps, root / "runs") for attn in args.attn}
    ours, peer = (results[a]["losses"] for a in args.attn)
    gap = max(abs(a - b) for a, b in zip(ours, peer, strict=True))
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "steps": args.steps,
              "backends": results, "max_loss_gap": gap, "tol": args.tol, "ok": gap <= args.tol}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "backends"}, indent=2))
    for attn, r in results.items():
        print(f"{attn}: {r['train_steps_per_second']} steps/s, {r['seconds']} s")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
