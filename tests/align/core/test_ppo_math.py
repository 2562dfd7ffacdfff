"""PPO's pure functions (align/core/losses/ppo.py) on hand-computed sequences."""

from __future__ import annotations

import math

import pytest
import torch

from align.core.losses.ppo import gae, policy_loss, shaped_rewards, value_loss, whiten

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)


def test_shaped_rewards_put_the_kl_on_every_token_and_the_score_on_the_last():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -9.0, -9.0]])
    ref = torch.tensor([[-1.5, -1.8, -0.6, 0.0], [-0.5, -1.0, 0.0, 0.0]])
    rewards, kl = shaped_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, MASK, kl_coef=0.1)
    # row 0: log-ratios 0.5, -0.2, 0.1 (clamped at 0 for the penalty); row 1: -0.5, 0.0
    expected = torch.tensor([[-0.05, 0.0, -0.01 + 2.0, 0.0], [0.0, 0.0 - 1.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -0.2, 0.1, 0.0], [-0.5, 0.0, 0.0, 0.0]]))


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.5, -1.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 1.0, 7.0], [0.1, 0.3, 7.0, 7.0]])  # values past the end are ignored
    advantages, returns = gae(rewards, values, MASK)
    torch.testing.assert_close(advantages, torch.tensor([[2.5, 1.8, 1.0, 0.0], [-0.6, -1.3, 0.0, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[3.0, 2.0, 2.0, 0.0], [-0.5, -1.0, 0.0, 0.0]]))


def test_gae_by_hand_with_discounting():
    r, v, g, lam = [1.0, 0.0, 2.0], [0.5, 0.2, 1.0], 0.9, 0.5
    d2 = r[2] - v[2]
    d1 = r[1] + g * v[2] - v[1]
    d0 = r[0] + g * v[1] - v[0]
    a2, a1 = d2, d1 + g * lam * d2
    a0 = d0 + g * lam * a1
    advantages, _ = gae(torch.tensor([r + [0.0]]), torch.tensor([v + [3.0]]), MASK[:1], gamma=g, lam=lam)
    torch.testing.assert_close(advantages, torch.tensor([[a0, a1, a2, 0.0]]))


def test_gae_ignores_padding_after_the_response():
    rewards, values = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.5, 0.2, 1.0]])
    short, _ = gae(rewards, values, torch.ones(1, 3, dtype=torch.bool), gamma=0.9, lam=0.8)
    tail = torch.tensor([[5.0, 5.0]])  # whatever sits past the end
    mask = torch.tensor([[1, 1, 1, 0, 0]], dtype=torch.bool)
    padded, _ = gae(torch.cat([rewards, tail], 1), torch.cat([values, tail], 1), mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(padded[:, :3], short)
    assert padded[:, 3:].abs().sum() == 0


def test_whiten_over_the_masked_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 0.0]])
    w = whiten(x, MASK)
    kept = w[MASK]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert kept.pow(2).mean().item() == pytest.approx(1.0, abs=1e-5)  # population variance, as PPO codes use
    assert w[~MASK].abs().sum() == 0
    assert whiten(x, MASK, shift_mean=False)[MASK].mean().item() == pytest.approx(3.0, abs=1e-5)


def test_policy_loss_clips_by_hand():
    old = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1, 9.0]]))
    advantages = torch.tensor([[2.0, -1.0, 1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    loss, clipfrac = policy_loss(logprobs, old, advantages, mask, clip=0.2)
    # token 0: A>0, ρ=1.5 → −2·1.2 (clipped); token 1: A<0, ρ=0.5 → 1·0.8 (clipped); token 2: ρ=1.1 → −1.1
    assert loss.item() == pytest.approx((-2.4 + 0.8 - 1.1) / 3, rel=1e-5)
    assert clipfrac.item() == pytest.approx(2 / 3)


def test_value_loss_clips_by_hand():
    old = torch.tensor([[1.0, 1.0, 1.0]])
    values = torch.tensor([[1.5, 0.9, 3.0]])
    returns = torch.tensor([[2.0, 0.0, 3.0]])
    loss, clipfrac = value_loss(values, old, returns, torch.ones(1, 3, dtype=torch.bool), clip=0.2)
    # token 0: (1.5−2)²=0.25 vs (1.2−2)²=0.64 → 0.64; token 1: 0.81 vs 0.81 → 0.81; token 2: 0 vs (1.2−3)²=3.24
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81 + 3.24) / 3, rel=1e-5)
    assert clipfrac.item() == pytest.approx(2 / 3)
    assert math.isfinite(loss.item())
