"""The Triton kernels of `kernels.fused_attention` (FlashAttention-2 style) and the jit helpers they share.

Launched by `kernels.fused_attention`, which holds the autograd Function and the public functions; compiled
offline by `kernels.offline_compile`. Under the interpreter (TRITON_INTERPRET=1, read here, once, at import)
each kernel is pinned to one config, as autotuning needs a GPU driver.

Forward: online softmax in the log2 domain (qk_scale = scale * log2(e)), saving the log2-domain LSE, +inf on rows
that see no key. Backward, recomputing P: delta = rowsum(O * dO) per query block; dK and dV per key block (the
program loops over all query heads that share its KV head, so GQA gradients are reduced without atomics and
deterministically); dQ per query block.

Precision: scores, softmax statistics and accumulators are fp32. fp16/bf16 inputs feed `tl.dot` in their own type
on a GPU; with UPCAST (under TRITON_INTERPRET=1, and for fp32 inputs) every load is upcast to fp32 first, because
the interpreter computes bf16 arithmetic on raw bits (wrong answers, no error).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# Read once, at import: the interpreter must be chosen before any kernel is decorated (kernels.md §3.3).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(candidates: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    """Autotuning space on a GPU: (BLOCK_M, BLOCK_N, warps, stages). Under the interpreter one pinned config, as
    the autotuner's benchmarking needs a GPU driver and block size only changes how slow the simulation is; 32x16
    blocks keep test shapes (lengths 17, 100) spanning several blocks and partial ones."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in candidates]


# Candidates picked offline by compiling for sm_90 and reading registers and spills (bench/attention_registers.py):
# every list has configs that spill no registers at head dims 64 and 128 (the dK/dV kernel needs BLOCK_N = 32 at 128).
# Configs that run out of shared memory on a device (fp32 inputs with big tiles) are skipped by the autotuner.
FWD_CONFIGS = [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 8, 3), (128, 128, 8, 2)]
DKDV_CONFIGS = [(64, 128, 8, 2), (32, 128, 8, 2), (32, 64, 8, 2), (64, 32, 8, 2), (32, 32, 8, 2)]
DQ_CONFIGS = [(64, 64, 8, 2), (64, 32, 8, 3), (128, 64, 8, 2), (128, 32, 8, 2), (32, 32, 4, 3)]
# The key buckets sequence lengths to powers of two so training on varying lengths does not retune every batch.
_TUNE_KEY = ["LEN_BUCKET", "HEAD_DIM", "CAUSAL", "HAS_RANGES"]


@triton.jit
def _key_range(KV_START, KV_END, b, N_K, HAS_RANGES: tl.constexpr):
    if HAS_RANGES:  # clamped: a range past the keys must not make zero-filled loads count as visible keys
        lo = tl.maximum(tl.load(KV_START + b), 0)
        hi = tl.minimum(tl.load(KV_END + b), N_K)
    else:
        lo = 0
        hi = N_K
    return lo, hi


@triton.jit
def _query_block(H, GROUP, BLOCK_M: tl.constexpr):
    """This program's query block: grid (query blocks, batch x heads) -> its batch row, head, KV head and rows."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    return pid_m, pid_bh, b, h, h // GROUP, pid_m * BLOCK_M + tl.arange(0, BLOCK_M)


@triton.jit
def _tile_ptrs(BASE, b, h, s_b, s_h, s_row, idx, offs_d):
    """Pointers to rows `idx` (all of the head dim) of head h of batch row b; int64 so big tensors do not wrap."""
    return BASE + b.to(tl.int64) * s_b + h.to(tl.int64) * s_h + idx[:, None] * s_row + offs_d[None, :]


@triton.jit
def _load_tile(BASE, b, h, s_b, s_h, s_row, idx, offs_d, n_rows, HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr):
    """A (len(idx), BLOCK_D) tile, zero past n_rows and HEAD_DIM; fp32 if UPCAST (the interpreter cannot do bf16)."""
    mask = (idx[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM)
    x = tl.load(_tile_ptrs(BASE, b, h, s_b, s_h, s_row, idx, offs_d), mask=mask, other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_tile(BASE, x, b, h, s_b, s_h, s_row, idx, offs_d, n_rows, HEAD_DIM: tl.constexpr):
    mask = (idx[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM)
    tl.store(_tile_ptrs(BASE, b, h, s_b, s_h, s_row, idx, offs_d), x.to(BASE.dtype.element_ty), mask=mask)


@triton.jit
def _visible(rows, cols, lo, hi, N_Q, N_K, CAUSAL: tl.constexpr):
    ok = (cols[None, :] >= lo) & (cols[None, :] < hi) & (rows[:, None] < N_Q)
    if CAUSAL:
        ok = ok & (rows[:, None] + (N_K - N_Q) >= cols[None, :])
    return ok


@triton.autotune(configs=_configs(FWD_CONFIGS), key=_TUNE_KEY)
@triton.jit
def _attn_fwd(
    Q, K, V, OUT, LSE, KV_START, KV_END, qk_scale,
    s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_om,
    H, GROUP, N_Q, N_K, LEN_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_RANGES: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m, pid_bh, b, h, hk, rows = _query_block(H, GROUP, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q, b, h, s_qb, s_qh, s_qm, rows, offs_d, N_Q, HEAD_DIM, UPCAST)
    lo, hi = _key_range(KV_START, KV_END, b, N_K, HAS_RANGES)
    if CAUSAL:  # the block's last query sits at position (pid_m + 1) * BLOCK_M - 1 + N_K - N_Q
        hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M + N_K - N_Q)
    # keys in [full_lo, full_hi) are visible to every query row of this block: no masking needed there
    full_lo = tl.cdiv(lo, BLOCK_N) * BLOCK_N
    full_hi = hi
    if CAUSAL:
        full_hi = tl.minimum(full_hi, pid_m * BLOCK_M + N_K - N_Q + 1)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(K, b, hk, s_kb, s_kh, s_kn, cols, offs_d, N_K, HEAD_DIM, UPCAST)
        v = _load_tile(V, b, hk, s_vb, s_vh, s_vn, cols, offs_d, N_K, HEAD_DIM, UPCAST)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        if (start_n < full_lo) | (start_n + BLOCK_N > full_hi):  # an edge block: padding or the causal diagonal
            qk = tl.where(_visible(rows, cols, lo, hi, N_Q, N_K, CAUSAL), qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)  # a row with nothing visible yet stays at exp2(-inf)=0
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    _store_tile(OUT, out, b, h, s_ob, s_oh, s_om, rows, offs_d, N_Q, HEAD_DIM)
    # log2-domain LSE; +inf on unseen rows makes the backward's exp2(s - lse) exactly 0 there
    lse = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    tl.store(LSE + pid_bh.to(tl.int64) * N_Q + rows, lse, mask=rows < N_Q)


@triton.jit
def _attn_bwd_delta(
    OUT, DO, DELTA, s_ob, s_oh, s_om, s_db, s_dh, s_dm, H, N_Q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(O * dO) in fp32, (B, H, Nq): the softmax-gradient term, without fp32 copies of O and dO."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_tile(OUT, b, h, s_ob, s_oh, s_om, rows, offs_d, N_Q, HEAD_DIM, True)
    do = _load_tile(DO, b, h, s_db, s_dh, s_dm, rows, offs_d, N_Q, HEAD_DIM, True)
    delta = tl.sum(o * do, axis=1)
    tl.store(DELTA + pid_bh.to(tl.int64) * N_Q + rows, delta, mask=rows < N_Q)


@triton.autotune(configs=_configs(DKDV_CONFIGS), key=_TUNE_KEY)
@triton.jit
def _attn_bwd_dkdv(
    Q, K, V, DO, LSE, DELTA, DK, DV, KV_START, KV_END, qk_scale, sm_scale,
    s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dm,
    H, GROUP, N_Q, N_K, LEN_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_RANGES: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per (key block, batch x KV head): dK, dV summed over the GROUP query heads that read it.
    dK and dV share k's and v's strides (allocated with empty_like)."""
    pid_n = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    h_kv = H // GROUP
    b = pid_bhk // h_kv
    hk = pid_bhk % h_kv
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(K, b, hk, s_kb, s_kh, s_kn, cols, offs_d, N_K, HEAD_DIM, UPCAST)
    v = _load_tile(V, b, hk, s_vb, s_vh, s_vn, cols, offs_d, N_K, HEAD_DIM, UPCAST)

    lo, hi = _key_range(KV_START, KV_END, b, N_K, HAS_RANGES)
    m_start = 0
    if CAUSAL:  # queries before the block's first key cannot see it
        m_start = (tl.maximum(pid_n * BLOCK_N - (N_K - N_Q), 0) // BLOCK_M) * BLOCK_M
    # every key of this block is padding: no query loop, gradients stay zero (a where, not an if: a compiled
    # kernel needs one type for m_end on both branches, and 0 would be a constexpr)
    m_end = tl.where((pid_n * BLOCK_N >= hi) | ((pid_n + 1) * BLOCK_N <= lo), 0, N_Q)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        stat_base = (b * H + h).to(tl.int64) * N_Q
        for start_m in range(m_start, m_end, BLOCK_M):
            rows = start_m + offs_m
            q = _load_tile(Q, b, h, s_qb, s_qh, s_qm, rows, offs_d, N_Q, HEAD_DIM, UPCAST)
            do = _load_tile(DO, b, h, s_db, s_dh, s_dm, rows, offs_d, N_Q, HEAD_DIM, UPCAST)
            lse = tl.load(LSE + stat_base + rows, mask=rows < N_Q, other=float("inf"))
            delta = tl.load(DELTA + stat_base + rows, mask=rows < N_Q, other=0.0)
            # transposed scores (keys x queries), so dK and dV come out without transposing the accumulators
            s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
            p_t = tl.math.exp2(s_t - lse[None, :])
            visible_t = (cols[:, None] >= lo) & (cols[:, None] < hi) & (rows[None, :] < N_Q)
            if CAUSAL:
                visible_t = visible_t & (rows[None, :] + (N_K - N_Q) >= cols[:, None])
            p_t = tl.where(visible_t, p_t, 0.0)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)

    _store_tile(DK, dk * sm_scale, b, hk, s_kb, s_kh, s_kn, cols, offs_d, N_K, HEAD_DIM)
    _store_tile(DV, dv, b, hk, s_vb, s_vh, s_vn, cols, offs_d, N_K, HEAD_DIM)


@triton.autotune(configs=_configs(DQ_CONFIGS), key=_TUNE_KEY)
@triton.jit
def _attn_bwd_dq(
    Q, K, V, DO, LSE, DELTA, DQ, KV_START, KV_END, qk_scale, sm_scale,
    s_qb, s_qh, s_qm, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dm,
    H, GROUP, N_Q, N_K, LEN_BUCKET,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_RANGES: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One program per (query block, batch x head): dQ over the keys it can see. dQ shares q's strides."""
    pid_m, pid_bh, b, h, hk, rows = _query_block(H, GROUP, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q, b, h, s_qb, s_qh, s_qm, rows, offs_d, N_Q, HEAD_DIM, UPCAST)
    do = _load_tile(DO, b, h, s_db, s_dh, s_dm, rows, offs_d, N_Q, HEAD_DIM, UPCAST)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * N_Q + rows, mask=rows < N_Q, other=float("inf"))
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * N_Q + rows, mask=rows < N_Q, other=0.0)

    lo, hi = _key_range(KV_START, KV_END, b, N_K, HAS_RANGES)
    if CAUSAL:
        hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M + N_K - N_Q)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range((lo // BLOCK_N) * BLOCK_N, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(K, b, hk, s_kb, s_kh, s_kn, cols, offs_d, N_K, HEAD_DIM, UPCAST)
        v = _load_tile(V, b, hk, s_vb, s_vh, s_vn, cols, offs_d, N_K, HEAD_DIM, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(_visible(rows, cols, lo, hi, N_Q, N_K, CAUSAL), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    _store_tile(DQ, dq * sm_scale, b, h, s_qb, s_qh, s_qm, rows, offs_d, N_Q, HEAD_DIM)
