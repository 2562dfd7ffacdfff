"""DPO and RLHF-V's dense DPO (DDPO) on a PreferenceRecord dataset: LoRA on a trained base policy.

    align build-data configs/toy/preference_data.yaml   # OPA-DPO data → RLHF-V pairs (revision ≻ rollout)
    align train configs/toy/dpo.yaml                    # plain sigmoid DPO
    align train configs/toy/ddpo.yaml                   # DDPO: corrected tokens weighted by γ

Per pair (image I, prompt x, chosen y_w, rejected y_l) the loss is `losses.ddpo_loss`:
    L = -log σ(β (h(y_w) - h(y_l)))  +  sft_weight · NLL(y_w),   h(y) = Σ_t w_t (log π(y_t|x,I) - log π_ref(y_t|x,I))
loss: dpo sets every w_t = 1 (plain DPO, the spans are ignored); loss: ddpo gives each token the weight of the
character span it falls in (γ on corrected text, 1 elsewhere and on EOS), as RLHF-V's Muffin code
(`compute_weighted_logp`); `average: true` divides h by Σ_t w_t, the paper's 1/N form.

The policy is a fresh LoRA on the start model and the reference is the same model with adapters disabled (as the
DPO stage of align/recipes/opa_dpo.py), so policy == reference at the first step and the first loss is exactly log 2.
Pairs that cannot train are counted by reason and left out, never fatal: an empty side, chosen == rejected,
spans that do not fit their text (ddpo only), a prompt that with its image tokens does not fit max_length.
"""

from __future__ import annotations

from align.config.recipes import DPORecipeConfig
from align.core.preference import train_dpo
from align.core.trainer import write_summary
from align.eval.callback import attach_checkpoint_eval
from align.eval.runner import evaluate_checkpoint


def main(cfg: DPORecipeConfig) -> dict:
    summary = train_dpo(cfg, prepare=attach_checkpoint_eval)
    if summary.pop("finished", False):  # already trained and evaluated: nothing is rewritten
        return summary
    if cfg.run.eval_at_end:
        summary["eval"] = evaluate_checkpoint(summary["final"], cfg.eval, data_cfg=cfg.data)
    return write_summary(cfg.run, summary)
