"""Stage 0 for the tiny ToyWorld LLaVA: pretrain its vision tower, as LLaVA starts from a pretrained CLIP.

A vision tower trained from scratch only through the language-model loss receives one weak gradient per
object word and did not learn glyph identity in minutes (measured: object accuracy at chance after 1,500
steps; a higher vision learning rate made it diverge). Real LLaVA never faces this: its CLIP is pretrained and
kept frozen. Here the tower is pretrained in seconds with dense ground truth: every patch predicts the class
(or "empty") and the colour of the object in its grid cell. SFT then freezes it by default, like LLaVA-1.5.
"""

from __future__ import annotations

import torch
from datasets import Dataset, Image
from tqdm.auto import trange

from align.data import to_pil
from align.models import vision_tower
from data_builders import toyworld as tw
from data_builders.toyworld_data import objects_from_json


def patch_targets(objects_json: list[str], patches_per_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, colour) index per patch, row-major; the last index of each means "nothing here"."""
    colors = list(tw.COLORS)
    cls = torch.full((len(objects_json), tw.GRID * tw.GRID), len(tw.CLASSES))
    col = torch.full((len(objects_json), tw.GRID * tw.GRID), len(colors))
    for i, text in enumerate(objects_json):
        for obj in objects_from_json(text):
            for cell in obj.cells:
                cls[i, cell] = tw.CLASSES.index(obj.name)
                col[i, cell] = colors.index(obj.color)
    # map every patch to the grid cell that holds its centre
    centres = (torch.arange(patches_per_side) + 0.5) * (tw.IMAGE_SIZE / patches_per_side)
    cell_of = (centres // tw.CELL).long().clamp(max=tw.GRID - 1)
    index = (cell_of[:, None] * tw.GRID + cell_of[None, :]).reshape(-1)
    return cls[:, index], col[:, index]


def pretrain_vision_tower(
    model, processor, train: Dataset, steps: int, lr: float = 1e-3, batch_size: int = 128, seed: int = 0
) -> dict:
    """Train `model`'s vision tower on per-patch (class, colour) labels; returns final train accuracies."""
    tower = vision_tower(model)
    hidden = tower.config.hidden_size
    side = tower.config.image_size // tower.config.patch_size
    plain = train.cast_column("image", Image(decode=False))
    pixels = processor.image_processor(
        [to_pil(x, f"#{i}") for i, x in enumerate(plain["image"])], return_tensors="pt"
    )["pixel_values"]
    cls, col = patch_targets(plain["objects"], side)
    cls_head = torch.nn.Linear(hidden, len(tw.CLASSES) + 1)
    col_head = torch.nn.Linear(hidden, len(tw.COLORS) + 1)
    params = list(tower.parameters()) + list(cls_head.parameters()) + list(col_head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    tower.train()
    for _ in trange(steps, desc="vision pretrain", leave=False):
        idx = torch.randint(len(pixels), (min(batch_size, len(pixels)),), generator=gen)
        feats = tower(pixels[idx], output_hidden_states=True).hidden_states[-1][:, 1:]  # the features LLaVA reads
        loss = torch.nn.functional.cross_entropy(
            cls_head(feats).flatten(0, 1), cls[idx].flatten()
        ) + torch.nn.functional.cross_entropy(col_head(feats).flatten(0, 1), col[idx].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        n = min(512, len(pixels))
        feats = tower(pixels[:n], output_hidden_states=True).hidden_states[-1][:, 1:]
        return {
            "steps": steps,
            "loss": float(loss),
            "class_acc": float((cls_head(feats).argmax(-1) == cls[:n]).float().mean()),
            "color_acc": float((col_head(feats).argmax(-1) == col[:n]).float().mean()),
        }
