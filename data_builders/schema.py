"""On-disk record schemas (HF datasets features). Images are stored as encoded bytes; JSON-valued fields are strings.

- OPARecord: one on-policy rollout with its expert correction. OPA-DPO's four pairs and their token weights are
  derived from it at collate time (reference vs rollout, revision vs rollout, each with the image vs a masked
  image), so one stored record serves every term.
- PreferenceRecord: a chosen/rejected pair with optional weighted character spans `[start, end, weight]` on each
  response (RLHF-V's fine-grained corrections); plain DPO is the case with no spans.
Every record keeps `source` and a `meta` JSON (dataset, row, expert, request hash) to trace it back.
"""

from __future__ import annotations

from datasets import Features, Image, Sequence, Value

OPA_FEATURES = Features(
    {
        "id": Value("string"),
        "image": Image(),
        "prompt": Value("string"),
        "reference": Value("string"),  # ground-truth answer (ToyWorld: a clean caption; RLAIF-V: `chosen`)
        "rollout": Value("string"),  # the policy's own sampled response
        "revision": Value("string"),  # the expert's minimal correction of the rollout
        "report": Value("string"),  # ExpertReport.to_dict() as JSON
        "offpolicy": Value("string"),  # a hallucinated answer the policy did not write (off-policy DPO baseline)
        "source": Value("string"),
        "meta": Value("string"),
    }
)

SPAN = Sequence(Value("float64"), length=3)  # [start_char, end_char, weight]
PREFERENCE_FEATURES = Features(
    {
        "id": Value("string"),
        "image": Image(),
        "prompt": Value("string"),
        "chosen": Value("string"),
        "rejected": Value("string"),
        "chosen_spans": Sequence(SPAN),
        "rejected_spans": Sequence(SPAN),
        "source": Value("string"),
        "meta": Value("string"),
    }
)
