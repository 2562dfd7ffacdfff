"""The timings of bench/attention.py (CUDA only): ours, SDPA (flash, or masked for padded shapes) and
torch.compile(flex_attention) on the same inputs, fwd / bwd / fwd+bwd, as median ms and TFLOP/s."""

from __future__ import annotations

import statistics
import sys

import torch
import torch.nn.functional as F

# a sibling in bench/ (see bench/attention.py)
from attention_common import Case, CsvOut, Table, case_fields, fmt, make_inputs, max_abs_diff

# Triton and kernels.* are imported inside functions, never at the top: bench/attention.py imports this module
# before main() knows whether there is a GPU, and TRITON_INTERPRET must be set before the first `import triton`.

MODES = ("fwd", "bwd", "fwd+bwd")
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


def bench_cases(args) -> list[Case]:
    paddings = [False] if args.no_padding else [False, True]
    cases = []
    for batch in args.batch:
        for heads in args.heads:
            for head_dim in args.head_dim:
                for seq in args.seq:
                    for padded in paddings:
                        cases.append(Case(batch, heads, heads, seq, seq, head_dim, True, padded, args.dtype))
    if args.gqa_kv_heads:  # one GQA slice, not a second full grid: its cost is the K/V traffic, seen on any shape
        for heads in args.heads:
            if heads % args.gqa_kv_heads == 0 and heads != args.gqa_kv_heads:
                for seq in args.seq:
                    for padded in paddings:
                        gqa = Case(args.batch[0], heads, args.gqa_kv_heads, seq, seq, max(args.head_dim), True, padded,
                                   args.dtype)  # fmt: skip
                        cases.append(gqa)
    return cases


def median_ms(run, repeats: int, warmup: int, reset=None) -> float:
    """Median CUDA-event time of `run()` over `repeats` calls after `warmup` untimed ones; `reset()` runs before
    each call, outside the timed span."""
    for _ in range(warmup):
        if reset:
            reset()
        run()
    spans = []
    for _ in range(repeats):
        if reset:
            reset()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        spans.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in spans)


def time_modes(forward, tensors: tuple, d_out: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    def clear_grads():  # so backward writes fresh gradients instead of adding into old ones
        for t in tensors:
            t.grad = None

    out = forward(*tensors)  # one graph kept for the backward-only timing
    times = {
        "fwd": median_ms(lambda: forward(*tensors), repeats, warmup),
        "bwd": median_ms(lambda: out.backward(d_out, retain_graph=True), repeats, warmup, clear_grads),
        "fwd+bwd": median_ms(lambda: forward(*tensors).backward(d_out), repeats, warmup, clear_grads),
    }
    clear_grads()
    return times


def sdpa_choice(q, k, v, mask, gqa: bool) -> str:
    """The backend PyTorch's dispatcher picks for these inputs (a private API: '?' when it is not there)."""
    from torch.nn.attention import SDPBackend

    try:
        return SDPBackend(torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=None, enable_gqa=gqa)).name
    except (AttributeError, TypeError, RuntimeError, ValueError):
        return "?"


def sdpa_name(case: Case) -> str:
    return "sdpa(mask)" if case.padded else "sdpa(flash)"


def sdpa_backend(case: Case, q, k, v, mask) -> tuple[object, str]:
    """(forward, note): the flash backend without padding; with it, the masked call under PyTorch's choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gqa = case.heads != case.kv_heads
    if not case.padded:

        def flash(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=case.causal, enable_gqa=gqa)

        return flash, ""

    def masked(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

    chosen = sdpa_choice(q, k, v, mask, gqa)
    if not gqa or chosen != "MATH":
        return masked, f"selected {chosen}"
    group = case.heads // case.kv_heads
    expanded = k.detach().repeat_interleave(group, dim=1)

    def repeat_kv(q, k, v):  # transformers' way: copies of K/V per query head, inside the timed call
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return repeat_kv, f"selected {sdpa_choice(q, expanded, expanded, mask, False)}; K/V repeated per head"


def flex_backend(case: Case, kv_start, kv_end, compiled_flex, device: str) -> tuple[object, str]:
    from torch.nn.attention.flex_attention import and_masks, create_block_mask

    offset = case.seq_k - case.seq_q  # bottom-right causal alignment, as in kernels.reference

    def causal(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    def real_key(b, h, q_idx, kv_idx):
        return (kv_idx >= kv_start[b]) & (kv_idx < kv_end[b])

    mods = ([causal] if case.causal else []) + ([real_key] if case.padded else [])
    block_mask = None
    if mods:
        batch = case.batch if case.padded else None  # the causal mask alone is the same for every row
        block_mask = create_block_mask(and_masks(*mods), batch, None, case.seq_q, case.seq_k, device=device)
    gqa = case.heads != case.kv_heads

    def flex(q, k, v):
        return compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=gqa)

    return flex, ""


def compile_flex():
    import torch._dynamo
    import torch._functorch.config
    from torch.nn.attention.flex_attention import flex_attention

    # each benchmark shape (and its mask_mod closure) is a separate static compile; the default limit of 8 would
    # silently fall back to the unfused eager path
    torch._dynamo.config.recompile_limit = 256
    # donated buffers forbid the retain_graph=True backward that the bwd-only timing needs
    torch._functorch.config.donated_buffer = False
    return torch.compile(flex_attention, dynamic=False)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def bench_case(case: Case, args, compiled_flex, device: str, device_name: str) -> tuple[list[dict], list[list]]:
    """CSV rows and table rows for one shape, every backend measured on the same inputs."""
    from kernels.fused_attention import fused_attention
    from kernels.reference import visibility_mask

    q, k, v, d_out, kv_start, kv_end = make_inputs(case, device)
    visible = visibility_mask(case.batch, case.seq_q, case.seq_k, case.causal, kv_start, kv_end, device)
    seen = visible.any(-1, keepdim=True)
    fwd_flops = 4 * case.head_dim * case.heads * visible.sum().item()

    def ours(q, k, v):
        return fused_attention(q, k, v, causal=case.causal, kv_start=kv_start, kv_end=kv_end)

    backends = {  # name -> a function building (forward, note); ours first, for the others to be compared with
        "ours": lambda: (ours, ""),
        sdpa_name(case): lambda: sdpa_backend(case, q, k, v, visible if case.padded else None),
        "flex": lambda: flex_backend(case, kv_start, kv_end, compiled_flex, device),
    }
    results = {}  # name -> (times or None, max |ours - theirs| or None, note)
    ours_out = None
    for name, build in backends.items():
        try:
            forward, note = build()
            out = forward(q, k, v)  # untimed: autotuning, compilation, and the one output compared with ours
            err = None
            if name == "ours":
                ours_out = out.detach()
            elif ours_out is not None:
                err = max_abs_diff(ours_out, out.detach(), seen)
            del out
            results[name] = (time_modes(forward, (q, k, v), d_out, args.repeats, args.warmup), err, note)
        except Exception as exc:  # a backend that cannot run a shape is a result, not a crash
            results[name] = (None, None, f"unavailable: {first_line(exc)}")
            print(f"  {case.label()}: {name} {results[name][2]}", file=sys.stderr)
        torch.cuda.empty_cache()
    return bench_rows(case, results, fwd_flops, device_name)


def bench_rows(case: Case, results: dict, fwd_flops: float, device_name: str) -> tuple[list[dict], list[list]]:
    ours_times = results["ours"][0]
    sdpa = sdpa_name(case)
    csv_rows, table_rows = [], []
    for mode in MODES:
        line = {}
        for name, (times, err, note) in results.items():
            ms = times[mode] if times else None
            tflops = fwd_flops * FLOP_FACTOR[mode] / (ms * 1e-3) / 1e12 if ms else None
            speedup = ms / ours_times[mode] if ms and ours_times else None
            line[name] = (ms, tflops, speedup)
            row = case_fields(case, device_name) | dict(backend=name, mode=mode, ms=ms, tflops=tflops, note=note)
            row |= dict(ours_speedup=speedup, compared_to=None if err is None else name, err_out=err)
            csv_rows.append(row)
        ours_ms, sdpa_ms, flex_ms = (line[name] for name in ("ours", sdpa, "flex"))
        table_rows.append(
            [case.label(), sdpa, mode, fmt(ours_ms[0], ".3f"), fmt(sdpa_ms[0], ".3f"), fmt(flex_ms[0], ".3f")]
            + [fmt(ours_ms[1], ".1f"), fmt(sdpa_ms[1], ".1f"), fmt(flex_ms[1], ".1f")]
            + [fmt(sdpa_ms[2], ".2f"), fmt(flex_ms[2], ".2f"), fmt(results[sdpa][1], ".2g")]
        )
    return csv_rows, table_rows


def run_benchmark(args, device: str, device_name: str, out: CsvOut) -> int:
    """Times every case; returns the number of cases where our op failed."""
    compiled_flex = compile_flex()
    table = Table(
        [("shape", 26), ("sdpa", 11), ("mode", 7), ("ours ms", 8), ("sdpa ms", 8), ("flex ms", 8)]
        + [("ours TF/s", 9), ("sdpa TF/s", 9), ("flex TF/s", 9), ("sdpa/ours", 9), ("flex/ours", 9)]
        + [("max|Δ| sdpa", 11)]
    )
    table.header()
    failures = 0
    for case in bench_cases(args):
        csv_rows, table_rows = bench_case(case, args, compiled_flex, device, device_name)
        failures += any(row["backend"] == "ours" and row["ms"] is None for row in csv_rows)
        out.write(csv_rows)
        for row in table_rows:
            table.row(row)
    print("sdpa/ours, flex/ours: their time / our time (> 1: ours is faster); TF/s from visible (query, key) pairs")
    return failures
