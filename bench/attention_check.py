"""The correctness sweep of bench/attention.py (the CPU path, and --check on a GPU): our output and dQ/dK/dV
against kernels.reference.attention_reference and SDPA, as scaled errors against per-dtype tolerances."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

# a sibling in bench/ (see bench/attention.py)
from attention_common import Case, CsvOut, Table, case_fields, fmt, key_ranges, make_inputs, scaled_error

# Triton and kernels.* are imported inside functions, never at the top: bench/attention.py imports this module
# before main() knows whether there is a GPU, and TRITON_INTERPRET must be set before the first `import triton`.

TOLERANCE = {"fp32": (1e-5, 1e-4), "fp16": (2e-3, 1e-2), "bf16": (2e-2, 6e-2)}  # (output, gradients), scaled


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
    failures, worst = 0, {}
    for case in check_cases(args.quick):
        t0 = time.time()
        errors = check_case(case, device)
        tol_out, tol_grad = TOLERANCE[case.dtype]
        # written as err <= tol, which NaN fails
        ok = all(e[0] <= tol_out and all(g <= tol_grad for g in e[1:]) for e in errors.values())
        failures += not ok
        w = worst.setdefault(case.dtype, [0, 0.0, 0.0])
        w[0] += 1
        w[1] = max([w[1], *(e[0] for e in errors.values())])
        w[2] = max([w[2], *(g for e in errors.values() for g in e[1:])])
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
    print_worst(worst)
    return failures


def print_worst(worst: dict[str, list]) -> None:
    """The README's summary: per dtype, the cases and the worst output and gradient errors against their bounds."""
    print("\ndtype  cases  worst output error  worst dQ/dK/dV error  tolerance (output / grads)")
    for dtype, (cases, out_err, grad_err) in worst.items():
        tol_out, tol_grad = TOLERANCE[dtype]
        print(f"{dtype:5}  {cases:5}  {out_err:18.1e}  {grad_err:20.1e}  {tol_out:.0e} / {tol_grad:.0e}")
