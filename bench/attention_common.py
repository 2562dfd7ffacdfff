"""What the attention benchmark's two halves share (bench/attention_check.py, bench/attention_timing.py): the
Case, its inputs and key ranges, the error measures, the printed table and the CSV. See bench/attention.py."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Triton and kernels.* are imported inside functions, never at the top: bench/attention.py imports this module
# before main() knows whether there is a GPU, and TRITON_INTERPRET must be set before the first `import triton`.

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FIELDS = [
    "device", "dtype", "batch", "heads", "kv_heads", "head_dim", "seq_q", "seq_k", "causal", "padded",
    "backend", "mode", "ms", "tflops", "ours_speedup", "compared_to",
    "err_out", "err_dq", "err_dk", "err_dv", "tol_out", "tol_grad", "ok", "note",
]  # fmt: skip


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
