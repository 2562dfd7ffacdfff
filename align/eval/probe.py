"""Is the evidence in the image? A linear probe on a frozen policy's image tokens, against the policy's answers.

The probe reads the projector outputs (the image tokens the LM sees): one linear map, the same for every token,
scores each token for each class (a logistic regression on the token, fitted to what its grid cell holds), and an
image holds a class when its highest-scoring token says so. It is fitted on the ToyWorld training split and scored
on the test split's POPE questions, the same (image, object) pairs the policy answers in its eval. If the probe
decides them far better than the policy, the policy's hallucination is not for want of visual evidence: the LM
does not use it.
"""

from __future__ import annotations

import torch
from datasets import Dataset, Image

from align.core.data import to_pil
from align.core.vision_pretrain import image_tokens, patch_targets
from align.eval.metrics import yes_no_counts_scores
from data_builders import toyworld as tw
from data_builders.progress import bar
from data_builders.toyworld_data import objects_from_json


@torch.no_grad()
def image_features(model, processor, split: Dataset, batch_size: int = 256) -> torch.Tensor:
    """[images, patches, hidden] projector outputs of `split`'s images, in float32 on the CPU."""
    plain = split.cast_column("image", Image(decode=False))["image"]
    param = next(model.parameters())
    out = []
    for start in bar(range(0, len(plain), batch_size), desc="image features", disable=len(plain) <= batch_size):
        batch = [to_pil(x, f"#{start + i}") for i, x in enumerate(plain[start : start + batch_size])]
        pixels = processor.image_processor(batch, return_tensors="pt")["pixel_values"]
        out.append(image_tokens(model, pixels.to(param.device, param.dtype)).float().cpu())
    return torch.cat(out)


def presence_labels(objects_json: list[str]) -> torch.Tensor:
    """[images, classes] 1.0 where the image holds the class (faint objects included)."""
    labels = torch.zeros(len(objects_json), len(tw.CLASSES))
    for i, text in enumerate(objects_json):
        for obj in objects_from_json(text):
            labels[i, tw.CLASSES.index(obj.name)] = 1.0
    return labels


def cell_labels(objects_json: list[str], patches_per_side: int) -> torch.Tensor:
    """[images, patches, classes] 1.0 where the patch's grid cell holds the class (faint objects included)."""
    cls, _ = patch_targets(objects_json, patches_per_side)
    return torch.nn.functional.one_hot(cls, len(tw.CLASSES) + 1)[..., :-1].float()


def fit_probe(features: torch.Tensor, labels: torch.Tensor, steps: int = 200, weight_decay: float = 1e-4, seed=0):
    """A logistic regression per class on standardised token features (full-batch L-BFGS), fitted to `labels`
    [images, patches, classes]; returns a scorer `features -> image logits [images, classes]` (max over tokens).
    Present and absent tokens are weighted to count equally per class."""
    torch.manual_seed(seed)
    flat, y = features.flatten(0, 1), labels.flatten(0, 1)
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    x = (flat - mean) / std
    linear = torch.nn.Linear(x.shape[1], y.shape[1])
    positives = y.mean(0).clamp(1e-4, 1 - 1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(1 - positives) / positives)
    opt = torch.optim.LBFGS(linear.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(linear(x), y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)

    def image_logits(feats: torch.Tensor) -> torch.Tensor:
        return linear((feats - mean) / std).detach().amax(dim=1)

    # the max over tokens adds false alarms, so each class's threshold is chosen on the training images
    threshold = best_thresholds(image_logits(features), labels.amax(dim=1))
    return lambda feats: image_logits(feats) - threshold


def best_thresholds(logits: torch.Tensor, labels: torch.Tensor, candidates: int = 64) -> torch.Tensor:
    """Per class, the threshold (among quantiles of its logits) with the best balanced accuracy on `labels`."""
    out = torch.zeros(logits.shape[1])
    for c in range(logits.shape[1]):
        grid = torch.quantile(logits[:, c], torch.linspace(0.01, 0.99, candidates))
        pos, neg = labels[:, c] > 0, labels[:, c] == 0
        scores = [
            ((logits[pos, c] > t).float().mean().nan_to_num(0) + (logits[neg, c] <= t).float().mean().nan_to_num(0))
            / 2
            for t in grid
        ]
        out[c] = grid[int(torch.stack(scores).argmax())]
    return out


def yes_no_scores(predicted_yes: list[bool], labels: list[str]) -> dict[str, float]:
    """POPE's scores (align/eval/metrics.py) of yes/no decisions, plus balanced accuracy (mean of the true-positive
    and true-negative rates), which does not move with the share of "yes" labels."""
    scores, c = yes_no_counts_scores(["yes" if p else "no" for p in predicted_yes], labels)
    tnr = c["tn"] / (c["tn"] + c["fp"]) if c["tn"] + c["fp"] else 0.0
    return {**scores, "balanced_accuracy": (scores["recall"] + tnr) / 2}
