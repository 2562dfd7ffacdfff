"""Training-step throughput and peak memory of our DPO-family steps against TRL's `DPOTrainer` (sigmoid loss), on
the same tiny LLaVA, the same pairs, batch and precision, with the same LoRA.

    python bench/dpo_step.py                          # toy + large shapes on CPU → bench/results/dpo_step.{md,json}
    python bench/dpo_step.py --shapes toy --steps 30  # one shape, more measured steps
    python bench/dpo_step.py --repeats 3              # more interleaved rounds (the median is reported)

Variants (each a fresh process running `transformers.Trainer.train()` as a user would):
  trl           TRL 1.x DPOTrainer, peft_config=our LoRA, gradient_checkpointing off (TRL's default is on, which
                would only slow it), reference = the policy with adapters disabled, as ours
  dpo           our `dpo` recipe's trainer (align/core/preference.py), loss: dpo
  dpo_cached    the same with precompute_ref_logps: true (the reference's log-probs computed once before training,
                align/core/ref_cache.py; that one-off pass is timed apart, `precompute_s`)
  ddpo          our dense DPO (RLHF-V's token weights from the spans)
  opa_dpo       OPA-DPO's loss on its five views (reference, rollout, revision and the two masked-image views):
                one policy forward over all five and one reference forward
  opa_cached    the same with precompute_ref_logps: true (the reference forward on the two masked views only)
  opa_per_view  the same loss with one view per forward (10 forwards a step): what "five views in two passes" saves
Shapes: `toy` is the ToyWorld policy (2 layers x 128, 9 image tokens, ~35-token answers, 8 pairs a batch);
`large` is 8 layers x 512, LLaVA-1.5's 32,064-word vocabulary, 576 image tokens and 1,000-token answers, 1 pair a
batch (the toy shapes' OPA variants are left out there by default: minutes a step); `1b` (CUDA only, not run
by default on CPU) is a 1B-class LLaVA (22 layers x 2048, 576 image tokens) built in-process.

Each variant runs its warm-up steps, then the measured ones; steps/s is over the measured steps, timed from one
step's end to the next (so it includes collation, forward, backward and the optimizer step: TRL tokenises each
batch inside its collator, we encode once up front). Variants are interleaved (trl, dpo, ..., trl, dpo, ...) over
`--repeats` rounds so that a slow spell of the machine hits each alike; the median is reported.
Peak memory comes from one more round, growth over the memory held after the warm-up. CUDA: max_memory_allocated
minus memory_allocated. CPU: VmHWM (reset through /proc/self/clear_refs) minus VmRSS, with glibc told to return
big blocks on free (LIVE_MEMORY), so that RSS follows live tensors; that slows every variant by ~20%, hence a round
of its own. Forward passes per step are counted by a hook on the LLaVA model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # appended: the repo's kernels/ must not shadow an installed `kernels`
from dpo_step_trainers import PROMPT, SHAPES, opa_trainer, our_dpo_trainer, trl_trainer  # noqa: E402
from machine import machine_info  # noqa: E402  (this script's folder is on sys.path)

VARIANTS = ("trl", "dpo", "dpo_cached", "ddpo", "opa_dpo", "opa_cached", "opa_per_view")
SPEED_TARGET = 1.2  # our DPO step >= 1.2x TRL's steps/s ...
# the memory round: big blocks mmap'd and returned to the system on free, so that RSS follows live memory rather
# than glibc's free lists (which keep a warm-up's blocks resident); it slows every variant alike (~20%), hence apart
MEMORY_STEPS = 1
LIVE_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
# OPA-DPO's five views at 1,000-token answers take minutes a step here: the large shape leaves them out by default
DEFAULT_VARIANTS = {"toy": list(VARIANTS), "large": ["trl", "dpo", "dpo_cached"], "1b": ["trl", "dpo", "dpo_cached"]}


# ---------------------------------------------------------------- the shared model and pairs (built once per shape)


def prepare(shape: str, root: Path, seed: int = 0) -> dict:
    """Save the shape's tiny LLaVA and a PreferenceRecord dataset of random pairs under `root`."""
    import io

    import torch
    from datasets import Dataset
    from PIL import Image

    from align.config.sections import ModelConfig, TinyModelSpec
    from align.core.models import build_model, save_policy
    from data_builders import toyworld
    from data_builders.schema import PREFERENCE_FEATURES

    spec_kw, _, (lo, hi), n_pairs, _, _ = SHAPES[shape]
    spec = TinyModelSpec(**{k: v for k, v in spec_kw.items() if k != "vocab"})
    model, processor = build_model(ModelConfig(tiny=spec, finetune="full"), seed=seed)
    if "vocab" in spec_kw:  # LLaVA-1.5's vocabulary size: rows past the tiny tokenizer's words are never read
        model.resize_token_embeddings(spec_kw["vocab"], mean_resizing=False)
    policy = save_policy(model, processor, root / "policy")
    rng, words = random.Random(seed), [w for w in toyworld.vocabulary() if w.isalpha()]
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n_pairs):
        pixels = (torch.rand(spec.image_size, spec.image_size, 3, generator=gen) * 255).to(torch.uint8).numpy()
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        chosen, rejected = (" ".join(rng.choices(words, k=rng.randint(lo, hi))) + "." for _ in range(2))
        third = len(chosen) // 3  # a corrected-looking span in the middle of each answer (DDPO's weights)
        rows.append({
            "id": f"pair-{i}", "image": {"bytes": buf.getvalue(), "path": None}, "prompt": PROMPT,
            "chosen": chosen, "rejected": rejected, "chosen_spans": [[third, 2 * third, 5.0]],
            "rejected_spans": [[third, 2 * third, 5.0]], "source": "bench", "meta": "{}",
        })  # fmt: skip
    Dataset.from_list(rows, features=PREFERENCE_FEATURES).save_to_disk(str(root / "pairs"))
    return {"policy": str(policy), "pairs": str(root / "pairs")}


# ---------------------------------------------------------------- the measuring callback


def status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def step_timer(warmup: int, cuda: bool):
    """A TrainerCallback recording each step's end time and the peak memory over the post-warm-up baseline."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends, self.base, self.peak, self.forwards, self.forwards_at_warmup = [], 0, 0, 0, 0

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            if len(self.ends) == warmup:
                self.forwards_at_warmup = self.forwards
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    self.base = torch.cuda.memory_allocated()
                else:
                    reset_peak_rss()
                    self.base = status_kb("VmRSS") * 1024
            elif len(self.ends) > warmup:
                now = torch.cuda.max_memory_allocated() if cuda else status_kb("VmHWM") * 1024
                self.peak = max(self.peak, now - self.base)

    return StepTimer()


def count_forwards(trainer, timer) -> None:
    """Count calls of the innermost (LLaVA) model: one per forward pass, whatever wraps it."""
    model = trainer.model
    while hasattr(model, "get_base_model"):
        model = model.get_base_model()

    def hook(module, args, kwargs):
        timer.forwards += 1

    model.register_forward_pre_hook(hook, with_kwargs=True)


# ---------------------------------------------------------------- one variant, in its own process


def worker(args) -> dict:
    import torch

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    paths = json.loads(args.paths)
    _, batch, _, _, warmup, _ = SHAPES[args.shape]
    steps = warmup + args.steps
    out = Path(tempfile.mkdtemp(prefix=f"dpo_step_{args.worker}_"))
    timer, precompute = step_timer(warmup, cuda), 0.0
    v = args.worker
    if v == "trl":
        trainer = trl_trainer(paths, args.shape, steps, out, timer)
    elif v in ("dpo", "dpo_cached", "ddpo"):
        loss = "ddpo" if v == "ddpo" else "dpo"
        trainer, precompute = our_dpo_trainer(paths, args.shape, steps, out, timer, loss, v == "dpo_cached")
    else:
        trainer, precompute = opa_trainer(paths, args.shape, steps, out, timer, v == "opa_per_view", v == "opa_cached")
    count_forwards(trainer, timer)
    result = trainer.train()
    measured = timer.ends[warmup - 1 :]
    return {
        "variant": v,
        "steps_per_s": round((len(measured) - 1) / (measured[-1] - measured[0]), 4),
        "peak_mb": round(timer.peak / 2**20, 1),
        "base_mb": round(timer.base / 2**20, 1),
        "forwards_per_step": round((timer.forwards - timer.forwards_at_warmup) / (len(measured) - 1), 2),
        "precompute_s": round(precompute, 2) if v.endswith("_cached") else None,
        "train_loss": result.training_loss,
        "pairs_per_step": batch,
        "device": "cuda" if cuda else "cpu",
        "threads": torch.get_num_threads(),
    }


def run_variant(variant: str, shape: str, paths: dict, steps: int, live_memory: bool = False) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--shape", shape,
           "--paths", json.dumps(paths), "--steps", str(steps)]  # fmt: skip
    env = {**os.environ, **(LIVE_MEMORY if live_memory else {})}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"variant {variant} on {shape} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_shape(shape: str, variants: list[str], steps: int, repeats: int) -> tuple[dict, dict]:
    """Speed rounds (interleaved), then one memory round with LIVE_MEMORY: ({variant: [speed runs]}, {variant:
    memory run})."""
    with tempfile.TemporaryDirectory(prefix=f"dpo_step_{shape}_") as tmp:
        paths = prepare(shape, Path(tmp))
        speed = {v: [] for v in variants}
        for round_ in range(repeats):
            for v in variants:
                speed[v].append(run_variant(v, shape, paths, steps))
                print(f"[{shape} round {round_ + 1}] {v}: {speed[v][-1]['steps_per_s']:.3f} steps/s", flush=True)
        memory = {}
        for v in variants:
            memory[v] = run_variant(v, shape, paths, MEMORY_STEPS, live_memory=True)
            print(f"[{shape} memory] {v}: peak {memory[v]['peak_mb']:.0f} MB over the steps' start", flush=True)
    return speed, memory


# ---------------------------------------------------------------- the report


def summarise(speed: dict[str, list[dict]], memory: dict[str, dict]) -> dict:
    """Per variant: the median steps/s over the interleaved rounds, the memory round's peak, the ratios to TRL."""
    rows = {}
    for v, runs in speed.items():
        rows[v] = {
            "steps_per_s": statistics.median(r["steps_per_s"] for r in runs),
            "rounds": [r["steps_per_s"] for r in runs],
            "peak_mb": memory[v]["peak_mb"],
            **{k: runs[0][k] for k in ("forwards_per_step", "pairs_per_step", "precompute_s", "device", "threads")},
            "train_loss": runs[0]["train_loss"],
        }
    trl = rows.get("trl")
    for row in rows.values():
        row["speed_vs_trl"] = round(row["steps_per_s"] / trl["steps_per_s"], 3) if trl else None
        row["peak_vs_trl"] = round(row["peak_mb"] / trl["peak_mb"], 3) if trl and trl["peak_mb"] > 0 else None
    return rows


def verdicts(rows: dict) -> dict:
    out = {}
    for v in ("dpo", "dpo_cached"):
        if v in rows and "trl" in rows:
            r = rows[v]
            met = r["speed_vs_trl"] >= SPEED_TARGET and r["peak_mb"] <= rows["trl"]["peak_mb"]
            out[v] = {"speed_vs_trl": r["speed_vs_trl"], "peak_vs_trl": r["peak_vs_trl"], "met": met}
    if "opa_dpo" in rows and "opa_per_view" in rows:
        a, b = rows["opa_dpo"], rows["opa_per_view"]
        out["opa_views"] = {
            "forwards_per_step": a["forwards_per_step"],
            "forwards_per_step_one_view_each": b["forwards_per_step"],
            "speedup": round(a["steps_per_s"] / b["steps_per_s"], 3),
            "met": a["forwards_per_step"] <= 2,
        }
    return out


def markdown(results: dict) -> str:
    lines = [f"# DPO-family step vs TRL's DPOTrainer: `{results['command']}`", ""]
    m = results["machine"]
    lines += [f"{m['cpu']}, {m['cores']} cores; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), ""]
    for shape, block in results["shapes"].items():
        lines += [f"## {shape}: {block['description']}", ""]
        lines += ["| variant | steps/s | x TRL | peak MB | x TRL | forwards/step | precompute (s) | mean loss |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for v, r in block["rows"].items():
            pre = "" if r["precompute_s"] is None else f"{r['precompute_s']:.1f}"
            x = lambda value: "" if value is None else f"{value:.2f}"  # noqa: E731
            lines.append(
                f"| {v} | {r['steps_per_s']:.3f} | {x(r['speed_vs_trl'])} | {r['peak_mb']:.0f} | "
                f"{x(r['peak_vs_trl'])} | {r['forwards_per_step']:g} | {pre} | {r['train_loss']:.6f} |"
            )
        lines.append("")
        for name, verdict in block["verdicts"].items():
            lines.append(f"- {name}: {json.dumps(verdict)}")
        lines.append("")
    return "\n".join(lines)


def describe(shape: str) -> str:
    spec, batch, (lo, hi), _, warmup, _ = SHAPES[shape]
    from align.config.sections import TinyModelSpec

    s = TinyModelSpec(**{k: v for k, v in spec.items() if k != "vocab"})
    tokens = (s.image_size // s.patch_size) ** 2
    vocab = spec.get("vocab", "ToyWorld's")
    return (
        f"LM {s.text_layers} x {s.text_hidden}, vocabulary {vocab}, vision {s.vision_layers} x {s.vision_hidden}, "
        f"{tokens} image tokens, "
        f"answers of {lo}-{hi} words, {batch} pair(s) a batch, LoRA r16 on the LM, fp32"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=None, help="comma-separated (default: toy,large; plus 1b on CUDA)")
    parser.add_argument("--variants", default=None, help=f"comma-separated of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per run (default: toy 20, else 2)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds per variant (median reported)")
    parser.add_argument("--out", default=str(ROOT / "bench/results/dpo_step"))
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    import torch

    shapes = (
        args.shapes.split(",") if args.shapes else ["toy", "large"] + (["1b"] if torch.cuda.is_available() else [])
    )
    started = time.time()
    results = {
        "command": " ".join(["python bench/dpo_step.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "shapes": {},
    }
    for shape in shapes:
        steps = args.steps or (20 if shape == "toy" else 2)
        variants = args.variants.split(",") if args.variants else DEFAULT_VARIANTS[shape]
        speed, memory = measure_shape(shape, variants, steps, args.repeats)
        rows = summarise(speed, memory)
        results["shapes"][shape] = {"description": describe(shape), "measured_steps": steps, "rows": rows,
                                    "verdicts": verdicts(rows)}  # fmt: skip
    results["seconds"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results) + "\n")
    print(markdown(results))
    print(f"wrote {out.with_suffix('.json')} and .md in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
