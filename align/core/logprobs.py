"""Per-token log-probs of the scored (response) tokens, without the full-vocabulary log-softmax at every position.

The naive form (`naive_response_logps`, kept as the reference for the tests and bench/logprobs.py) materialises
[N, L, V] logits and an fp32 log-softmax of the same size, although only the response positions are scored: at
10 rows x 1,600 tokens x 32k vocabulary that is ~2 GB per tensor, and the 576 image tokens per row are never scored.

`response_logps` runs the model's own forward (so PEFT's adapter switches and DDP's gradient-sync hooks still see
it) with `logits_to_keep=1`, takes the final post-norm hidden state, keeps only the M scored positions and applies
the output head to them in chunks, each under non-reentrant activation checkpointing: the backward recomputes one
chunk's [chunk, V] logits at a time instead of holding [M, V] (or [N, L, V]) for the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def response_logps(
    model, batch: dict, width: int | None = None, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the tokens whose label is not -100, each row's left-aligned: (logps [N, width] fp32, mask).

    `batch` holds input_ids, attention_mask, pixel_values and labels [N, L]. Position j of row i is that row's j-th
    scored token; padding is 0 / False. `width` defaults to the most scored tokens in a row. Same values as
    `naive_response_logps`, at the memory of a few [chunk_size, V] fp32 blocks instead of several [N, L, V].
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    head = _unwrap(model).get_output_embeddings()
    hidden = _final_hidden(model, head, batch)
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    # the hidden state at t predicts the token at t + 1; boolean indexing keeps row-major order (row 0's tokens first)
    scored = hidden[:, :-1][mask]
    logps = _chunked_logps(head, scored, labels[mask], chunk_size)
    return left_align(logps, mask, width)


def naive_response_logps(model, batch: dict, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: full logits and an fp32 log-softmax over the whole vocabulary at every position.

    This is the form the trainers used before `response_logps`; tests and bench/logprobs.py compare against it.
    """
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
    ).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    logps = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    if width is None:
        width = int(mask.sum(1).max()) if len(mask) else 0
    out = logps.new_zeros((len(logps), width))
    out_mask = torch.zeros((len(logps), width), dtype=torch.bool, device=logps.device)
    for i in range(len(logps)):
        row = logps[i][mask[i]]
        out[i, : len(row)] = row
        out_mask[i, : len(row)] = True
    return out, out_mask


def _unwrap(model):
    # DDP/FSDP keep the model in `.module` and forward no attributes; PEFT forwards get_output_embeddings itself
    return getattr(model, "module", model)


def _final_hidden(model, head, batch: dict) -> torch.Tensor:
    """The hidden states the output head reads, [N, L, H], from one call of the model's own forward."""
    # a packed SFT batch (VisionSFTCollator.packed) has position ids restarting per row instead of a mask
    packed = {"position_ids": batch["position_ids"]} if "position_ids" in batch else {}
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        pixel_values=batch["pixel_values"],
        **packed,
        output_hidden_states=_hidden_state_selection(model),
        logits_to_keep=1,  # the head runs on the last position only; we apply it to the scored positions below
        use_cache=False,  # a KV cache would hold every layer's keys and values until the call returns
    )
    hidden = out.hidden_states[-1]
    _check_head_input(head, hidden, out.logits)
    return hidden


def _hidden_state_selection(model) -> list[int]:
    """Which hidden states to keep: the last (the head's input) and those LLaVA's projector reads from the tower.

    `output_hidden_states=True` would keep every layer's output until the call returns, which under no_grad (the
    reference pass) is 33 x [N, L, H] at 7B scale. An index list keeps only these; the same list reaches the vision
    tower, whose `vision_feature_layer` (-2 in LLaVA-1.5) must therefore be in it, or its features would be None.
    """
    layers = getattr(_unwrap(model).config, "vision_feature_layer", None)
    extra = [] if layers is None else [layers] if isinstance(layers, int) else list(layers)
    return sorted({-1, *extra})


@torch.no_grad()
def _check_head_input(head, hidden: torch.Tensor, logits: torch.Tensor) -> None:
    """The kept last position must equal head(hidden_states[-1]), at [N, V] cost.

    Catches a pre-norm last hidden state (`tie_last_hidden_states=False`) or logits changed after the head
    (soft-capping, scaling): either would make every log-prob silently wrong.
    """
    expected = head(hidden[:, -1:]).float()
    if not torch.allclose(expected, logits.float(), rtol=1e-2, atol=1e-2):
        gap = (expected - logits.float()).abs().max().item()
        raise RuntimeError(
            f"hidden_states[-1] is not what the output head reads (max logit gap {gap:.3g}); "
            "this model needs naive_response_logps"
        )


def _chunked_logps(head, hidden: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """log p(target) for [M, H] hidden states, chunk_size rows at a time; [M] fp32 (M may be 0)."""
    parts = []
    # split() of an empty tensor yields one empty chunk, so M = 0 still runs the head and stays in the graph
    for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size)):
        if torch.is_grad_enabled():
            # only h and t are saved; the backward recomputes this chunk's [chunk, V] logits
            parts.append(checkpoint(_chunk_logps, head, h, t, use_reentrant=False))
        else:
            parts.append(_chunk_logps(head, h, t))
    return torch.cat(parts)


def _chunk_logps(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # the module call (not F.linear on its weight) applies a bias, a LoRA on the head and ZeRO-3's gather hooks
    logits = head(hidden).float()
    # -cross_entropy == logit - logsumexp (fp32): the fused kernel's backward holds ~3 [chunk, V] blocks where
    # gather - logsumexp holds ~4, and runs ~25% faster on CPU; same log-softmax kernel as the naive form
    return -F.cross_entropy(logits, targets, reduction="none")


def left_align(logps: torch.Tensor, mask: torch.Tensor, width: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter [M] log-probs (row-major over `mask` [N, L]) into [N, width], each row's from column 0."""
    counts = mask.sum(1)
    longest = int(counts.max()) if len(counts) else 0
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width {width} is less than the {longest} scored tokens of the longest row")
    rows = mask.nonzero(as_tuple=True)[0]
    cols = (mask.cumsum(1) - 1)[mask]  # the j-th scored token of its row goes to column j
    out = logps.new_zeros((len(mask), width)).index_put((rows, cols), logps)
    out_mask = torch.arange(width, device=mask.device) < counts.unsqueeze(1)
    return out, out_mask
