"""The policy as a rollout engine: sampling its own responses (OPA-DPO step 1, RLAIF-V step 1).

`HFRolloutEngine` runs `generate` in this process. An engine for an OpenAI-compatible server (vLLM in its own
environment, see stack.md) only has to implement the same `generate(images, prompts, seed)`.
"""

from __future__ import annotations

import torch

from align.config.sections import GenerationConfig
from align.core.generation import generate, prompt_length
from align.core.models import load_policy
from data_builders.configs import RolloutSettings


class HFRolloutEngine:
    """Samples with transformers `generate` from a saved policy (full model or LoRA adapter directory).
    `max_prompt_tokens`: the longest prompt it takes (`rollout.max_prompt_tokens`, or the policy's
    max_position_embeddings less max_new_tokens); builds skip longer ones (data_builders/rollout.py)."""

    def __init__(self, policy: str, settings: RolloutSettings):
        self.name = f"hf:{policy}"
        self.model, self.processor = load_policy(policy)
        self.settings = settings
        self.max_prompt_tokens = settings.max_prompt_tokens or context_room(self.model.config, settings)
        self._image_tokens: dict = {}

    def prompt_tokens(self, image: bytes, prompt: str) -> int:
        return prompt_length(self.processor, image, prompt, self._image_tokens)

    def generate(self, images: list[bytes], prompts: list[str], seed: int) -> list[str]:
        s = self.settings
        cfg = GenerationConfig(
            max_new_tokens=s.max_new_tokens,
            do_sample=True,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            batch_size=s.batch_size,
        )
        torch.manual_seed(seed)  # per batch, so a resumed build samples exactly what a full one would have
        return generate(self.model, self.processor, images, prompts, cfg, desc="sample")


def context_room(config, settings: RolloutSettings) -> int | None:
    """Prompt tokens that leave room for max_new_tokens in the text model's positions (None: it names none)."""
    positions = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
    return None if positions is None else max(positions - settings.max_new_tokens, 1)
