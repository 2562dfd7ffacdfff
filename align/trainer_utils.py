"""Trainer pieces every recipe shares."""

from __future__ import annotations

import os

from peft import PeftModel
from transformers import Trainer
from transformers.utils import SAFE_WEIGHTS_NAME


class ResumableTrainer(Trainer):
    """`Trainer` whose resume works for LLaVA full fine-tunes.

    transformers 5.x saves LLaVA weights under its legacy key names (`language_model.model.*`) and maps them
    back only inside `from_pretrained`; `Trainer._load_from_checkpoint` loads the raw state dict instead, so on
    resume every key misses and training silently restarts from the initial weights. Load through
    `from_pretrained` for single-file full checkpoints; adapters and sharded/FSDP checkpoints keep the default.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = model if model is not None else self.model
        single_file = os.path.isfile(os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME))
        if isinstance(model, PeftModel) or not single_file or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        loaded = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)
