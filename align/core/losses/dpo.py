"""DPO-family pair losses as pure functions of per-token log-probs, masks and token weights (no model code).

Conventions: every per-token tensor is [B, T] over the *response* only, aligned so that position 0 is the first
response token, right-padded; `mask` is 1 on real tokens and 0 on padding; `weights` (OPA-DPO's token scores s_t,
RLHF-V's gamma on corrected tokens) default to 1. Log-prob differences are always policy minus reference.

`dpo_pair_loss` has OPA-DPO's position-paired token form (Yang et al., CVPR'25, `dpo_trainer.py` `dpo_loss`: chosen
and rejected tokens paired by position, averaged over every padded position) beside plain and length-normalised
sequence DPO; `ddpo_loss` is RLHF-V's token-weighted DPO. OPA-DPO's anchor and four-term sum are in opa_dpo.py.
Token weights come from character spans (data_builders/spans.py) through the tokenizer offsets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

LOG2 = math.log(2.0)  # the loss of a pair whose policy equals its reference, and of every padded token position


def _masked_ratio(pol: Tensor, ref: Tensor, mask: Tensor, weights: Tensor | None) -> Tensor:
    """s_t * (log pi_t - log pi_ref_t) * m_t, [B, T]; `where` keeps padding at exactly 0 with zero gradient even if
    a padded log-prob is -inf or NaN (a product with the mask would give NaN)."""
    ratio = torch.where(mask.bool(), pol - ref, torch.zeros((), dtype=pol.dtype, device=pol.device))
    return ratio if weights is None else ratio * weights.to(pol.dtype)


def pad_to_length(x: Tensor, length: int) -> Tensor:
    return F.pad(x, (0, length - x.shape[-1])) if x.shape[-1] < length else x


def policy_rewards(
    pol: Tensor, ref: Tensor, mask: Tensor, beta: float, weights: Tensor | None = None, per_token: bool = False
) -> Tensor:
    """Implicit rewards that keep their gradient (for the anchor term).

    per_token=False: r = beta * sum_t s_t (log pi_t - log pi_ref_t) m_t, [B] (sequence level).
    per_token=True:  r_t = beta * s_t (log pi_t - log pi_ref_t) m_t, [B, T], as OPA-DPO's reference code feeds its
    anchor (there `dpo_loss` returns these unweighted per-token ratios as "chosen rewards").
    """
    ratio = _masked_ratio(pol, ref, mask, weights)
    return beta * (ratio if per_token else ratio.sum(-1))


def dpo_pair_loss(
    pol_w: Tensor,
    ref_w: Tensor,
    pol_l: Tensor,
    ref_l: Tensor,
    mask_w: Tensor,
    mask_l: Tensor,
    beta: float,
    weights_w: Tensor | None = None,
    weights_l: Tensor | None = None,
    form: str = "token",
    length: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One preference pair (w preferred over l). Returns (loss, chosen reward [B], rejected reward [B]).

    form="token" (OPA-DPO, position-paired): with both sides right-padded with zeros to a common T,
        logit_t = s^w_t (log pi(y^w_t) - log pi_ref(y^w_t)) m^w_t - s^l_t (log pi(y^l_t) - log pi_ref(y^l_t)) m^l_t
        loss    = 1/(B T) sum_{b,t} -log sigmoid(beta logit_t)
    The mean runs over ALL T positions, so a position that is padding on both sides adds exactly log 2 with zero
    gradient, as in the reference code (which pads every response to 896). T is max(T_w, T_l), or `length` when
    given: pass the reference's fixed response length to make the scale independent of the batch's padding.
    form="sequence" (standard DPO):
        logit = sum_t s^w_t (log pi - log pi_ref)(y^w_t) m^w_t - sum_t s^l_t (log pi - log pi_ref)(y^l_t) m^l_t
        loss  = 1/B sum_b -log sigmoid(beta logit)
    form="mean" (length-normalised, as in SimPO/LN-DPO; not OPA-DPO): the sequence form with each side's sum
        divided by its number of response tokens, so a shorter answer gains nothing from being short; use a larger
        beta (about beta_sequence times the typical length).
    Rewards (all forms, detached, for logging): beta * sum_t s_t (log pi - log pi_ref) m_t per side.
    """
    ratio_w = _masked_ratio(pol_w, ref_w, mask_w, weights_w)
    ratio_l = _masked_ratio(pol_l, ref_l, mask_l, weights_l)
    rewards = (beta * ratio_w.sum(-1).detach(), beta * ratio_l.sum(-1).detach())
    if form == "sequence":
        logits = ratio_w.sum(-1) - ratio_l.sum(-1)
    elif form == "mean":
        logits = ratio_w.sum(-1) / mask_w.sum(-1).clamp(min=1) - ratio_l.sum(-1) / mask_l.sum(-1).clamp(min=1)
    elif form == "token":
        T = max(ratio_w.shape[-1], ratio_l.shape[-1])
        if length is not None:
            if length < T:
                raise ValueError(f"length={length} is shorter than the responses ({T} tokens)")
            T = length
        logits = pad_to_length(ratio_w, T) - pad_to_length(ratio_l, T)
    else:
        raise ValueError(f"form must be 'token', 'sequence' or 'mean', got {form!r}")
    return -F.logsigmoid(beta * logits).mean(), *rewards


def weighted_logps(token_logps: Tensor, mask: Tensor, weights: Tensor | None = None, average: bool = False) -> Tensor:
    """Token-weighted log-likelihood of each response, [B] (RLHF-V's DDPO; Muffin's `compute_weighted_logp`):

        average=False:  sum_t w_t logp_t m_t
        average=True:   sum_t w_t logp_t m_t / sum_t w_t m_t

    With w_t = 1 on unchanged tokens y_u and gamma on corrected ones y_c, the average is the paper's
    (1/N)[sum_{y_u} log p + gamma sum_{y_c} log p], N = |y_u| + gamma |y_c| (Muffin's `dpo_use_average`).
    Padding contributes exactly 0 with zero gradient even where its log-prob is -inf or NaN (`where`, not a
    product); a response with no weight at all (empty, or all weights 0) averages to 0, not 0/0.
    """
    m = mask.bool()
    zero = torch.zeros((), dtype=token_logps.dtype, device=token_logps.device)
    w = torch.ones_like(token_logps) if weights is None else weights.to(token_logps.dtype)
    w = torch.where(m, w, zero)  # a padded weight may be anything; it must not reach the sum or N
    total = (torch.where(m, token_logps, zero) * w).sum(-1)
    if not average:
        return total
    n = w.sum(-1)
    # total is 0 where n is 0; dividing by 1 there (not by 0) keeps the gradient finite
    return total / torch.where(n > 0, n, torch.ones_like(n))


def ddpo_loss(
    pol_w: Tensor,
    ref_w: Tensor,
    pol_l: Tensor,
    ref_l: Tensor,
    mask_w: Tensor,
    mask_l: Tensor,
    weights_w: Tensor | None,
    weights_l: Tensor | None,
    beta: float,
    average: bool = False,
    sft_weight: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """RLHF-V's dense DPO (DDPO): sigmoid DPO on token-weighted log-likelihoods g (`weighted_logps`). Returns
    (loss, chosen reward [B], rejected reward [B]).

        h_y   = g(log pi(y) - log pi_ref(y); w^y)              (policy minus reference, weighted, summed or averaged)
        loss  = 1/B sum_b -log sigmoid(beta (h_w - h_l))  +  sft_weight * 1/B sum_b -gbar(log pi(y^w); w^w)

    gbar is the weighted *average* log-likelihood of the chosen answer under the policy, whatever `average` is, so
    the SFT term's scale does not grow with the answer's length (Muffin: loss = DPO_weight L_DPO - SFT_weight
    mean(log pi(y_w)), with its log pi the same sum-or-average as its DPO term). g is linear in the log-probs and
    policy and reference score the same tokens with the same weights, so g(pi) - g(pi_ref) = g(pi - pi_ref);
    taking the ratio first avoids subtracting two large sums. With all weights 1, average=False is
    `dpo_pair_loss(form="sequence")` and average=True is its `form="mean"` (same loss; the rewards differ there).
    Rewards (detached): beta * h_w and beta * h_l, the quantities inside the sigmoid.
    """
    h_w = weighted_logps(pol_w - ref_w, mask_w, weights_w, average)
    h_l = weighted_logps(pol_l - ref_l, mask_l, weights_l, average)
    loss = -F.logsigmoid(beta * (h_w - h_l)).mean()
    if sft_weight:
        loss = loss + sft_weight * -weighted_logps(pol_w, mask_w, weights_w, average=True).mean()
    return loss, beta * h_w.detach(), beta * h_l.detach()
