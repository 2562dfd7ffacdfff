"""align/losses.py against hand-computed numbers: OPA-DPO's pair terms (token and sequence forms), the anchor, the
combination, and the token weights derived from an expert report."""

from __future__ import annotations

import math

import pytest
import torch

from align.losses import (
    LOG2,
    anchor_loss,
    dpo_pair_loss,
    opa_dpo_loss,
    policy_rewards,
    report_spans,
    sequence_logps,
    span_token_weights,
)
from data_builders.experts import ExpertReport


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


def test_sequence_logps_hand():
    got = sequence_logps(POL_W, MASK_W, S_W)
    assert got.tolist() == pytest.approx([2 * -1.0 + 1 * -2.0 + 1.5 * -0.5, 1 * -0.2 + 3 * -0.3])
    assert sequence_logps(POL_W, MASK_W).tolist() == pytest.approx([-3.5, -0.5])


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


def test_span_token_weights_hand_offsets():
    # "a cat. a dog." ; sentence spans [0, 6) weight 2, [7, 13) weight 1.5; a leading special token at (0, 0)
    offsets = [(0, 0), (0, 1), (2, 5), (5, 6), (7, 8), (9, 12), (12, 13)]
    spans = [(0, 6, 2.0), (7, 13, 1.5)]
    assert span_token_weights(offsets, spans) == [1.0, 2.0, 2.0, 2.0, 1.5, 1.5, 1.5]
    # most overlap wins; a tie goes to the earlier span; no overlap takes the default
    assert span_token_weights([(5, 10), (4, 9), (13, 20)], spans, default=0.5) == [1.5, 2.0, 0.5]
    # spans read back from disk are floats
    assert span_token_weights([(2, 5)], [(0.0, 6.0, 2.0)]) == [2.0]


def _report() -> dict:
    edit = dict(objects=[], reason="")
    return {
        "sentences": [
            dict(copied="there is a red cup at the top left.", score=4, error_type="correct",
                 rewritten="there is a red cup at the top left.", **edit),
            dict(copied="a blue fork is at the center.", score=2, error_type="image_recognition_error",
                 rewritten="  a blue knife is at the center. ", **edit),
            dict(copied="a dog sings.", score=1, error_type="language_comprehension_error", rewritten="", **edit),
        ],
        "added": "there is a green cat at the bottom right.",
        "added_reason": "missing",
    }  # fmt: skip


def test_report_spans_text_and_weights():
    report = _report()
    text, spans = report_spans(report, "rollout")
    assert text == "there is a red cup at the top left. a blue fork is at the center. a dog sings."
    assert spans == [(0, 35, 1.0), (36, 65, 2.0), (66, 78, 2.5)]
    text, spans = report_spans(report, "revision")
    assert text == ExpertReport.from_dict(report).revision
    assert [text[s:e] for s, e, _ in spans] == [
        "there is a red cup at the top left.",
        "a blue knife is at the center.",
        "there is a green cat at the bottom right.",
    ]
    assert [w for _, _, w in spans] == [1.0, 2.0, 1.0]  # the added part weighs 1.0
    _, spans = report_spans(report, "revision", weights="error_type")
    assert [w for _, _, w in spans] == [1.0, 3.0, 1.0]
    _, spans = report_spans(report, "rollout", weights="error_type")
    assert [w for _, _, w in spans] == [1.0, 3.0, 1.0]
    with pytest.raises(ValueError):
        report_spans(report, "chosen")


def test_weights_land_on_tokens_with_the_tiny_tokenizer():
    from align.models import build_tiny_tokenizer

    report = _report()
    report["sentences"] = report["sentences"][:2]
    text, spans = report_spans(report, "rollout")
    assert text == "there is a red cup at the top left. a blue fork is at the center."
    enc = build_tiny_tokenizer()(text, return_offsets_mapping=True)
    weights = span_token_weights(enc["offset_mapping"], spans)
    tokens = enc.tokens()
    assert len(weights) == len(tokens) == 18
    first = tokens.index(".") + 1  # the score-2 sentence starts after the first full stop
    assert weights[:first] == [1.0] * first
    assert weights[first:] == [2.0] * (len(tokens) - first)
    assert tokens[first : first + 3] == ["a", "blue", "fork"]


def test_mean_form_divides_each_side_by_its_length():
    pol_w, ref_w = torch.tensor([[-1.0, -1.0, 0.0]]), torch.tensor([[-2.0, -2.0, 0.0]])  # +1 per token, 2 tokens
    pol_l, ref_l = torch.tensor([[-1.0, -1.0, -1.0]]), torch.tensor([[-1.5, -1.5, -1.5]])  # +0.5 per token, 3 tokens
    mask_w, mask_l = torch.tensor([[1, 1, 0]]), torch.tensor([[1, 1, 1]])
    loss, _, _ = dpo_pair_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, beta=2.0, form="mean")
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-2.0 * (1.0 - 0.5)))))
