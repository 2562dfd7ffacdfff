"""Batched generation with images for LLaVA-type models (left padding, greedy or sampling)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from align.config.sections import GenerationConfig
from align.core.data import to_pil, user_prompt


@torch.no_grad()
def generate(
    model,
    processor,
    images: list,
    prompts: list[str],
    cfg: GenerationConfig,
    desc: str = "generate",
    max_new_tokens: int | None = None,
) -> list[str]:
    """One decoded reply per (image, prompt). Images may be PIL images or `{"bytes": ...}` dicts."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    device = next(model.parameters()).device
    sampling = {"do_sample": cfg.do_sample}
    if cfg.do_sample:
        sampling.update(temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p)
    tok = processor.tokenizer
    outputs: list[str] = []
    starts = range(0, len(prompts), cfg.batch_size)
    for start in tqdm(starts, desc=desc, leave=False, disable=len(starts) < 2):
        batch_images = [to_pil(im, f"#{start + i}") for i, im in enumerate(images[start : start + cfg.batch_size])]
        texts = [user_prompt(processor, p) for p in prompts[start : start + cfg.batch_size]]
        enc = processor(images=batch_images, text=texts, padding=True, padding_side="left", return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens or cfg.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **sampling,
        )
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        outputs += [t.strip() for t in tok.batch_decode(new_tokens, skip_special_tokens=True)]
    return outputs
