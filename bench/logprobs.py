"""Peak memory and time of response log-probs: chunked (align/core/logprobs.py) vs the naive full-vocabulary form.

    python bench/logprobs.py [--rows 2] [--vocab 32000] [--length 2048] [--scored 1000] [--repeats 3]
                             [--chunk-size 1024]

Each variant runs forward + backward of sum(logps * mask), what a trainer's step does, on a tiny LLaVA-shaped model
(CLIP tower at 336 px / 14 px patches, so 576 image tokens per row; a 1-layer, 64-wide Llama) built in-process with
transformers, so that, as at LLaVA scale, the output head and its log-softmax dominate the memory. Each row is
`--length` tokens, its last `--scored` tokens scored. Target (the issue's): chunked peak <= 0.3x naive at <= 1.1x
naive time. Writes bench/results/logprobs.json.

Each variant runs in its own fresh process (this script re-invoked with --worker), after the model and batch are
built and one untimed warm-up step (lazy initialisation, thread pools, allocator arenas). Peak memory is growth over
the memory held just before the measured steps:
- CUDA: torch.cuda.max_memory_allocated() minus memory_allocated(), after reset_peak_memory_stats().
- CPU: the kernel's peak RSS (VmHWM) minus the current RSS (VmRSS), with the peak reset by writing 5 to
  /proc/self/clear_refs just before the measured steps. That is exact, unlike a sampling thread, which misses short
  spikes; getrusage's ru_maxrss could not be used after the warm-up, as it is a peak since the process started
  (and clear_refs does not reliably reset it). Where clear_refs is refused, the warm-up is skipped and ru_maxrss
  minus the RSS before the first step is used ("method" in the JSON says which).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# appended, not prepended: the repo's kernels/ must not shadow an installed `kernels` (transformers >= 5.25 imports it)
sys.path.append(str(ROOT))

VARIANTS = ("naive", "chunked")
IMAGE_SIZE, PATCH = 336, 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2
MEMORY_TARGET, TIME_TARGET = 0.3, 1.1


def build_model(vocab: int, length: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=length, pad_token_id=0,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=vocab - 1, image_seq_length=IMAGE_TOKENS,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )  # fmt: skip
    return LlavaForConditionalGeneration(config)


def build_batch(rows: int, vocab: int, length: int, scored: int, device) -> dict:
    """[bos, <image> x 576, prompt..., response (the last `scored` tokens)], no padding."""
    import torch

    if 1 + IMAGE_TOKENS + scored > length:
        raise SystemExit(f"--length {length} cannot hold bos, {IMAGE_TOKENS} image tokens and {scored} scored tokens")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab - 1, (rows, length), generator=g)
    ids[:, 0], ids[:, 1 : 1 + IMAGE_TOKENS] = 1, vocab - 1
    labels = torch.full_like(ids, -100)
    labels[:, -scored:] = ids[:, -scored:]
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(rows, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g),
        "labels": labels,
    }
    return {k: v.to(device) for k, v in batch.items()}


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(step, repeats: int, cuda: bool) -> dict:
    """Peak memory growth (bytes) over the memory held before `repeats` calls of `step`, their times, and the
    last call's (loss, head-gradient norm)."""
    import torch

    method = "cuda max_memory_allocated" if cuda else "VmHWM after clear_refs"
    if cuda or _reset_peak_rss():
        step()  # warm-up, untimed
    else:
        method = "ru_maxrss, no warm-up"
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _status_kb("VmRSS") * 1024
        if method.startswith("VmHWM"):
            _reset_peak_rss()
    times, figures = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        figures = step()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    elif method.startswith("VmHWM"):
        peak = _status_kb("VmHWM") * 1024 - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"peak": peak, "times": times, "figures": figures, "method": method}


def worker(args) -> dict:
    """One variant in this (fresh) process: the figures of its measured fwd+bwd steps, as a dict."""
    import torch

    from align.core.logprobs import naive_response_logps, response_logps

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = build_model(args.vocab, args.length).to(device).train()
    batch = build_batch(args.rows, args.vocab, args.length, args.scored, device)
    if args.worker == "naive":
        fn = naive_response_logps
    else:
        fn = lambda m, b: response_logps(m, b, chunk_size=args.chunk_size)  # noqa: E731

    def step() -> tuple[float, float]:
        logps, mask = fn(model, batch)
        loss = (logps * mask).sum()
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        figures = loss.item(), model.get_output_embeddings().weight.grad.norm().item()
        # dropped here, not kept into the next step: each step allocates its gradients, none sits in the baseline
        model.zero_grad(set_to_none=True)
        return figures

    m = measure(step, args.repeats, cuda)
    return {
        "variant": args.worker,
        "peak_mb": round(m["peak"] / 2**20, 1),
        "seconds": round(statistics.median(m["times"]), 4),
        "all_seconds": [round(t, 4) for t in m["times"]],
        "loss": m["figures"][0],
        "head_grad_norm": m["figures"][1],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "method": m["method"],
    }


def run_variant(variant: str, args) -> dict:
    """Run one variant in a fresh interpreter, so that neither sees the other's allocations."""
    flags = ["--rows", args.rows, "--vocab", args.vocab, "--length", args.length, "--scored", args.scored]
    flags += ["--repeats", args.repeats, "--chunk-size", args.chunk_size, "--worker", variant]
    cmd = [sys.executable, str(Path(__file__).resolve()), *map(str, flags)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args, results: dict) -> dict:
    naive, chunked = results["naive"], results["chunked"]
    ratios = {
        "memory": round(chunked["peak_mb"] / naive["peak_mb"], 3),
        "time": round(chunked["seconds"] / naive["seconds"], 3),
    }
    print(f"{'variant':8} {'peak MB':>9} {'s/fwd+bwd':>10} {'mem vs naive':>13} {'time vs naive':>14}")
    for name, r in results.items():
        mem, sec = r["peak_mb"] / naive["peak_mb"], r["seconds"] / naive["seconds"]
        print(f"{name:8} {r['peak_mb']:9.1f} {r['seconds']:10.3f} {mem:13.2f} {sec:14.2f}")
    met = ratios["memory"] <= MEMORY_TARGET and ratios["time"] <= TIME_TARGET
    verdict = "met" if met else "NOT met"
    print(f"target: peak <= {MEMORY_TARGET}x naive at <= {TIME_TARGET}x naive time: {verdict}")
    loss_gap = abs(naive["loss"] - chunked["loss"]) / max(1.0, abs(naive["loss"]))
    grad_gap = abs(naive["head_grad_norm"] - chunked["head_grad_norm"]) / max(1.0, naive["head_grad_norm"])
    print(f"same result: loss rel. gap {loss_gap:.1e}, head-gradient norm rel. gap {grad_gap:.1e}")
    config = {k: getattr(args, k) for k in ("rows", "vocab", "length", "scored", "repeats", "chunk_size")}
    config["image_tokens"] = IMAGE_TOKENS
    return {
        "config": config,
        "device": naive["device"],
        "method": naive["method"],
        "results": results,
        "ratios": ratios,
        "targets": {"memory": MEMORY_TARGET, "time": TIME_TARGET, "met": met},
        "relative_gaps": {"loss": loss_gap, "head_grad_norm": grad_gap},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--length", type=int, default=2_048)
    parser.add_argument("--scored", type=int, default=1_000, help="scored (response) tokens per row")
    parser.add_argument("--repeats", type=int, default=3, help="measured fwd+bwd steps per variant (median time)")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--out", default=str(ROOT / "bench/results/logprobs.json"))
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    results = {v: run_variant(v, args) for v in VARIANTS}
    summary = report(args, results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
