"""The policy's side of data building: sampling its own responses (OPA-DPO step 1, RLAIF-V step 1), answering
yes/no questions about its claims (RLAIF-V self-feedback), and the build-data entry points.

`HFRolloutEngine` runs `generate` in this process. An engine for an OpenAI-compatible server (vLLM in its own
environment, see stack.md) only has to implement the same `generate(images, prompts, seed)`.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from align.data import to_pil, user_prompt
from align.generation import generate
from align.models import load_policy
from align.sections import GenerationConfig
from data_builders import rlaif_v
from data_builders.claims import CheckRequest, OracleLabeler
from data_builders.opa_dpo import OPADataConfig, RolloutSettings, build
from data_builders.toyworld import SHORT_ANSWER_SUFFIX


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
        for start in tqdm(starts, desc="check", leave=False, disable=len(starts) < 2):
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


def build_opa_data(cfg: OPADataConfig) -> dict:
    """`align build-data` for the OPA-DPO recipe: roll out `cfg.policy`, correct, filter, save."""
    return build(cfg, HFRolloutEngine(cfg.policy, cfg.rollout))


def build_rlaif_v_data(cfg: rlaif_v.RLAIFVDataConfig) -> dict:
    """`align build-data` for one RLAIF-V round: `cfg.policy` samples, the configured labeler checks its claims."""
    engine = HFRolloutEngine(cfg.policy, cfg.rollout)
    if cfg.labeler == "oracle":
        labeler = OracleLabeler()
    elif cfg.labeler == "policy":
        labeler = PolicyLabeler(engine.model, engine.processor, cfg.policy, cfg.rollout.batch_size)
    else:
        from data_builders.openai_feedback import OpenAILabeler

        labeler = OpenAILabeler(cfg.openai, cache_dir=f"{cfg.output_dir}/labeler_cache", concurrency=cfg.concurrency)
    return rlaif_v.build(cfg, engine, labeler)
