"""HallE-Switch (research/methods.md §4): a switch value ε that moves a LLaVA-type model between describing only what
it sees (ε = −1) and adding what its language prior suggests (ε = +1).

Two forms, one interface:
    controller      h ← h + ε·W·h on the final hidden state (after the last norm, what `lm_head` reads), W a
                    zero-initialised d×d matrix; ε per batch row in training, any value in [−1, 1] at inference
    control tokens  `<grounded>` / `<imagine>` before the prompt, new embedding rows trained; ε < 0 picks the first,
                    ε > 0 the second, ε = 0 neither

    switch = attach_switch(model)                    # W = 0: the model is unchanged at every ε
    with switch_value(model, -1.0): generate(...)    # one ε for a generation
    switch.epsilon = torch.tensor([-1., 1.])         # one ε per batch row (training)

The switch is a submodule of the (PEFT-unwrapped) model, `halle_switch`, so an optimizer, a device move and DDP see W;
it is saved apart from the model (`save_switch`: switch.safetensors + switch_config.json naming the base), and
`align.core.models.load_policy` restores it. The hook sits on the final norm rather than on `lm_head` because the
project's log-prob code applies the head to gathered [M, H] rows, where a per-row ε could not be told apart.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file, save_file

from align.core.run_dir import SWITCH_CONFIG

SWITCH_FILE = "switch.safetensors"
CONTROL_TOKENS = {"grounded": "<grounded>", "imagine": "<imagine>"}


class HalleSwitch(torch.nn.Module):
    """The controller: h + ε·W·h. `epsilon` is a number (one ε for the batch) or a [B] tensor (one per row)."""

    kind = "controller"

    def __init__(self, hidden_size: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(hidden_size, hidden_size, dtype=dtype))
        self.epsilon: float | torch.Tensor = 0.0
        self.handle = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        eps = self.epsilon
        if not torch.is_tensor(eps):
            return hidden if eps == 0 else hidden + eps * F.linear(hidden, self.weight.to(hidden.dtype))
        if eps.dim() != 1 or len(eps) != len(hidden):
            raise ValueError(f"epsilon has shape {tuple(eps.shape)}; the batch has {len(hidden)} rows")
        scale = eps.to(hidden.device, hidden.dtype).view(-1, *([1] * (hidden.dim() - 1)))
        return hidden + scale * F.linear(hidden, self.weight.to(hidden.dtype))

    def config(self) -> dict:
        return {"kind": self.kind, "hidden_size": self.weight.shape[0]}


class ControlTokens(torch.nn.Module):
    """The control-token form: no weights of its own (the token embeddings live in the model); it only decides which
    token goes before a prompt for the current ε."""

    kind = "control_tokens"

    def __init__(self, grounded: str = CONTROL_TOKENS["grounded"], imagine: str = CONTROL_TOKENS["imagine"]):
        super().__init__()
        self.grounded, self.imagine = grounded, imagine
        self.epsilon: float = 0.0

    def prompt(self, text: str, epsilon: float | None = None) -> str:
        eps = self.epsilon if epsilon is None else epsilon
        return text if eps == 0 else f"{self.grounded if eps < 0 else self.imagine} {text}"

    def config(self) -> dict:
        return {"kind": self.kind, "tokens": {"grounded": self.grounded, "imagine": self.imagine}}


def _base(model) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if isinstance(model, PeftModel) else model


def final_norm(model) -> torch.nn.Module:
    """The text model's last norm, whose output is what the output head reads."""
    base = _base(model)
    decoder = getattr(getattr(base, "model", None), "language_model", None) or base.get_decoder()
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise TypeError(f"{type(base).__name__}: no final norm found on its text model; the HallE switch needs one")
    return norm


def find_switch(model) -> HalleSwitch | ControlTokens | None:
    return getattr(_base(model), "halle_switch", None)


def attach_switch(model, switch: HalleSwitch | ControlTokens | None = None) -> HalleSwitch | ControlTokens:
    """Attach `switch` (default: a zero controller of the model's width, in its dtype and device) to `model`."""
    if find_switch(model) is not None:
        raise ValueError("the model already has a HallE switch")
    base = _base(model)
    if switch is None:
        width = base.config.get_text_config().hidden_size
        head = base.get_output_embeddings().weight
        switch = HalleSwitch(width, torch.float32).to(head.device)
    base.add_module("halle_switch", switch)
    if isinstance(switch, HalleSwitch):
        switch.handle = final_norm(model).register_forward_hook(lambda _module, _args, out: switch(out))
    return switch


def _switch_for(model, epsilon: float | torch.Tensor) -> HalleSwitch | ControlTokens | None:
    """The model's switch, or None for a model without one asked for ε = 0 (the model itself); any other ε on a
    model without a switch is an error."""
    switch = find_switch(model)
    if switch is None and (torch.is_tensor(epsilon) or epsilon != 0):
        raise ValueError(f"switch {epsilon}: the model has no HallE switch (train one with recipe: halle_switch)")
    return switch


@contextlib.contextmanager
def switch_value(model, epsilon: float | torch.Tensor | None) -> Iterator[None]:
    """Run the block at switch value `epsilon` (None: leave it as it is), then restore the previous one."""
    switch = None if epsilon is None else _switch_for(model, epsilon)
    if switch is None:
        yield
        return
    before = switch.epsilon
    switch.epsilon = epsilon if torch.is_tensor(epsilon) else float(epsilon)
    try:
        yield
    finally:
        switch.epsilon = before


def set_switch(model, epsilon: float) -> None:
    """Set the model's switch value for what follows (`switch_value` for a block)."""
    switch = _switch_for(model, epsilon)
    if not -1.0 <= epsilon <= 1.0:
        raise ValueError(f"switch must be in [-1, 1], got {epsilon}")
    if switch is not None:
        switch.epsilon = float(epsilon)


def switched_prompt(model, prompt: str) -> str:
    """The prompt as the model's switch wants it: a control token before it, or as it is."""
    switch = find_switch(model)
    return switch.prompt(prompt) if isinstance(switch, ControlTokens) else prompt


def add_control_tokens(model, processor, switch: ControlTokens) -> list[int]:
    """Add the switch's tokens to the tokenizer (as special tokens, so decoding drops them) and grow the embedding
    and output rows to match; returns their ids (the rows to train)."""
    tok = processor.tokenizer
    tok.add_tokens([switch.grounded, switch.imagine], special_tokens=True)
    if len(tok) > _base(model).get_input_embeddings().num_embeddings:
        _base(model).resize_token_embeddings(len(tok))
    return tok.convert_tokens_to_ids([switch.grounded, switch.imagine])


def save_switch(model, out_dir: str | Path, base_model: str) -> Path:
    """switch_config.json (kind, width or tokens, the base model it sits on) and, for the controller, W."""
    switch = find_switch(model)
    if switch is None:
        raise ValueError("the model has no HallE switch to save")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(switch, HalleSwitch):
        save_file({"weight": switch.weight.detach().float().cpu().contiguous()}, str(out / SWITCH_FILE))
    (out / SWITCH_CONFIG).write_text(json.dumps({**switch.config(), "base_model": base_model}, indent=2))
    return out


def read_switch_config(path: str | Path) -> dict | None:
    f = Path(path) / SWITCH_CONFIG
    return json.loads(f.read_text()) if f.is_file() else None


def restore_switch(model, path: str | Path) -> HalleSwitch | ControlTokens:
    """Attach the switch saved in `path` to `model` (built from its base), W loaded."""
    cfg = read_switch_config(path)
    if cfg is None:
        raise FileNotFoundError(f"{path}: no {SWITCH_CONFIG}")
    if cfg["kind"] == ControlTokens.kind:
        return attach_switch(model, ControlTokens(**cfg["tokens"]))
    if cfg["kind"] != HalleSwitch.kind:
        raise ValueError(f"{path}/{SWITCH_CONFIG}: unknown kind {cfg['kind']!r}")
    switch = attach_switch(model)
    load_switch_weights(model, path)
    return switch


def load_switch_weights(model, path: str | Path) -> None:
    switch = find_switch(model)
    if isinstance(switch, HalleSwitch):
        weight = load_file(str(Path(path) / SWITCH_FILE))["weight"]
        if weight.shape != switch.weight.shape:
            raise ValueError(
                f"{path}: W is {tuple(weight.shape)}, the model's width needs {tuple(switch.weight.shape)}"
            )
        with torch.no_grad():
            switch.weight.copy_(weight)
