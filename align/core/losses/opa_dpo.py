"""OPA-DPO's anchor term and its four-pair total (Yang et al., CVPR'25), as its reference code computes them
(`dpo_trainer.py`, `compute_policy_loss`): reference vs rollout, revision vs rollout, and each chosen answer with the
image vs a masked image (the pairs are `dpo.dpo_pair_loss`), plus an anchor that pushes the reference answer's
reward up and the revision's down.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from align.core.losses.dpo import pad_to_length

Tensor = torch.Tensor

TERM_NAMES = ("pair_std", "pair_ai", "copo_std", "copo_ai", "anchor")


def anchor_loss(reference_rewards: list[Tensor], revision_rewards: list[Tensor], delta: float = 0.0) -> Tensor:
    """OPA-DPO's AncPO (mDPO-style) anchor, mean over the batch:

        L_anc = sum_k -log sigmoid(r^ref_k - delta) + sum_k -log sigmoid(-r^rev_k + delta)

    `reference_rewards` are the chosen rewards of pairs 1 and 3 (ground-truth answer: pushed above delta),
    `revision_rewards` those of pairs 2 and 4 (expert revision: pushed below delta; the revision copies the
    rollout's correct majority, so a positive anchor would also lift rejected content, OPA-DPO issue #4).
    Rewards must carry gradient: build them with `policy_rewards`; the rewards `dpo_pair_loss` returns are detached
    and would give an anchor that trains nothing. [B] rewards give the sequence-level form; [B, T] per-token
    rewards give the reference code's form (elementwise, zero-padded to a common T, mean over all positions).
    """
    if not reference_rewards and not revision_rewards:
        raise ValueError("anchor_loss needs at least one reward")
    rewards = [*reference_rewards, *revision_rewards]
    if len({r.dim() for r in rewards}) > 1:
        raise ValueError("anchor_loss: mix of sequence-level [B] and per-token [B, T] rewards")
    T = max(r.shape[-1] if r.dim() > 1 else 0 for r in rewards)
    pad = (lambda r: pad_to_length(r, T)) if T else (lambda r: r)
    total = sum(-F.logsigmoid(pad(r) - delta) for r in reference_rewards)
    total = total + sum(-F.logsigmoid(-pad(r) + delta) for r in revision_rewards)
    return total.mean()


def opa_dpo_loss(
    terms: dict[str, Tensor],
    c_std: float = 1.0,
    c_ai: float = 1.0,
    c_copo: float = 0.2,
    c_anc: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = c_std L1 + c_ai L2 + c_copo (c_std L3 + c_ai L4) + c_anc L_anc.

    `terms` keys: "pair_std" (L1, reference vs rollout), "pair_ai" (L2, revision vs rollout), "copo_std" (L3,
    reference with the image vs a masked image), "copo_ai" (L4, revision likewise), "anchor" (L_anc). A missing
    key is a term switched off (CoPO or AncPO disabled). Returns the total and, for logging, the detached parts
    plus "total".
    """
    unknown = set(terms) - set(TERM_NAMES)
    if unknown or not terms:
        raise ValueError(f"opa_dpo_loss: unknown terms {sorted(unknown)}; expected some of {TERM_NAMES}")
    coefs = {
        "pair_std": c_std,
        "pair_ai": c_ai,
        "copo_std": c_copo * c_std,
        "copo_ai": c_copo * c_ai,
        "anchor": c_anc,
    }
    total = sum(coefs[name] * value for name, value in terms.items())
    parts = {name: value.detach() for name, value in terms.items()}
    parts["total"] = total.detach()
    return total, parts
