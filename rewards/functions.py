"""Reward functions with TRL's signature, `f(prompts, completions, completion_ids=None, **columns) -> list[float]`,
so that GRPOTrainer and RLOOTrainer call them as they are, and our PPO does too. `columns` are the dataset's
other columns, one value per completion (TRL repeats them per generation).

- `ToyWorldOracleReward`: from ToyWorld's ground truth (the `objects` column, JSON {scene, objects}): recall of the
  present object kinds minus the hallucinated object mentions.
- `RewardModelReward`: a saved (fact-augmented) reward model.
- LLaVA-RLHF's symbolic rewards (research/methods.md §3.3): `yes_no_reward` (VQA yes/no correctness),
  `choice_reward` (multiple-choice letter), `LengthPenalty` and `TruncationPenalty` (the missing-EOS penalty).

A completion is a string, or TRL's conversational form `[{"role": "assistant", "content": str}]`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from data_builders.reward_pairs import caption_quality


def completion_text(completion) -> str:
    """The text of a completion in either of TRL's forms (a string, or a list of messages: the last one's)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return _content_text(completion[-1].get("content", ""))
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


class ToyWorldOracleReward:
    """recall_weight · recall − hallucination_weight · (hallucinated object mentions), per completion, from the
    `objects` column. The recall term keeps "say nothing" from being the best answer."""

    __name__ = "toyworld_oracle"  # TRL logs each reward function under its __name__

    def __init__(self, hallucination_weight: float = 1.0, recall_weight: float = 1.0):
        self.hallucination_weight, self.recall_weight = hallucination_weight, recall_weight

    def __call__(self, prompts, completions, completion_ids=None, objects: Sequence[str] | None = None, **_):
        if objects is None:
            raise ValueError("toyworld_oracle needs the dataset's `objects` column (ToyWorld ground truth)")
        rewards = []
        for completion, truth in zip(completions, objects, strict=True):
            hallucinated, recall = caption_quality(completion_text(completion), json.loads(truth))
            rewards.append(self.recall_weight * recall - self.hallucination_weight * hallucinated)
        return rewards


def _first_word(text: str) -> str:
    match = re.match(r"\W*(\w+)", text.lower())
    return match.group(1) if match else ""


def yes_no_reward(
    prompts, completions, completion_ids=None, answer: Sequence[str] | None = None, score: float = 0.5, **_
) -> list[float]:
    """VQA yes/no correctness: +score when the completion's first word is the ground-truth answer, −score when it
    is the other one, 0 when it is neither. LLaVA-RLHF's code rewards only the ground-truth "no" cases (its "yes"
    branch is a TODO); this rewards both."""
    if answer is None:
        raise ValueError("yes_no_reward needs the dataset's `answer` column (yes or no)")
    rewards = []
    for completion, truth in zip(completions, answer, strict=True):
        said, truth = _first_word(completion_text(completion)), str(truth).strip().lower()
        if truth not in ("yes", "no"):
            raise ValueError(f"yes_no_reward: answer {truth!r} is neither yes nor no")
        rewards.append(score if said == truth else -score if said in ("yes", "no") else 0.0)
    return rewards


def choice_reward(
    prompts, completions, completion_ids=None, answer: Sequence[str] | None = None, score: float = 1.0, **_
) -> list[float]:
    """Multiple choice: +score when the completion starts with the correct letter ("B", "(B)", "B.") or says "the
    correct option is B"; 0 otherwise (LLaVA-RLHF's A-OKVQA reward)."""
    if answer is None:
        raise ValueError("choice_reward needs the dataset's `answer` column (the correct letter)")
    rewards = []
    for completion, letter in zip(completions, answer, strict=True):
        text, letter = completion_text(completion).strip(), str(letter).strip().upper()
        starts = re.match(rf"\(?{letter}\b", text) is not None
        says = re.search(rf"correct (?:option|answer|choice) is \(?{letter}\b", text, re.I) is not None
        rewards.append(score if starts or says else 0.0)
    return rewards


class LengthPenalty:
    """−scale · (completion tokens / max_tokens): LLaVA-RLHF's −10 · |y| / 896 (its per-example multiplier left
    at 1). Needs `completion_ids`."""

    __name__ = "length_penalty"

    def __init__(self, scale: float = 10.0, max_tokens: int = 896):
        self.scale, self.max_tokens = scale, max_tokens

    def __call__(self, prompts, completions, completion_ids=None, **_):
        if completion_ids is None:
            raise ValueError("length_penalty needs completion_ids")
        return [-self.scale * len(ids) / self.max_tokens for ids in completion_ids]


class TruncationPenalty:
    """`penalty` for a completion that ran to `max_tokens` without its end token (LLaVA-RLHF: −8), 0 otherwise."""

    __name__ = "truncation_penalty"

    def __init__(self, max_tokens: int, eos_token_id: int | None = None, penalty: float = -8.0):
        self.max_tokens, self.eos_token_id, self.penalty = max_tokens, eos_token_id, penalty

    def __call__(self, prompts, completions, completion_ids=None, **_):
        if completion_ids is None:
            raise ValueError("truncation_penalty needs completion_ids")
        rewards = []
        for ids in completion_ids:
            ids = list(ids)
            ended = self.eos_token_id is not None and self.eos_token_id in ids
            rewards.append(self.penalty if len(ids) >= self.max_tokens and not ended else 0.0)
        return rewards


def prompt_text(prompt) -> str:
    """The text of a prompt in either of TRL's forms (a string, or messages: the last user turn's text parts)."""
    if isinstance(prompt, str):
        return prompt
    user = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return _content_text(user[-1]["content"] if user else "")


def _content_text(content) -> str:
    """A message's text: a string, or the text parts of multimodal content (image parts left out)."""
    if isinstance(content, list):
        return " ".join(part["text"] for part in content if isinstance(part, dict) and part.get("text"))
    return str(content)


class RewardModelReward:
    """A saved reward model (rewards/model.py) as a reward function: each completion is scored with its image (the
    `image` column, or the first of `images`), its prompt's text and, for a fact-augmented model, the `facts`
    column (a list of strings, or its JSON)."""

    __name__ = "reward_model"

    def __init__(self, path: str, device: str | None = None, batch_size: int = 16):
        from rewards.model import load_reward_model  # torch and transformers, only when a model is used

        self.model, self.processor, self.config = load_reward_model(path, device)
        self.batch_size = batch_size

    def __call__(self, prompts, completions, completion_ids=None, image=None, images=None, facts=None, **_):
        from rewards.model import score

        if image is None and images is None:
            raise ValueError("reward_model needs the dataset's `image` (or `images`) column")
        pictures = list(image) if image is not None else [group[0] for group in images]
        if self.config["facts"] and facts is None:
            raise ValueError("this reward model reads facts: the dataset needs a `facts` column")
        parsed = [json.loads(f) if isinstance(f, str) else f for f in facts] if self.config["facts"] else None
        texts = [prompt_text(p) for p in prompts]
        answers = [completion_text(c) for c in completions]
        return score(self.model, self.processor, pictures, texts, answers, parsed, self.batch_size)


class FiniteRewards:
    """Wraps a reward function so that a NaN or infinite reward stops training with an error naming the sample
    (its `image_id` column where the dataset has one, else its position in the batch) and the function."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, prompts, completions, completion_ids=None, **columns):
        rewards = self.fn(prompts, completions, completion_ids=completion_ids, **columns)
        for i, reward in enumerate(rewards):
            if reward is not None and not math.isfinite(reward):
                sample = columns["image_id"][i] if "image_id" in columns else f"batch item {i}"
                text = completion_text(completions[i])[:80]
                raise ValueError(f"reward {self.__name__} gave {reward} for sample {sample} (completion {text!r})")
        return rewards
