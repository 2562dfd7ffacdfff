"""The policy as a rollout engine: sampling its own responses (OPA-DPO step 1, RLAIF-V step 1).

`HFRolloutEngine` runs `generate` in this process. An engine for an OpenAI-compatible server (vLLM in its own
environment, see stack.md) only has to implement the same `generate(images, prompts, seed)`.
"""

from __future__ import annotations

import torch

from align.config.sections import GenerationConfig
from align.core.generation import generate
from align.core.models import load_policy
from data_builders.configs import RolloutSettings


class HFRolloutEngine:
    """Samples with transformers `generate` from a saved policy (full model or LoRA adapter directory)."""

    def __init__(self, policy: str, settings: RolloutSettings):
        self.name = f"hf:{policy}"
        self.model, self.processor = load_policy(policy)
        self.settings = settings

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


