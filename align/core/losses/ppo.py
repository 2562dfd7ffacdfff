"""PPO's math as pure functions of per-token tensors [B, T] with a response mask (LLaVA-RLHF's PPO, research/
methods.md §3.3): the KL-shaped rewards, GAE, whitening, and the clipped policy and value losses.

Positions past a response's end are masked out everywhere: they get no reward, no advantage, no loss.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, total=None) -> torch.Tensor:
    """(x − mean) / std over the masked positions (the mean added back when not `shift_mean`); 0 outside them.
    `total` sums a tensor over the processes that share the batch (align/core/distributed.all_sum), so the mean
    and std are the whole batch's; None: this process's rows are the batch."""
    total = total or (lambda t: t)
    m = mask.to(x.dtype)
    count = total(m.sum()).clamp(min=1)
    mean = total((x * m).sum()) / count
    var = total(((x - mean) ** 2 * m).sum()) / count
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def shaped_rewards(
    score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards −kl_coef · max(0, log π − log π_ref) on every response token, plus each sequence's task
    `score` [B] on its last response token (LLaVA-RLHF's `_shape_reward`, its k1 estimate clamped at 0). Returns
    (rewards [B, T], the per-token KL estimate before the clamp)."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl.clamp(min=0)
    last = mask.long().cumsum(1).argmax(1)  # the position of each row's last response token
    rewards[torch.arange(len(score)), last] += score.to(rewards.dtype)
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation backwards over each response: δ_t = r_t + γ V_{t+1} − V_t (V = 0 after the
    last response token), A_t = δ_t + γλ A_{t+1}. Returns (advantages, returns = advantages + values), masked."""
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(len(values), dtype=values.dtype, device=values.device)
    next_advantage = torch.zeros_like(next_value)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * m
        # a masked position (padding past the end) passes nothing back to the tokens before it
        next_value = torch.where(m > 0, values[:, t], next_value)
        next_advantage = torch.where(m > 0, advantage, next_advantage)
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate: mean over response tokens of max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), ρ = π/π_old.
    Returns (loss, the share of tokens where the clipped term was taken)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    return masked_mean(torch.maximum(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped value loss: ½ · mean of max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²). Returns (loss, the
    share of tokens where the clipped term was taken)."""
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    unclipped, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    return 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)
