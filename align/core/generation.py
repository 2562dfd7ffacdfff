"""Batched generation with images for LLaVA-type models (left padding, greedy or sampling), and the length of the
prompt it feeds the model."""

from __future__ import annotations

import io

import torch
from PIL import Image

from align.config.sections import GenerationConfig
from align.core.data import to_pil, user_prompt
from align.core.switch import switched_prompt
from data_builders.progress import bar


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
    return [text for text, _ in generate_with_finish(model, processor, images, prompts, cfg, desc, max_new_tokens)]


@torch.no_grad()
def generate_with_finish(
    model,
    processor,
    images: list,
    prompts: list[str],
    cfg: GenerationConfig,
    desc: str = "generate",
    max_new_tokens: int | None = None,
) -> list[tuple[str, bool]]:
    """(reply, finished) per (image, prompt): finished is False when the reply was cut at max_new_tokens before its
    end token (an OpenAI-compatible server's finish_reason "length")."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    device = next(model.parameters()).device
    sampling = {"do_sample": cfg.do_sample}
    if cfg.do_sample:
        sampling.update(temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p)
    tok = processor.tokenizer
    outputs: list[tuple[str, bool]] = []
    starts = range(0, len(prompts), cfg.batch_size)
    for start in bar(starts, desc=desc, disable=len(starts) < 2):
        batch_images = [to_pil(im, f"#{start + i}") for i, im in enumerate(images[start : start + cfg.batch_size])]
        # a control-token switch (align/core/switch.py) puts its token for the current ε before each prompt
        texts = [user_prompt(processor, switched_prompt(model, p)) for p in prompts[start : start + cfg.batch_size]]
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
        finished = (new_tokens == tok.eos_token_id).any(1).tolist()
        texts = [t.strip() for t in tok.batch_decode(new_tokens, skip_special_tokens=True)]
        outputs += list(zip(texts, finished, strict=True))
    return outputs


def prompt_length(processor, image, prompt: str, image_tokens: dict | None = None) -> int:
    """Tokens `generate` feeds the model for (image, prompt), the image's expanded tokens included. The text is
    tokenized alone and the image tokens are counted once per image size (the only thing they depend on; memoised
    in `image_tokens` when a dict is given), so a long list of prompts is measured without preparing its images."""
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as im:  # reads the header only
            size = im.size
    else:
        size = to_pil(image, "prompt").size
    cache = {} if image_tokens is None else image_tokens
    if size not in cache:
        enc = processor(images=[Image.new("RGB", size)], text=[user_prompt(processor, "")], return_tensors=None)
        image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        cache[size] = list(enc["input_ids"][0]).count(image_id)
    text = processor.tokenizer(user_prompt(processor, prompt))["input_ids"]
    return len(text) - 1 + cache[size]  # the one <image> placeholder becomes the image's tokens
