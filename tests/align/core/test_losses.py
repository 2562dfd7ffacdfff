"""align/core/losses against hand-computed numbers: the DPO pair terms (token, sequence and mean forms), RLHF-V's
DDPO, OPA-DPO's anchor and the combination of its terms."""

from __future__ import annotations

import math

import pytest
import torch

from align.core.losses.dpo import LOG2, ddpo_loss, dpo_pair_loss, policy_rewards, weighted_logps
from align.core.losses.opa_dpo import anchor_loss, opa_dpo_loss


def softplus_neg(x: float) -> float:
    """-log sigmoid(x) written out."""
    return math.log(1.0 + math.exp(-x))


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# A 2-example batch: chosen has 3 tokens (row 1 padded after 2), rejected 2 tokens (row 1 padded after 1).
POL_W, REF_W = t([[-1.0, -2.0, -0.5], [-0.2, -0.3, -0.4]]), t([[-1.5, -2.0, -1.0], [-0.2, -0.1, -9.0]])
POL_L, REF_L = t([[-1.0, -1.0], [-0.5, -0.5]]), t([[-0.5, -1.0], [-0.5, -0.3]])
MASK_W, MASK_L = t([[1, 1, 1], [1, 1, 0]]), t([[1, 1], [1, 0]])
S_W, S_L = t([[2.0, 1.0, 1.5], [1.0, 3.0, 7.0]]), t([[2.5, 1.0], [1.0, 4.0]])
BETA = 0.5
# By hand: weighted masked ratios s*(pol-ref)*m
#   chosen   [[2*0.5, 1*0, 1.5*0.5], [1*0, 3*(-0.2), masked]] = [[1.0, 0, 0.75], [0, -0.6, 0]]
#   rejected [[2.5*(-0.5), 0], [0, masked]]                    = [[-1.25, 0], [0, 0]]  -> padded to 3 with a 0
TOKEN_LOGITS = [1.0 + 1.25, 0.0, 0.75, 0.0, -0.6, 0.0]
SEQ_LOGITS = [(1.0 + 0.75) - (-1.25), -0.6 - 0.0]


def test_token_form_hand():
    loss, r_w, r_l = dpo_pair_loss(POL_W, REF_W, POL_L, REF_L, MASK_W, MASK_L, BETA, S_W, S_L, form="token")
    expected = sum(softplus_neg(BETA * x) for x in TOKEN_LOGITS) / 6  # mean over B*T = 2*3 positions
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert r_w.tolist() == pytest.approx([BETA * 1.75, BETA * -0.6])
    assert r_l.tolist() == pytest.approx([BETA * -1.25, 0.0])


def test_sequence_form_hand():
    loss, r_w, r_l = dpo_pair_loss(POL_W, REF_W, POL_L, REF_L, MASK_W, MASK_L, BETA, S_W, S_L, form="sequence")
    expected = sum(softplus_neg(BETA * x) for x in SEQ_LOGITS) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert r_w.tolist() == pytest.approx([BETA * 1.75, BETA * -0.6])
    assert r_l.tolist() == pytest.approx([BETA * -1.25, 0.0])


def test_unweighted_defaults_to_ones():
    loss, r_w, _ = dpo_pair_loss(POL_W, REF_W, POL_L, REF_L, MASK_W, MASK_L, 1.0, form="sequence")
    # unweighted: chosen [0.5+0+0.5, 0-0.2] = [1.0, -0.2]; rejected [-0.5, 0]
    assert loss.item() == pytest.approx((softplus_neg(1.5) + softplus_neg(-0.2)) / 2)
    assert r_w.tolist() == pytest.approx([1.0, -0.2])


@pytest.mark.parametrize("form", ["token", "sequence"])
def test_policy_equals_reference_is_log2(form):
    loss, r_w, r_l = dpo_pair_loss(REF_W, REF_W, REF_L, REF_L, MASK_W, MASK_L, BETA, S_W, S_L, form=form)
    assert loss.item() == pytest.approx(LOG2, abs=1e-15)
    assert r_w.abs().sum() == 0 and r_l.abs().sum() == 0


def test_token_form_padding_positions_add_log2_with_zero_gradient():
    pol_w = t([[-1.0, 5.0, -math.inf]]).requires_grad_()  # positions 1, 2 are padding: their values must not matter
    ref_w, mask_w = t([[-2.0, 0.0, 0.0]]), t([[1, 0, 0]])
    pol_l, ref_l, mask_l = t([[-1.0]]), t([[-1.0]]), t([[1]])
    loss, _, _ = dpo_pair_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, 1.0, form="token")
    assert loss.item() == pytest.approx((softplus_neg(1.0) + 2 * LOG2) / 3)
    loss.backward()
    assert pol_w.grad[0, 1:].tolist() == [0.0, 0.0] and pol_w.grad[0, 0] < 0
    # a fixed length (the reference pads to 896) adds more log 2 positions
    long, _, _ = dpo_pair_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, 1.0, form="token", length=8)
    assert long.item() == pytest.approx((softplus_neg(1.0) + 7 * LOG2) / 8)
    with pytest.raises(ValueError):
        dpo_pair_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, 1.0, form="token", length=2)


def test_bad_form():
    with pytest.raises(ValueError):
        dpo_pair_loss(POL_W, REF_W, POL_L, REF_L, MASK_W, MASK_L, BETA, form="avg")


def test_anchor_hand():
    got = anchor_loss([t([1.0, 0.0])], [t([2.0, -1.0])], delta=0.5)
    expected = (softplus_neg(0.5) + softplus_neg(-1.5) + softplus_neg(-0.5) + softplus_neg(1.5)) / 2
    assert got.item() == pytest.approx(expected)
    # four terms, pairs 1..4, at zero rewards: 4 log 2
    zeros = [t([0.0, 0.0])] * 2
    assert anchor_loss(zeros, zeros).item() == pytest.approx(4 * LOG2)


def test_anchor_per_token_pads_like_the_reference():
    got = anchor_loss([t([[1.0, 0.0, 0.0]])], [t([[2.0]])])
    # revision padded to [[2, 0, 0]]; mean over 3 positions of both terms
    expected = (softplus_neg(1.0) + 2 * LOG2 + softplus_neg(-2.0) + 2 * LOG2) / 3
    assert got.item() == pytest.approx(expected)
    with pytest.raises(ValueError):
        anchor_loss([t([1.0])], [t([[1.0]])])


@pytest.mark.parametrize("per_token", [False, True])
def test_anchor_step_raises_reference_and_lowers_revision(per_token):
    ref_gt, ref_rev = t([[-1.0, -2.0, -1.5]]), t([[-0.5, -0.7, 0.0]])
    mask_gt, mask_rev = t([[1, 1, 1]]), t([[1, 1, 0]])
    pol_gt, pol_rev = ref_gt.clone().requires_grad_(), ref_rev.clone().requires_grad_()

    def rewards():
        r_gt = policy_rewards(pol_gt, ref_gt, mask_gt, BETA, per_token=per_token)
        r_rev = policy_rewards(pol_rev, ref_rev, mask_rev, BETA, per_token=per_token)
        return r_gt, r_rev

    r_gt, r_rev = rewards()
    anchor_loss([r_gt, r_gt], [r_rev, r_rev]).backward()  # pairs 1, 3 and 2, 4 share their chosen answer
    with torch.no_grad():
        pol_gt -= 1.0 * pol_gt.grad
        pol_rev -= 1.0 * pol_rev.grad
    new_gt, new_rev = rewards()
    assert new_gt.sum() > r_gt.sum().detach()
    assert new_rev.sum() < r_rev.sum().detach()
    assert pol_rev.grad[0, 2] == 0  # a padded revision token gets no gradient


def test_combination_hand():
    terms = {
        name: torch.tensor(v)
        for name, v in zip(("pair_std", "pair_ai", "copo_std", "copo_ai", "anchor"), (1, 2, 3, 4, 5.0))
    }
    total, parts = opa_dpo_loss(terms, c_std=0.5, c_ai=2.0, c_copo=0.1, c_anc=3.0)
    # 0.5*1 + 2*2 + 0.1*(0.5*3 + 2*4) + 3*5
    assert total.item() == pytest.approx(0.5 + 4.0 + 0.1 * (1.5 + 8.0) + 15.0)
    assert {k: float(v) for k, v in parts.items()} == pytest.approx(
        {"pair_std": 1, "pair_ai": 2, "copo_std": 3, "copo_ai": 4, "anchor": 5, "total": 20.45}
    )
    default_total, _ = opa_dpo_loss(terms)  # 1 + 2 + 0.2*(3 + 4) + 5
    assert default_total.item() == pytest.approx(9.4)


def test_combination_missing_and_unknown_terms():
    total, parts = opa_dpo_loss({"pair_std": torch.tensor(1.0), "pair_ai": torch.tensor(2.0)}, c_ai=0.5)
    assert total.item() == pytest.approx(2.0) and set(parts) == {"pair_std", "pair_ai", "total"}
    with pytest.raises(ValueError):
        opa_dpo_loss({"pair_std": torch.tensor(1.0), "copo": torch.tensor(1.0)})


def test_mean_form_divides_each_side_by_its_length():
    pol_w, ref_w = torch.tensor([[-1.0, -1.0, 0.0]]), torch.tensor([[-2.0, -2.0, 0.0]])  # +1 per token, 2 tokens
    pol_l, ref_l = torch.tensor([[-1.0, -1.0, -1.0]]), torch.tensor([[-1.5, -1.5, -1.5]])  # +0.5 per token, 3 tokens
    mask_w, mask_l = torch.tensor([[1, 1, 0]]), torch.tensor([[1, 1, 1]])
    loss, _, _ = dpo_pair_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, beta=2.0, form="mean")
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.0 * (1.0 - 0.5)))))


# ---------------------------------------------------------------- DDPO (RLHF-V)


def test_weighted_logps_hand():
    # row 0: 2*-1 + 1*-2 + 1.5*-0.5 = -4.75 over N = 4.5; row 1: 1*-0.2 + 3*-0.3 = -1.1 over N = 4 (the 7 pads)
    assert weighted_logps(POL_W, MASK_W, S_W).tolist() == pytest.approx([-4.75, -1.1])
    assert weighted_logps(POL_W, MASK_W, S_W, average=True).tolist() == pytest.approx([-4.75 / 4.5, -1.1 / 4])
    assert weighted_logps(POL_W, MASK_W).tolist() == pytest.approx([-3.5, -0.5])  # no weights: ones
    # an empty response averages to 0, not 0/0
    assert weighted_logps(t([[-1.0]]), t([[0]]), t([[2.0]]), average=True).tolist() == [0.0]


def test_weighted_logps_padding_is_exactly_zero_even_at_minus_inf():
    logps = t([[-1.0, -math.inf, math.nan]]).requires_grad_()
    mask, weights = t([[1, 0, 0]]), t([[3.0, 5.0, math.inf]])
    for average in (False, True):
        got = weighted_logps(logps, mask, weights, average=average)
        assert got.tolist() == [-3.0 if not average else -1.0]
        logps.grad = None
        got.sum().backward()
        assert logps.grad.tolist() == [[3.0 if not average else 1.0, 0.0, 0.0]]


# By hand, weighted ratios (see above): chosen [1.75, -0.6] over N = [4.5, 4], rejected [-1.25, 0] over N = [3.5, 1]
DDPO_SUM = ([1.75, -0.6], [-1.25, 0.0])
DDPO_AVG = ([1.75 / 4.5, -0.6 / 4], [-1.25 / 3.5, 0.0])


@pytest.mark.parametrize("average, expected", [(False, DDPO_SUM), (True, DDPO_AVG)])
def test_ddpo_hand(average, expected):
    (h_w0, h_w1), (h_l0, h_l1) = expected
    loss, r_w, r_l = ddpo_loss(POL_W, REF_W, POL_L, REF_L, MASK_W, MASK_L, S_W, S_L, BETA, average=average)
    assert loss.item() == pytest.approx((softplus_neg(BETA * (h_w0 - h_l0)) + softplus_neg(BETA * (h_w1 - h_l1))) / 2)
    assert r_w.tolist() == pytest.approx([BETA * h_w0, BETA * h_w1])
    assert r_l.tolist() == pytest.approx([BETA * h_l0, BETA * h_l1])
    assert not r_w.requires_grad
    # the SFT term: sft_weight * mean of the chosen answer's weighted *average* NLL under the policy, in both forms
    with_sft, _, _ = ddpo_loss(
        POL_W, REF_W, POL_L, REF_L, MASK_W, MASK_L, S_W, S_L, BETA, average=average, sft_weight=0.3
    )
    assert with_sft.item() == pytest.approx(loss.item() + 0.3 * (4.75 / 4.5 + 1.1 / 4) / 2)


def _random_pair(seed: int = 0):
    """float32 per-token log-probs of a 3-pair batch, right-padded with -inf (a gather on padding can give that)."""
    gen = torch.Generator().manual_seed(seed)
    mask_w = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    mask_l = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])

    def logps(mask):
        x = -torch.rand(mask.shape, generator=gen) * 3
        return x.masked_fill(mask == 0, -math.inf)

    return logps(mask_w), logps(mask_w), logps(mask_l), logps(mask_l), mask_w, mask_l


def test_ddpo_with_gamma_1_is_sequence_dpo_exactly():
    pol_w, ref_w, pol_l, ref_l, mask_w, mask_l = _random_pair()
    ones_w, ones_l = torch.ones(mask_w.shape), torch.ones(mask_l.shape)
    got = ddpo_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, ones_w, ones_l, 0.7)
    want = dpo_pair_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, 0.7, form="sequence")
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    unweighted = ddpo_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, None, None, 0.7)
    assert all(torch.equal(a, b) for a, b in zip(unweighted, want))


def test_ddpo_average_with_gamma_1_is_mean_form_dpo():
    pol_w, ref_w, pol_l, ref_l, mask_w, mask_l = _random_pair(1)
    ones_w, ones_l = torch.ones(mask_w.shape), torch.ones(mask_l.shape)
    loss, r_w, _ = ddpo_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, ones_w, ones_l, 2.0, average=True)
    mean_loss, mean_r_w, _ = dpo_pair_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, 2.0, form="mean")
    assert torch.equal(loss, mean_loss)
    # the rewards differ by design: DDPO's are the averaged log-ratios inside its sigmoid, the mean form logs sums
    assert torch.allclose(r_w * mask_w.sum(-1), mean_r_w)


@pytest.mark.parametrize("average", [False, True])
def test_ddpo_gradient_is_zero_on_padding(average):
    pol_w, ref_w, pol_l, ref_l, mask_w, mask_l = _random_pair(2)
    pol_w, pol_l = pol_w.requires_grad_(), pol_l.requires_grad_()
    weights_w = torch.full(mask_w.shape, 2.0).masked_fill(mask_w == 0, math.nan)  # padded weights must not matter
    weights_l = torch.full(mask_l.shape, 3.0)
    loss, _, _ = ddpo_loss(
        pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, weights_w, weights_l, 0.5, average=average, sft_weight=1.0
    )
    assert torch.isfinite(loss)
    loss.backward()
    for grad, mask in ((pol_w.grad, mask_w), (pol_l.grad, mask_l)):
        assert torch.isfinite(grad).all()
        assert (grad[mask == 0] == 0).all() and (grad[mask == 1] != 0).all()


@pytest.mark.parametrize("average", [False, True])
def test_ddpo_raising_gamma_raises_the_changed_tokens_gradient(average):
    """A corrected token (index 1 of each answer) weighted gamma gets a larger gradient the larger gamma is."""
    pol_w, ref_w, pol_l, ref_l, mask_w, mask_l = _random_pair(3)
    pol_w = ref_w + 0.1 * torch.randn(ref_w.shape, generator=torch.Generator().manual_seed(4))
    pol_l = ref_l - 0.1

    def grads(gamma: float):
        weights_w, weights_l = torch.ones(mask_w.shape), torch.ones(mask_l.shape)
        weights_w[:, 1], weights_l[:, 1] = gamma, gamma
        p_w, p_l = pol_w.clone().requires_grad_(), pol_l.clone().requires_grad_()
        loss, _, _ = ddpo_loss(p_w, ref_w, p_l, ref_l, mask_w, mask_l, weights_w, weights_l, 0.5, average=average)
        loss.backward()
        return p_w.grad, p_l.grad

    (gw1, gl1), (gw5, gl5) = grads(1.0), grads(5.0)
    changed_w, changed_l = mask_w[:, 1] == 1, mask_l[:, 1] == 1  # rows whose answer has a token 1
    assert (gw5[changed_w, 1].abs() > gw1[changed_w, 1].abs()).all()
    assert (gl5[changed_l, 1].abs() > gl1[changed_l, 1].abs()).all()
    # the gradient still raises the chosen answer and lowers the rejected one
    assert (gw5[changed_w, 1] < 0).all() and (gl5[changed_l, 1] > 0).all()
