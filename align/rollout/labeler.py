"""RLAIF-V self-feedback: the policy answers yes/no questions about its own claims."""

from __future__ import annotations

import torch

from align.core.data import to_pil, user_prompt
from data_builders.claims import CheckRequest
from data_builders.progress import bar
from data_builders.toyworld import SHORT_ANSWER_SUFFIX


class PolicyLabeler:
    """RLAIF-V's check with the policy as its own labeler: P(yes) vs P(no) of the first answer token to each
    claim's question (the POPE prompt form: question + short-answer suffix), yes = 'yes' + 'Yes', no = 'no' + 'No'."""

    def __init__(self, model, processor, name: str, batch_size: int = 64):
        self.model, self.processor, self.batch_size = model, processor, batch_size
        self.labeler_id = f"policy:{name}"
        tok = processor.tokenizer
        self.yes, self.no = (self._single_token_ids(tok, words) for words in (("yes", "Yes"), ("no", "No")))
        if not self.yes or not self.no:
            raise ValueError(f"{name}: the tokenizer has no single token for yes / no; use another labeler")

    @staticmethod
    def _single_token_ids(tok, words) -> list[int]:
        ids = {tuple(tok(w, add_special_tokens=False)["input_ids"]) for w in words}
        return sorted({i[0] for i in ids if len(i) == 1 and i[0] != tok.unk_token_id})

    @torch.no_grad()
    def p_yes(self, requests: list[CheckRequest]) -> list[float | None]:
        device = next(self.model.parameters()).device
        out: list[float | None] = []
        starts = range(0, len(requests), self.batch_size)
        for start in bar(starts, desc="check", disable=len(starts) < 2):
            batch = requests[start : start + self.batch_size]
            images = [to_pil(r.image, r.id) for r in batch]
            texts = [user_prompt(self.processor, r.claim.question + SHORT_ANSWER_SUFFIX) for r in batch]
            enc = self.processor(images=images, text=texts, padding=True, padding_side="left", return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            # left padding: positions count real tokens only, as generate does
            enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            probs = self.model(**enc).logits[:, -1].float().softmax(-1)
            p_yes, p_no = probs[:, self.yes].sum(-1), probs[:, self.no].sum(-1)
            total = p_yes + p_no
            out += [float(y / t) if t > 0 else None for y, t in zip(p_yes, total, strict=True)]
        return out
