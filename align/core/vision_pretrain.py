"""Stage 0 for the tiny ToyWorld LLaVA: pretrain its vision tower and projector, as LLaVA starts from a
pretrained CLIP and a feature-alignment-trained projector.

Measured on the tiny model (see README, "How the base policy was made to work"):
- a tower trained from scratch only through the language-model loss did not learn glyph identity in minutes;
- a pretrained, frozen tower still failed on 2 of 3 seeds: during SFT the projector, at the LM's learning rate,
  learned colour first and squeezed class identity out of the image tokens (class share of the projected
  variance fell from ~60% to 13% on a failed seed), after which the LM never learned to name objects;
- the tower's features did not keep the patch position, so the LM could not find the cell a question named.

So stage 0 trains tower + projector together, in seconds, with dense ground truth read from the projected
image tokens (the exact vectors the LM sees): every token predicts the class (or "empty") and colour of the
object in its grid cell, and its own patch index. SFT then freezes the tower and trains the projector at a
lower learning rate (`optim.projector_lr`, LLaVA's `mm_projector_lr`).
"""

from __future__ import annotations

import torch
from datasets import Dataset, Image

from align.core.data import to_pil
from align.core.models import multimodal_projector, vision_tower
from data_builders import toyworld as tw
from data_builders.progress import bar
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


class PatchHeads(torch.nn.Module):
    """Linear probes on each image token: class (+ empty), colour (+ none) and the token's own patch index."""

    def __init__(self, hidden: int, n_patches: int):
        super().__init__()
        self.cls = torch.nn.Linear(hidden, len(tw.CLASSES) + 1)
        self.col = torch.nn.Linear(hidden, len(tw.COLORS) + 1)
        self.pos = torch.nn.Linear(hidden, n_patches)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.cls(tokens), self.col(tokens), self.pos(tokens)


def image_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """The projected patch tokens the LM reads (LLaVA's "default" strategy drops CLS; the last layer here)."""
    feats = vision_tower(model)(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
    return multimodal_projector(model)(feats)


def pretrain_vision(
    model, processor, train: Dataset, steps: int, lr: float = 1e-3, batch_size: int = 128, seed: int = 0
) -> dict:
    """Train `model`'s vision tower and projector on per-patch labels; returns final train accuracies."""
    side = vision_tower(model).config.image_size // vision_tower(model).config.patch_size
    plain = train.cast_column("image", Image(decode=False))
    pixels = processor.image_processor(
        [to_pil(x, f"#{i}") for i, x in enumerate(plain["image"])], return_tensors="pt"
    )["pixel_values"]
    cls, col = patch_targets(plain["objects"], side)
    heads = PatchHeads(model.config.text_config.hidden_size, side * side)
    trained = [*vision_tower(model).parameters(), *multimodal_projector(model).parameters()]
    opt = torch.optim.AdamW(trained + list(heads.parameters()), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    ce = torch.nn.functional.cross_entropy
    model.train()
    for _ in bar(range(steps), desc="vision pretrain"):
        idx = torch.randint(len(pixels), (min(batch_size, len(pixels)),), generator=gen)
        cls_logits, col_logits, pos_logits = heads(image_tokens(model, pixels[idx]))
        where = torch.arange(side * side).expand(len(idx), -1)
        loss = ce(cls_logits.flatten(0, 1), cls[idx].flatten()) + ce(col_logits.flatten(0, 1), col[idx].flatten())
        loss = loss + ce(pos_logits.flatten(0, 1), where.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        n = min(512, len(pixels))
        cls_logits, col_logits, pos_logits = heads(image_tokens(model, pixels[:n]))
        return {
            "steps": steps,
            "loss": float(loss),
            "class_acc": float((cls_logits.argmax(-1) == cls[:n]).float().mean()),
            "color_acc": float((col_logits.argmax(-1) == col[:n]).float().mean()),
            "position_acc": float((pos_logits.argmax(-1) == torch.arange(side * side)).float().mean()),
        }
