"""The policy as a rollout engine: sampling its own responses (OPA-DPO step 1, RLAIF-V step 1, PPO's rollouts).

`HFRolloutEngine` runs `generate` in this process on a saved policy, `PolicyRolloutEngine` on a live one (the
policy PPO trains). An engine for an OpenAI-compatible server (vLLM in its own environment, see stack.md) only has
to implement the same `generate(images, prompts, seed)`, and `sample` (with the finish reason) for PPO.
"""

from __future__ import annotations

import torch

from align.config.sections import GenerationConfig
from align.core.generation import generate_with_finish, prompt_length
from align.core.models import load_policy
from data_builders.configs import RolloutSettings


class PolicyRolloutEngine:
    """Samples from a policy held in this process, whose weights may change between calls (PPO's rollouts)."""

    def __init__(self, model, processor, settings: RolloutSettings, name: str = "hf:live"):
        self.name, self.model, self.processor, self.settings = name, model, processor, settings
        self.max_prompt_tokens = settings.max_prompt_tokens or context_room(model.config, settings)
        self._image_tokens: dict = {}

    def prompt_tokens(self, image: bytes, prompt: str) -> int:
        return prompt_length(self.processor, image, prompt, self._image_tokens)

    def generate(self, images: list, prompts: list[str], seed: int) -> list[str]:
        return [text for text, _ in self.sample(images, prompts, seed)]

    def sample(self, images: list, prompts: list[str], seed: int) -> list[tuple[str, bool]]:
        """(reply, finished) per prompt; finished is False for a reply cut at max_new_tokens."""
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
        return generate_with_finish(self.model, self.processor, images, prompts, cfg, desc="sample")


class HFRolloutEngine(PolicyRolloutEngine):
    """Samples with transformers `generate` from a saved policy (full model or LoRA adapter directory).
    `max_prompt_tokens`: the longest prompt it takes (`rollout.max_prompt_tokens`, or the policy's
    max_position_embeddings less max_new_tokens); builds skip longer ones (data_builders/rollout.py)."""

    def __init__(self, policy: str, settings: RolloutSettings):
        model, processor = load_policy(policy)
        super().__init__(model, processor, settings, name=f"hf:{policy}")


def context_room(config, settings: RolloutSettings) -> int | None:
    """Prompt tokens that leave room for max_new_tokens in the text model's positions (None: it names none)."""
    positions = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
    return None if positions is None else max(positions - settings.max_new_tokens, 1)
