"""The fused kernel as a transformers attention backend named `triton_fused`.

    import kernels.hf_attention  # registers on import
    model.set_attn_implementation({"text_config": "triton_fused", "vision_config": "sdpa"})

Two registrations, both needed (stack.md §2.2): the attention function in `AttentionInterface`, and a mask
function in `AttentionMaskInterface`; without the latter transformers passes `attention_mask=None` and padding is
silently ignored. The mask function is transformers' flash-attention one: a 2-D (batch, keys) padding mask, or
None when nothing is padded, which the kernel turns into one contiguous key range per row. Causality comes from
the module (`is_causal`: True for the Llama language model, False for the CLIP/SigLIP tower).

Where the kernel cannot run (tensors on the CPU without TRITON_INTERPRET=1; the interpreter is ~1000x slower than
SDPA anyway) the backend computes the same thing with SDPA and says so once.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from kernels import fused_attention as op
from kernels.reference import key_ranges_from_mask, visibility_mask

NAME = "triton_fused"
logger = logging.getLogger(__name__)
_warned_fallback = False
_ranges_cache: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None
_checked_positions: torch.Tensor | None = None


def kernel_runs_on(device: torch.device) -> bool:
    """True where Triton can run the kernel: a CUDA (or ROCm) device, or anywhere under the interpreter."""
    return device.type == "cuda" or op.INTERPRET


def _key_ranges(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer of one forward pass gets the same mask tensor: convert (and validate, a host sync) once."""
    global _ranges_cache
    if _ranges_cache is None or _ranges_cache[0] is not mask:
        _ranges_cache = (mask, key_ranges_from_mask(mask))
    return _ranges_cache[1]


def _refuse_packed(position_ids: torch.Tensor | None) -> None:
    """Padding-free batches pack several sequences per row (positions restart); the kernel has no varlen mode, so
    it would let them attend to each other. Checked once per forward pass, like the mask."""
    global _checked_positions
    if position_ids is None or position_ids.shape[-1] < 2 or _checked_positions is position_ids:
        return
    if bool((position_ids[..., 1:] <= position_ids[..., :-1]).any()):
        raise ValueError(
            f"attn_implementation {NAME!r} got packed sequences (position_ids restart within a row); it has no "
            "varlen mode. Train with padding (padding_free=False) or use 'sdpa'"
        )
    _checked_positions = position_ids


def _sdpa_fallback(query, key, value, causal, scaling, kv_start, kv_end):
    global _warned_fallback
    if not _warned_fallback:
        logger.warning(
            "attn_implementation %r: no CUDA device and TRITON_INTERPRET is not 1, so attention runs on PyTorch "
            "SDPA with the same masking. Use a GPU for the Triton kernel (the CPU interpreter is for tests only).",
            NAME,
        )
        _warned_fallback = True
    n_q, n_k = query.shape[2], key.shape[2]
    gqa = query.shape[1] != key.shape[1]
    if kv_start is None and (not causal or n_q == n_k):
        out = F.scaled_dot_product_attention(query, key, value, is_causal=causal, scale=scaling, enable_gqa=gqa)
    else:
        visible = visibility_mask(query.shape[0], n_q, n_k, causal, kv_start, kv_end, device=query.device)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=visible, scale=scaling, enable_gqa=gqa)
        out = out.masked_fill(~visible.any(-1, keepdim=True), 0.0)  # rows that see no key: zeros, as the kernel
    return out


def triton_fused_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: q (B, H, Nq, D), k/v (B, H_kv, Nk, D), returns (B, Nq, H, D)."""
    for unsupported in ("softcap", "sliding_window"):
        if kwargs.get(unsupported) is not None:
            raise ValueError(f"attn_implementation {NAME!r} does not support {unsupported}; use 'sdpa' or 'eager'")
    if dropout:
        raise ValueError(
            f"attn_implementation {NAME!r} has no attention dropout (got {dropout}); set the model's "
            "attention_dropout to 0 or use 'sdpa'"
        )
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            f"attn_implementation {NAME!r} expects a 2-D padding mask from its mask function, got shape "
            f"{tuple(attention_mask.shape)}; custom 4-D masks need 'sdpa' or 'eager'"
        )
    causal = getattr(module, "is_causal", True) if is_causal is None else bool(is_causal)
    kv_start = kv_end = None
    if attention_mask is None and causal:
        _refuse_packed(kwargs.get("position_ids"))
    if attention_mask is not None:
        # A static cache holds more slots than tokens seen so far; the mask covers exactly the filled ones.
        key, value = key[:, :, : attention_mask.shape[1]], value[:, :, : attention_mask.shape[1]]
        kv_start, kv_end = _key_ranges(attention_mask)
    if kernel_runs_on(query.device):
        out = op.fused_attention(query, key, value, causal, scaling, kv_start, kv_end)
    else:
        out = _sdpa_fallback(query, key, value, causal, scaling, kv_start, kv_end)
    return out.transpose(1, 2).contiguous(), None  # the kernel's output is laid out so this copies nothing


def register() -> None:
    """Make `triton_fused` a valid `attn_implementation` (idempotent)."""
    AttentionInterface.register(NAME, triton_fused_attention_forward)
    AttentionMaskInterface.register(NAME, flash_attention_mask)


register()
