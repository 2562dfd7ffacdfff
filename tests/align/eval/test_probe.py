"""The linear probe's pieces: yes/no scores by hand, thresholds, and a probe that must find a planted signal."""

from __future__ import annotations

import pytest
import torch

from align.eval import probe


def test_yes_no_scores_hand_computed():
    m = probe.yes_no_scores([True, True, False, False, True], ["yes", "no", "no", "yes", "yes"])
    # tp 2, fp 1, tn 1, fn 1: tpr 2/3, tnr 1/2, precision 2/3
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["f1"] == pytest.approx(2 / 3)
    assert probe.yes_no_scores([False, False], ["yes", "no"])["f1"] == 0.0


def test_best_thresholds_separate_two_clusters():
    logits = torch.tensor([[0.0], [1.0], [5.0], [6.0]])
    labels = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    t = probe.best_thresholds(logits, labels)
    assert 1.0 <= float(t[0]) < 5.0


def test_probe_finds_a_class_written_into_one_token_and_not_elsewhere():
    torch.manual_seed(0)
    n, patches, hidden, classes = 400, 9, 16, 3
    features = torch.randn(n, patches, hidden)
    labels = torch.zeros(n, patches, classes)
    for i in range(n):  # class c sits at one random token of image i, as a shift along direction c
        for c in range(classes):
            if torch.rand(()) < 0.5:
                where = int(torch.randint(patches, ()))
                features[i, where, c] += 6.0
                labels[i, where, c] = 1.0
    score = probe.fit_probe(features[:300], labels[:300])
    pred = score(features[300:]) > 0
    truth = labels[300:].amax(1) > 0
    assert (pred == truth).float().mean() > 0.95
