"""The Triton fused attention against PyTorch SDPA and FlexAttention on LLaVA-1.5-like shapes; a correctness sweep
where there is no GPU.

    python bench/attention.py                   # CUDA: the full grid → bench/results/attention.{csv,json}
    python bench/attention.py --batch 4 --seq 2048 --head-dim 128 --no-padding --repeats 50
    python bench/attention.py --quick           # a few shapes (without a GPU: the interpreter, < 30 s)
    python bench/attention.py --check           # the correctness sweep, on the GPU when there is one

With a CUDA device (timings, in one run for the three backends):
  ours         kernels.fused_attention.fused_attention (per-row key ranges for padding, GQA without expansion)
  sdpa(flash)  F.scaled_dot_product_attention under sdpa_kernel(FLASH_ATTENTION), is_causal, enable_gqa; unpadded
               shapes only, since the flash backend takes no mask
  sdpa(mask)   padded shapes: SDPA with the boolean mask of kernels.reference.visibility_mask under PyTorch's own
               backend choice (the note column names it). For GQA, K/V are expanded inside the timed call (as
               transformers' repeat_kv does) when enable_gqa would send the masked call to the MATH backend.
  flex         torch.compile(flex_attention) with a create_block_mask mask_mod: causal & per-row key range
  Grid: --batch x --heads x --head-dim x --seq x {unpadded, padded} with kv heads = heads, plus GQA cases
  (heads : --gqa-kv-heads) at the first batch size and largest head dim. Causal self-attention (Nq = Nk = seq,
  of which 576 would be image tokens: irrelevant to attention). Padded: each row's real length drawn uniformly in
  [60%, 100%] of seq (seed 0), even rows right-padded, odd rows left-padded.
  Modes: fwd (inputs require grad, as in training), bwd (backward of one retained graph), fwd+bwd. Each time is
  the median over --repeats calls, measured with CUDA events after --warmup untimed calls (the first call, which
  autotunes or compiles, is not timed either).
  FLOPs count the (query, key) pairs that are actually visible under the causal and padding mask, P (summed over
  batch rows and heads): fwd = 4*P*D (two matmuls), bwd = 2.5 x fwd, fwd+bwd = 3.5 x fwd; the same count for
  every backend, so TFLOP/s compare like times do (for an unpadded causal shape P = B*H*N*(N+1)/2).
  A backend that cannot run a shape (no kernel, out of memory, compile error) is recorded as unavailable.

Without CUDA (or with --check) there are no timings: our output and dQ/dK/dV are compared with
kernels.reference.attention_reference (fp32 math) and with SDPA (on query rows that see at least one key) over a
sweep of lengths 1, 17, 100, 130 (Nq = Nk, decoding Nq = 1 and chunked Nq < Nk), GQA 4:2 and 8:1, head dims 32 to
128, causal or not, padded or not, fp32 and a subset in fp16/bf16. Without a GPU the kernels run under
TRITON_INTERPRET=1 (set here before Triton is imported; about 1000x slower than SDPA, so the sweep is small).
Errors are max |ours - theirs| / (1 + |theirs|), as in tests/kernels/test_fused_attention.py: absolute for
values below 1, relative above (a bf16 gradient of 6 is only known to +-0.03). The exit status is 1 when one
exceeds its tolerance: outputs fp32 1e-5, fp16 2e-3, bf16 2e-2; gradients fp32 1e-4, fp16 1e-2, bf16 6e-2.

CSV (--out), one row per measurement:
  device, dtype, batch, heads, kv_heads, head_dim, seq_q, seq_k, causal, padded   the case
  backend      ours | sdpa(flash) | sdpa(mask) | flex
  mode         fwd | bwd | fwd+bwd (timings) or check (the correctness sweep)
  ms, tflops   median time and the FLOPs above divided by it; empty when unavailable or in check rows
  ours_speedup this backend's ms / our ms (> 1: ours is faster); 1 on our rows
  compared_to  what the err_* columns compare our results with: on a timing row, that row's backend (forward
               output only, one run); on a check row, reference or sdpa
  err_out, err_dq, err_dk, err_dv   ours vs compared_to over query rows that see a key: on timing rows (err_out
               only) max |ours - theirs|; on check rows the scaled error above
  tol_out, tol_grad, ok             check rows: the tolerances and whether every error is within them
  note         the SDPA backend actually selected, or why a backend is unavailable
Next to it, <out>.json holds the GPU name, torch/triton/CUDA versions, the command line and the failure count.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# Triton and kernels.* are imported inside functions, never at the top: TRITON_INTERPRET must be set before the first
# `import triton` when there is no GPU, and whether there is one is only known in main().

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": (1e-5, 1e-4), "fp16": (2e-3, 1e-2), "bf16": (2e-2, 6e-2)}  # (output, gradients), scaled
FIELDS = [
    "device", "dtype", "batch", "heads", "kv_heads", "head_dim", "seq_q", "seq_k", "causal", "padded",
    "backend", "mode", "ms", "tflops", "ours_speedup", "compared_to",
    "err_out", "err_dq", "err_dk", "err_dv", "tol_out", "tol_grad", "ok", "note",
]  # fmt: skip
MODES = ("fwd", "bwd", "fwd+bwd")
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}


@dataclass(frozen=True)
class Case:
    batch: int
    heads: int
    kv_heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    causal: bool
    padded: bool
    dtype: str

    def label(self) -> str:
        pad = " pad" if self.padded else ""
        return f"b{self.batch} h{self.heads}:{self.kv_heads} d{self.head_dim} n{self.seq_q}{pad}"


# ---------------------------------------------------------------------------------------------------- shared


def key_ranges(batch: int, n_k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_start, kv_end) int32: each row's real length drawn in [60%, 100%] of n_k; even rows are right-padded
    (real keys first), odd rows left-padded (real keys last), the two layouts collators produce."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(math.ceil(0.6 * n_k), n_k + 1, (batch,), generator=gen)
    left = torch.arange(batch) % 2 == 1
    start = torch.where(left, n_k - lengths, 0)
    end = torch.where(left, n_k, lengths)
    return start.to(torch.int32), end.to(torch.int32)


def make_inputs(case: Case, device: str, seed: int = 0):
    """q, k, v (requiring grad), an upstream gradient d_out, and the key ranges (None when unpadded)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = DTYPES[case.dtype]

    def rand(heads: int, seq: int) -> torch.Tensor:
        return torch.randn(case.batch, heads, seq, case.head_dim, generator=gen, device=device, dtype=dtype)

    q, k, v = rand(case.heads, case.seq_q), rand(case.kv_heads, case.seq_k), rand(case.kv_heads, case.seq_k)
    d_out = rand(case.heads, case.seq_q)
    kv_start = kv_end = None
    if case.padded:
        kv_start, kv_end = (t.to(device) for t in key_ranges(case.batch, case.seq_k))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), d_out, kv_start, kv_end


def masked_max(err: torch.Tensor, rows: torch.Tensor | None) -> float:
    """err's maximum over the query rows where `rows` (broadcastable, bool) is True, or over all when None."""
    if rows is not None:  # where(), not a product: a backend's unseen rows may hold NaN
        err = torch.where(rows, err, 0.0)
    return err.max().item()


def max_abs_diff(ours: torch.Tensor, theirs: torch.Tensor, rows: torch.Tensor | None = None) -> float:
    return masked_max((ours.float() - theirs.float()).abs(), rows)


def scaled_error(ours: torch.Tensor, theirs: torch.Tensor, rows: torch.Tensor | None = None) -> float:
    """max |ours - theirs| / (1 + |theirs|)."""
    theirs = theirs.float()
    return masked_max((ours.float() - theirs).abs() / (1 + theirs.abs()), rows)


def case_fields(case: Case, device_name: str) -> dict:
    fields = asdict(case)
    fields["device"] = device_name
    return fields


class Table:
    """Fixed-width columns, so rows can be printed as they are measured."""

    def __init__(self, columns: list[tuple[str, int]]):
        self.columns = columns

    def header(self) -> None:
        print(self.line([name for name, _ in self.columns]))
        print("-" * len(self.line([""] * len(self.columns))))

    def line(self, values: list) -> str:
        return "  ".join(f"{str(value):>{width}}" for value, (_, width) in zip(values, self.columns))

    def row(self, values: list) -> None:
        print(self.line(values), flush=True)


def fmt(value: float | None, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def rounded(value):
    """Floats to 4 significant digits: the CSV holds measurements, not float noise."""
    return float(f"{value:.4g}") if isinstance(value, float) else value


class CsvOut:
    """The CSV, appended to and flushed per case so an interrupted GPU run keeps what it measured."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=FIELDS)
        self.writer.writeheader()

    def write(self, rows: list[dict]) -> None:
        self.writer.writerows({key: rounded(value) for key, value in row.items()} for row in rows)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def write_environment(csv_path: Path, device_name: str, started: float, failures: int, mode: str) -> None:
    import triton

    info = {
        "mode": mode,
        "device": device_name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "failures": failures,
        "csv": csv_path.name,
    }
    csv_path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------- correctness


def check_cases(quick: bool) -> list[Case]:
    """(batch, heads, kv heads, Nq, Nk, head dim, causal, padded, dtype). Batch 2 so padded cases hold one
    right-padded and one left-padded row; lengths 17, 100, 130 span several 32x16 interpreter blocks, partial ones
    included."""
    if quick:
        rows = [
            (1, 2, 2, 1, 1, 32, True, False, "fp32"),  # a single token
            (2, 4, 2, 17, 17, 64, True, True, "fp32"),  # left-padded queries that see no key
            (2, 8, 1, 1, 100, 96, True, True, "bf16"),  # decoding against a padded cache
            (2, 4, 2, 17, 100, 128, True, True, "fp16"),  # a chunk of queries after a cache
            (2, 8, 1, 17, 17, 80, False, True, "bf16"),  # bidirectional (a vision tower), head dim 80
        ]
        return [Case(*row) for row in rows]
    rows = []
    # every length pairing x causal x padding in fp32, GQA 4:2, head dim 64
    for seq_q, seq_k in [(1, 1), (17, 17), (100, 100), (130, 130), (1, 130), (17, 100)]:
        for causal in (True, False):
            for padded in (True, False):
                rows.append((2, 4, 2, seq_q, seq_k, 64, causal, padded, "fp32"))
    # the other head dims with GQA 8:1
    rows += [
        (2, 8, 1, 17, 17, 32, True, True, "fp32"),
        (2, 8, 1, 17, 130, 80, True, True, "fp32"),
        (2, 8, 1, 100, 100, 96, False, True, "fp32"),
        (2, 8, 1, 130, 130, 128, True, True, "fp32"),
    ]
    # half precision on a subset
    for dtype in ("fp16", "bf16"):
        rows += [
            (2, 4, 2, 100, 100, 64, True, True, dtype),
            (2, 8, 1, 1, 130, 96, True, True, dtype),
            (2, 8, 1, 17, 17, 80, False, True, dtype),
            (2, 4, 2, 130, 130, 128, True, False, dtype),
        ]
    return [Case(*row) for row in rows]


def grads(out: torch.Tensor, tensors: tuple, d_out: torch.Tensor) -> tuple:
    return torch.autograd.grad(out, tensors, d_out)


def check_case(case: Case, device: str) -> dict[str, tuple[float, ...]]:
    """{"reference": errors, "sdpa": errors}, errors = (out, dq, dk, dv) as scaled errors."""
    from kernels.fused_attention import fused_attention
    from kernels.reference import attention_reference, visibility_mask

    q, k, v, d_out, kv_start, kv_end = make_inputs(case, device)
    tensors = (q, k, v)
    ours = fused_attention(q, k, v, case.causal, None, kv_start, kv_end)
    ours_grads = grads(ours, tensors, d_out)
    ref = attention_reference(q, k, v, case.causal, None, kv_start, kv_end)[0]
    errors = {"reference": (scaled_error(ours, ref), *map(scaled_error, ours_grads, grads(ref, tensors, d_out)))}

    visible = visibility_mask(case.batch, case.seq_q, case.seq_k, case.causal, kv_start, kv_end, device)
    seen = visible.any(-1, keepdim=True)
    # SDPA gives NaN where a row sees no key. Those rows may see every key instead (a finite answer nobody compares)
    # and get a zero upstream gradient, so they add nothing to dK/dV and their dQ is 0, as ours is.
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=visible | ~seen, enable_gqa=True)
    sdpa_grads = grads(sdpa, tensors, d_out * seen)
    errors["sdpa"] = (scaled_error(ours, sdpa, seen), *map(scaled_error, ours_grads, sdpa_grads))
    return errors


def key_layout(case: Case) -> str:
    if not case.padded:
        return "all"
    start, end = key_ranges(case.batch, case.seq_k)
    return ",".join(f"{s}:{e}" for s, e in zip(start.tolist(), end.tolist()))


def run_checks(args, device: str, device_name: str, out: CsvOut) -> int:
    """The correctness sweep; returns the number of cases with an error over tolerance."""
    err_cols = [("out", 8), ("dq", 8), ("dk", 8), ("dv", 8)]
    table = Table(
        [("dtype", 5), ("B", 2), ("H:Hkv", 5), ("D", 3), ("Nq", 3), ("Nk", 3), ("causal", 6), ("keys", 13)]
        + [(f"ref.{name}", w) for name, w in err_cols]
        + [(f"sdpa.{name}", w) for name, w in err_cols]
        + [("ok", 4), ("s", 5)]
    )
    table.header()
    failures = 0
    for case in check_cases(args.quick):
        t0 = time.time()
        errors = check_case(case, device)
        tol_out, tol_grad = TOLERANCE[case.dtype]
        # written as err <= tol, which NaN fails
        ok = all(e[0] <= tol_out and all(g <= tol_grad for g in e[1:]) for e in errors.values())
        failures += not ok
        shape = [case.dtype, case.batch, f"{case.heads}:{case.kv_heads}", case.head_dim, case.seq_q, case.seq_k]
        cells = [fmt(e) for name in ("reference", "sdpa") for e in errors[name]]
        table.row([*shape, case.causal, key_layout(case), *cells, "ok" if ok else "FAIL", f"{time.time() - t0:.1f}"])
        out.write(
            [
                case_fields(case, device_name)
                | dict(backend="ours", mode="check", compared_to=name, tol_out=tol_out, tol_grad=tol_grad, ok=ok)
                | dict(zip(("err_out", "err_dq", "err_dk", "err_dv"), errs))
                for name, errs in errors.items()
            ]
        )
    return failures


# ---------------------------------------------------------------------------------------------------- timings


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


# ---------------------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--heads", type=int, nargs="+", default=[32], help="query heads (= kv heads outside GQA cases)")
    ap.add_argument("--gqa-kv-heads", type=int, default=8, help="kv heads of the GQA cases; 0: none")
    ap.add_argument("--head-dim", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--no-padding", action="store_true", help="unpadded shapes only")
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16", help="of the timings (the sweep mixes)")
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per measurement (median)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed calls before them (at least 1)")
    ap.add_argument("--quick", action="store_true", help="a few shapes only (GPU: b4 d128 n1024; CPU: 5 cases)")
    ap.add_argument("--check", action="store_true", help="run the correctness sweep even on a GPU")
    ap.add_argument("--out", type=Path, default=Path("bench/results/attention.csv"))
    args = ap.parse_args()
    args.warmup = max(args.warmup, 1)  # the first backward autotunes (ours) or compiles (flex): never time it
    if args.quick:
        args.batch, args.head_dim, args.seq = args.batch[:1], [max(args.head_dim)], args.seq[:1]
    return args


def main() -> int:
    args = parse_args()
    started = time.time()
    has_gpu = torch.cuda.is_available()
    interpret = not has_gpu or os.environ.get("TRITON_INTERPRET") == "1"
    if not has_gpu:
        print("No CUDA GPU present: timings are skipped. Correctness sweep only, kernels under TRITON_INTERPRET=1.")
        os.environ["TRITON_INTERPRET"] = "1"  # before the first import of triton (kernels.* imports it)
    elif interpret:
        print("TRITON_INTERPRET=1 is set: timings would measure the interpreter. Correctness sweep only, on the CPU.")

    from kernels import fused_attention as op

    if op.INTERPRET != interpret:
        raise SystemExit(f"triton was imported before TRITON_INTERPRET could be set (INTERPRET={op.INTERPRET})")
    checking = interpret or args.check
    device = "cpu" if interpret else "cuda"
    device_name = "cpu (TRITON_INTERPRET=1)" if interpret else torch.cuda.get_device_name()
    out = CsvOut(args.out)
    try:
        failures = (run_checks if checking else run_benchmark)(args, device, device_name, out)
    finally:
        out.close()
    write_environment(args.out, device_name, started, failures, "check" if checking else "benchmark")
    what = "cases over tolerance" if checking else "shapes where ours failed"
    print(f"{failures} {what}; {time.time() - started:.0f} s → {args.out}, {args.out.with_suffix('.json')}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
