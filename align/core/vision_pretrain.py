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

With `align_words` (the default since issue 18) the class label is read through the LM's own embeddings of the class
words (`WordAlignedClassHead`), so each image token starts SFT pointing at the word for what its cell shows. On
ToyWorld v2b (3 seeds) misnamed present objects fell from 30% to 12% of hallucinated mentions and a linear probe on
the tokens decides faint objects at 92% (was 81%); on v2c misnamings are 4% and the probe reaches 94% on faint
objects (README, "The base policy").
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


def class_word_ids(tokenizer) -> list[int]:
    """The LM token of each class's first word, then of "nothing" (what the QA answers for an empty cell)."""
    words = [name.split()[0] for name in tw.CLASSES] + ["nothing"]
    ids = tokenizer.convert_tokens_to_ids(words)
    if tokenizer.unk_token_id in ids:
        raise ValueError(f"word-aligned vision pretraining needs every class word in the vocabulary: {words}")
    return ids


class WordAlignedClassHead(torch.nn.Module):
    """Class logits as the cosine between an image token and the LM's input embedding of the class word, times a
    learned scale (CLIP's logit scale). Training it pulls each image token towards the word the LM would write for
    its cell, LLaVA's stage-1 feature alignment in small: naming or finding an object in the image becomes matching
    a word against look-alike tokens rather than decoding an arbitrary feature code."""

    def __init__(self, embeddings: torch.nn.Embedding, word_ids: list[int]):
        super().__init__()
        self.embeddings = embeddings  # shared with the LM: its class-word rows move too
        self.register_buffer("word_ids", torch.tensor(word_ids), persistent=False)
        self.log_scale = torch.nn.Parameter(torch.tensor(2.3))  # e^2.3 = 10

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        words = torch.nn.functional.normalize(self.embeddings.weight[self.word_ids], dim=-1)
        return self.log_scale.exp() * torch.nn.functional.normalize(tokens, dim=-1) @ words.T


class PatchHeads(torch.nn.Module):
    """Probes on each image token: class (+ empty), colour (+ none) and the token's own patch index. The class
    probe is linear, or tied to the LM's word embeddings (`WordAlignedClassHead`)."""

    def __init__(self, hidden: int, n_patches: int, class_head: torch.nn.Module | None = None):
        super().__init__()
        self.cls = class_head if class_head is not None else torch.nn.Linear(hidden, len(tw.CLASSES) + 1)
        self.col = torch.nn.Linear(hidden, len(tw.COLORS) + 1)
        self.pos = torch.nn.Linear(hidden, n_patches)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.cls(tokens), self.col(tokens), self.pos(tokens)


def image_tokens(model, pixels: torch.Tensor) -> torch.Tensor:
    """The projected patch tokens the LM reads (LLaVA's "default" strategy drops CLS; the last layer here)."""
    feats = vision_tower(model)(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
    return multimodal_projector(model)(feats)


def pretrain_vision(
    model,
    processor,
    train: Dataset,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    align_words: bool = False,
) -> dict:
    """Train `model`'s vision tower and projector on per-patch labels; returns final train accuracies. With
    `align_words` the class labels are read through the LM's class-word embeddings, which train too."""
    side = vision_tower(model).config.image_size // vision_tower(model).config.patch_size
    plain = train.cast_column("image", Image(decode=False))
    pixels = processor.image_processor(
        [to_pil(x, f"#{i}") for i, x in enumerate(plain["image"])], return_tensors="pt"
    )["pixel_values"]
    cls, col = patch_targets(plain["objects"], side)
    class_head = None
    if align_words:
        class_head = WordAlignedClassHead(model.get_input_embeddings(), class_word_ids(processor.tokenizer))
    heads = PatchHeads(model.config.text_config.hidden_size, side * side, class_head)
    trained = [*vision_tower(model).parameters(), *multimodal_projector(model).parameters()]
    # the aligned head's parameters include the LM's input embeddings, which are in neither list above
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
