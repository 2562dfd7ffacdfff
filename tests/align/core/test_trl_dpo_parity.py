"""Plain DPO checked against the ecosystem: TRL's `DPOTrainer` (sigmoid loss) and our `losses.dpo_pair_loss`
(form="sequence") on per-token log-probs from our `align.core.logprobs.response_logps` give the same loss, rewards and
log-likelihoods on one batch of a tiny LLaVA, in fp32.

The policy is the saved tiny model with seeded noise on its language model, the reference the saved model itself,
so the loss is not the log 2 that any policy equal to its reference gives.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from PIL import Image
from trl import DPOConfig, DPOTrainer

from align.config.sections import ModelConfig
from align.core.data import encode_row, pad_right
from align.core.logprobs import response_logps
from align.core.losses.dpo import LOG2, dpo_pair_loss
from align.core.models import build_model, load_policy, save_policy
from tests.conftest import MICRO_SPEC

BETA = 0.1
TOL = 1e-5  # on the loss and the rewards; the summed log-likelihoods (about -30 to -45) get a relative 1e-6
# (measured: 0 and 7.6e-6 absolute, i.e. 2 fp32 ulps at 45; both sides' kernels and sum orders differ)
# (image seed, prompt, chosen, rejected): prompts and answers of different lengths, so both layouts have padding:
# TRL's (prompts left-padded, completions right-padded, then flushed left) and ours (whole rows right-padded)
PAIRS = [
    (1, "describe the image in detail.", "a red cup is at the top left.", "a blue bowl."),
    (2, "what is at the top left ?", "a dog.", "there is a green tree at the center and a bird."),
    (3, "how many cars are there ?", "two cars.", "three cars are shown at the bottom right."),
]


def _image(seed: int) -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    side = MICRO_SPEC.image_size
    return Image.fromarray((torch.rand(side, side, 3, generator=gen) * 255).to(torch.uint8).numpy())


def _perturbed(model, scale: float = 0.05, seed: int = 0):
    """The same seeded noise on every language-model weight and the LM head, whichever copy of the model it is."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "language_model" in name or name.startswith("lm_head"):
                param.add_(torch.randn(param.shape, generator=gen) * scale)
    return model


def _trl_loss(base, tmp_path) -> tuple[float, dict, dict]:
    """TRL's loss on one batch of its own collator, without training; its metrics; and the batch."""
    policy, processor = load_policy(base, device="cpu")
    dataset = Dataset.from_dict(
        {
            "images": [[_image(seed)] for seed, *_ in PAIRS],
            # conversational: TRL renders prompt and answers with the processor's chat template (our LLaVA-1.5 one)
            "prompt": [[{"role": "user", "content": p}] for _, p, _, _ in PAIRS],
            "chosen": [[{"role": "assistant", "content": c}] for _, _, c, _ in PAIRS],
            "rejected": [[{"role": "assistant", "content": r}] for _, _, _, r in PAIRS],
        }
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=BETA,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=False,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        per_device_train_batch_size=len(PAIRS),
    )
    # No ref_model: TRL reloads the reference from the policy's config path, i.e. the unperturbed saved model.
    trainer = DPOTrainer(model=_perturbed(policy), args=args, train_dataset=dataset, processing_class=processor)
    # The collator on the rows in order (the dataloader's would be shuffled; the loss is a mean, so order is moot,
    # but the token comparison below pairs rows by position).
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    mode = "train" if trainer.model.training else "eval"  # how TRL files its metrics (load_policy gives eval)
    metrics = {k: v[-1] for k, v in trainer._metrics[mode].items()}
    return loss.item(), metrics, batch


def _our_batch(processor, n_image_tokens: int) -> tuple[dict, list[dict]]:
    """[all chosen; all rejected] rows as our trainers encode them (`encode_row`: the chat template's generation
    prompt with the image, then the answer + EOS), right-padded."""
    cache: dict = {}
    answers = [(seed, p, c) for seed, p, c, _ in PAIRS] + [(seed, p, r) for seed, p, _, r in PAIRS]
    rows = [
        encode_row(
            processor, {"id": str(i), "image": _image(seed), "prompt": p, "response": a}, 1024, n_image_tokens, cache
        )
        for i, (seed, p, a) in enumerate(answers)
    ]
    width = max(len(r["input_ids"]) for r in rows)
    n_response = max(sum(label != -100 for label in r["labels"]) for r in rows)
    batch = {
        "input_ids": pad_right([r["input_ids"] for r in rows], width, processor.tokenizer.pad_token_id, torch.long),
        "attention_mask": pad_right([[1] * len(r["input_ids"]) for r in rows], width, 0, torch.long),
        "labels": pad_right([r["labels"] for r in rows], width, -100, torch.long),
        "pixel_values": processor.image_processor([r["image"] for r in rows], return_tensors="pt")["pixel_values"],
        "token_weights": torch.ones(len(rows), n_response),  # only sets response_logps' width
    }
    return batch, rows


def test_trl_dpo_sigmoid_loss_matches_ours(tmp_path):
    torch.manual_seed(0)
    base = save_policy(*build_model(ModelConfig(tiny=MICRO_SPEC, finetune="full"), seed=0), tmp_path / "base")
    trl_loss, trl_metrics, trl_batch = _trl_loss(base, tmp_path)

    policy, processor = load_policy(base, device="cpu")
    policy = _perturbed(policy)
    reference, _ = load_policy(base, device="cpu")
    batch, rows = _our_batch(processor, policy.config.image_seq_length)

    # Both sides must score exactly the same tokens: TRL's rendered prompt ("USER: <image>×9\n... ASSISTANT:",
    # the common prefix of the templated prompt and prompt+answer) and answer (" ...</s>", EOS included) tokenize
    # to what encode_row builds from the generation prompt and answer + EOS; TRL adds no BOS
    # (add_special_tokens=False) and neither does our tokenizer. (TRL pads completions with EOS, not <pad>: its
    # `pad_token_id or eos_token_id` reads our pad id 0 as unset. Those positions are masked, so nothing changes.)
    for i, row in enumerate(rows):
        real = trl_batch["attention_mask"][i].bool()
        assert trl_batch["input_ids"][i][real].tolist() == row["input_ids"]
        assert trl_batch["input_ids"][i][trl_batch["completion_mask"][i].bool()].tolist() == [
            t for t in row["labels"] if t != -100
        ]
    assert torch.equal(trl_batch["pixel_values"], batch["pixel_values"])

    with torch.no_grad():
        pol, mask = response_logps(policy, batch)
        ref, _ = response_logps(reference, batch)
    (pol_w, pol_l), (ref_w, ref_l), (mask_w, mask_l) = pol.chunk(2), ref.chunk(2), mask.chunk(2)
    loss, r_w, r_l = dpo_pair_loss(pol_w, ref_w, pol_l, ref_l, mask_w, mask_l, BETA, form="sequence")

    assert abs(loss.item() - LOG2) > 1e-3, "the perturbation is too small for the comparison to mean anything"
    assert loss.item() == pytest.approx(trl_loss, abs=TOL)
    assert r_w.mean().item() == pytest.approx(trl_metrics["rewards/chosen"], abs=TOL)
    assert r_l.mean().item() == pytest.approx(trl_metrics["rewards/rejected"], abs=TOL)
    chosen_logps = torch.where(mask_w, pol_w, 0.0).sum(-1)
    rejected_logps = torch.where(mask_l, pol_l, 0.0).sum(-1)
    assert chosen_logps.mean().item() == pytest.approx(trl_metrics["logps/chosen"], rel=1e-6)
    assert rejected_logps.mean().item() == pytest.approx(trl_metrics["logps/rejected"], rel=1e-6)
