"""Several LoRA adapters trained one after another, each merged before the next, written as ONE adapter over the
first base: what a served policy (vLLM) needs to sample an iterative loop's current policy without a restart.

Round k of an iterative loop trains a LoRA on W_k = W_0 + Σ_{i<k} ΔW_i and merges it: ΔW_i = s_i · B_i A_i, with
s_i = alpha / r (alpha / √r under rsLoRA). A LoRA's update does not depend on the weight below it, so the policy after
round k is W_0 + Σ_{i≤k} s_i B_i A_i, which is exactly one LoRA of rank Σ r_i over W_0:

    A = [A_0; A_1; ...]  (rows stacked),   B = [s_0 B_0, s_1 B_1, ...]  (columns side by side),   scaling 1

(lora_alpha = r = Σ r_i). It is exact, not a low-rank fit: served over the first base it gives the merged policy's
outputs up to float rounding. The server's --max-lora-rank must be at least Σ r_i.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
_LORA_A, _LORA_B = ".lora_A.weight", ".lora_B.weight"
# What a stacked adapter cannot carry: each of these makes an update that is not B·A on a linear layer.
_UNSTACKABLE = ("use_dora", "modules_to_save", "trainable_token_indices", "rank_pattern", "alpha_pattern")


def lora_scaling(config: dict) -> float:
    """s of PEFT's LoRA: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def check_stackable(config: dict, where: str) -> None:
    for key in _UNSTACKABLE:
        if config.get(key):
            raise ValueError(f"{where}: adapter has {key}={config[key]!r}; only plain LoRA adapters can be stacked")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{where}: adapter trains biases (bias={config['bias']!r}); only plain LoRA can be stacked")


def stack_lora(adapters: list[tuple[dict[str, torch.Tensor], dict]]) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, config) of the one adapter whose update is the sum of `adapters`' updates, each (weights, config)
    as PEFT saves them. Every adapter must put LoRA on the same modules."""
    if not adapters:
        raise ValueError("no adapters to stack")
    modules = _modules(adapters[0][0])
    for i, (weights, config) in enumerate(adapters):
        check_stackable(config, f"adapter {i}")
        if _modules(weights) != modules:
            raise ValueError(f"adapter {i} puts LoRA on other modules than adapter 0; they cannot be stacked")
    stacked = {}
    for module in sorted(modules):
        a = [weights[module + _LORA_A] for weights, _ in adapters]
        b = [(weights[module + _LORA_B].float() * lora_scaling(config)) for weights, config in adapters]
        stacked[module + _LORA_A] = torch.cat(a, dim=0).contiguous()
        stacked[module + _LORA_B] = torch.cat(b, dim=1).to(a[0].dtype).contiguous()
    rank = sum(config["r"] for _, config in adapters)
    config = {**adapters[0][1], "r": rank, "lora_alpha": rank, "use_rslora": False, "lora_dropout": 0.0}
    return stacked, config


def _modules(weights: dict[str, torch.Tensor]) -> set[str]:
    found = {key.removesuffix(_LORA_A) for key in weights if key.endswith(_LORA_A)}
    other = [k for k in weights if not k.endswith((_LORA_A, _LORA_B))]
    if other:
        raise ValueError(f"adapter holds weights beyond LoRA's A and B (e.g. {other[0]}); it cannot be stacked")
    if {key.removesuffix(_LORA_B) for key in weights if key.endswith(_LORA_B)} != found:
        raise ValueError("adapter has a lora_A without its lora_B (or the reverse)")
    return found


def write_stacked_adapter(adapter_dirs: list[str | Path], base: str, out: str | Path) -> tuple[Path, str]:
    """Stack the PEFT adapter folders (in training order) into `out` as one adapter over `base`. Returns (out, a
    content hash of the weights): a served name made from it changes exactly when the weights do."""
    adapters = []
    for folder in map(Path, adapter_dirs):
        weights, config = folder / ADAPTER_WEIGHTS, folder / ADAPTER_CONFIG
        if not (weights.is_file() and config.is_file()):
            raise FileNotFoundError(f"{folder}: no saved LoRA adapter ({ADAPTER_WEIGHTS} + {ADAPTER_CONFIG})")
        adapters.append((load_file(str(weights)), json.loads(config.read_text())))
    stacked, config = stack_lora(adapters)
    config["base_model_name_or_path"] = str(base)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = save(stacked)  # the file's bytes: written, and hashed without reading them back
    (out / ADAPTER_WEIGHTS).write_bytes(weights)
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return out, hashlib.sha256(weights).hexdigest()[:12]
