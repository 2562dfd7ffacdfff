"""The VLM reward model of LLaVA-RLHF's Fact-RLHF (research/methods.md §3.2): a LLaVA-type backbone (LoRA or full)
and a scalar head on the hidden state of each sequence's last real token, trained on pairs with
−log σ(r_chosen − r_rejected) + c·|mean(r_chosen + r_rejected)|.

Fact augmentation puts what is known about the image (reference captions, object lists, answer options) into
the prompt the reward model reads, in shuffled order, so that it can judge a response against them instead of
against its own picture of the image. `reward_prompt(prompt, None)` is the plain reward model's input.

A saved reward model is a folder: the backbone (a PEFT adapter over `base_model`, or a whole model), its
processor, `reward_head.safetensors` and `reward_config.json`. `load_reward_model` restores it on its own.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

FACTS_HEADER = "What is known about this image (a good answer says nothing these facts do not support):"
HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"
FORMAT_VERSION = 1


def reward_prompt(prompt: str, facts: Sequence[str] | None, rng: random.Random | None = None) -> str:
    """The user turn the reward model reads: the facts, one per line in shuffled order, then the prompt.

    LLaVA-RLHF shuffles its captions so that the model cannot learn their order. No facts (None or empty) gives
    the prompt unchanged: the plain reward model."""
    if not facts:
        return prompt
    lines = [str(f).strip() for f in facts if str(f).strip()]
    (rng or random.Random(0)).shuffle(lines)
    return FACTS_HEADER + "\n" + "\n".join(f"  - {line}" for line in lines) + "\n\n" + prompt


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, center_coef: float = 1e-3) -> torch.Tensor:
    """Mean of −log σ(r_c − r_r) over the pairs, plus center_coef · |mean(r_c + r_r)|: LLaVA-RLHF's term that
    keeps the rewards near zero, where PPO's value head starts from them."""
    margin = -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()
    return margin + center_coef * (r_chosen.float() + r_rejected.float()).mean().abs()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each row's last attended token, whichever side the padding is on."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.bool() * (positions + 1)).argmax(1)


class RewardModel(torch.nn.Module):
    """backbone (a LLaVA-type model, plain or PEFT-wrapped) + Linear(hidden, 1) on the last real token."""

    def __init__(self, backbone, head: torch.nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        hidden = self.config.text_config.hidden_size
        self.head = head if head is not None else torch.nn.Linear(hidden, 1)
        if head is None:  # a small start, so the first rewards are near 0 whatever the hidden states' scale
            torch.nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
            torch.nn.init.zeros_(self.head.bias)
        self.head.to(next(backbone.parameters()).dtype)

    @property
    def config(self):
        return self._plain().config

    def _plain(self):
        return self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone

    def hidden_states(self, input_ids, attention_mask, pixel_values) -> torch.Tensor:
        """The LLaVA body's final hidden states [B, L, H] (vision tower, projector, LM; no vocabulary head). PPO's
        value model reads the head off every response position of these."""
        out = self._plain().model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, use_cache=False
        )
        return out.last_hidden_state

    def forward(self, input_ids, attention_mask, pixel_values, **_) -> torch.Tensor:
        hidden = self.hidden_states(input_ids, attention_mask, pixel_values)
        last = last_token_index(attention_mask)
        return self.head(hidden[torch.arange(len(last), device=last.device), last]).squeeze(-1).float()


def save_reward_model(model: RewardModel, processor, out_dir: str | Path, base_model: str | None, facts: bool) -> Path:
    """Write the backbone (adapter or whole model), processor, head and config to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter = isinstance(model.backbone, PeftModel)
    if adapter and not base_model:
        raise ValueError("a LoRA reward model needs base_model: the folder or hub id its adapter applies to")
    model.backbone.save_pretrained(out)
    processor.save_pretrained(out)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}, out / HEAD_FILE)
    config = {"format": FORMAT_VERSION, "adapter": adapter, "base_model": base_model if adapter else None,
              "facts": bool(facts), "hidden_size": model.head.in_features}  # fmt: skip
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def load_reward_model(
    path: str | Path, device: str | None = None, trust_remote_code: bool = False, trainable: bool = False
):
    """`(reward_model, processor, config)` from a folder `save_reward_model` wrote, in eval mode; frozen, or with
    its adapter (or whole backbone) and head trainable (`trainable`: PPO's value model starts from a reward model)."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a saved reward model: it has no {CONFIG_FILE}")
    config = json.loads((path / CONFIG_FILE).read_text())
    if config.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path / CONFIG_FILE}: format {config.get('format')!r}, this version reads {FORMAT_VERSION}")
    source = config["base_model"] if config["adapter"] else str(path)
    backbone = AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=trust_remote_code)
    if config["adapter"]:
        backbone = PeftModel.from_pretrained(backbone, str(path), is_trainable=trainable)
    head = torch.nn.Linear(config["hidden_size"], 1)
    head.load_state_dict(load_file(path / HEAD_FILE))
    model = RewardModel(backbone, head).eval()
    if not config["adapter"]:
        model.backbone.requires_grad_(trainable)
    model.head.requires_grad_(trainable)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")), processor, config


def reward_inputs(processor, images, prompts: Sequence[str], responses: Sequence[str]) -> dict:
    """A right-padded batch the reward model scores: per row the chat-formatted user turn (one image placeholder,
    then `prompts[i]`, already holding its facts: `reward_prompt`) and the answer with its end token, tokenised as
    the project's training encoding does (align/core/data.py `encode_row`; a test keeps the two equal)."""
    tokenizer = processor.tokenizer
    rows = []
    for image, prompt, response in zip(images, prompts, responses, strict=True):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = list(processor(images=[image], text=[text], return_tensors=None)["input_ids"][0])
        rows.append(prompt_ids + tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long),
        "pixel_values": processor.image_processor(list(images), return_tensors="pt")["pixel_values"],
    }


@torch.no_grad()
def score(model: RewardModel, processor, images, prompts, responses, facts=None, batch_size: int = 16) -> list[float]:
    """Rewards of (image, prompt, response[, facts]) rows: `facts[i]` (a list of strings, or None) goes into row
    i's prompt through `reward_prompt`, shuffled by a generator seeded with the row's prompt, so a row scores the
    same on every call. Give facts to a reward model trained with them (its `reward_config.json` says)."""
    facts = facts if facts is not None else [None] * len(prompts)
    texts = [reward_prompt(p, f, random.Random(p)) for p, f in zip(prompts, facts, strict=True)]
    device, out = next(model.parameters()).device, []
    for start in range(0, len(texts), batch_size):
        end = start + batch_size
        batch = reward_inputs(processor, images[start:end], texts[start:end], responses[start:end])
        out += model(**{k: v.to(device) for k, v in batch.items()}).tolist()
    return out
