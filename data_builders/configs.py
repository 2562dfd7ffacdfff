"""The `align build-data` configs, in one module that imports neither torch nor datasets, so that checking a YAML
(`align validate`, `align build-data CONFIG --help`) stays fast. Each builder module reads its config from here.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from data_builders import toyworld as tw
from data_builders.endpoint import OpenAIExpertConfig, ServedPolicyConfig

Format = Literal["rlhf_v", "rlaif_v", "llava_human_pref"]  # the public preference sets preference_import reads


@dataclasses.dataclass
class ToyWorldDataConfig:
    """`align build-data` config for ToyWorld: generate the splits into the cache and print a summary."""

    recipe: typing.Literal["toyworld"] = dataclasses.field(
        default="toyworld", metadata={"help": "Selects this builder."}
    )
    world: tw.WorldConfig = dataclasses.field(default_factory=tw.WorldConfig, metadata={"help": "World settings."})
    cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "Cache root (default ~/.cache/align)."})
    rebuild: bool = dataclasses.field(default=False, metadata={"help": "Regenerate even if cached."})
    export_dir: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Also write the test split as public-benchmark files here (POPE question files + images/), "
            "so `align eval --source pope data=<dir>/pope images=<dir>/images` runs on ToyWorld."
        },
    )
    export_llava_dir: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Also write the train split as LLaVA-format SFT data here (llava.json + images/), the input of "
            "configs/toy/sft_llava_json.yaml."
        },
    )


@dataclasses.dataclass
class RolloutSettings:
    temperature: float = dataclasses.field(
        default=0.2, metadata={"help": "Sampling temperature (OPA-DPO: 1.0; the toy policy does best near greedy)."}
    )
    top_k: int = dataclasses.field(default=0, metadata={"help": "Top-k sampling (OPA-DPO: 30; 0 = off)."})
    top_p: float = dataclasses.field(default=0.95, metadata={"help": "Nucleus sampling (OPA-DPO: 0.95)."})
    max_new_tokens: int = dataclasses.field(default=64, metadata={"help": "Longest response in tokens."})
    batch_size: int = dataclasses.field(default=64, metadata={"help": "Prompts per generate call."})
    max_prompt_tokens: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Longest prompt in tokens, image tokens included; longer ones are skipped and counted "
            "(prompt_too_long). null = the policy's max_position_embeddings minus max_new_tokens."
        },
    )

    def __post_init__(self):
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature > 0, 0 < top_p <= 1 and top_k >= 0")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError("max_prompt_tokens must be >= 1 or null")


@dataclasses.dataclass
class OPADataConfig:
    """`align build-data` config for OPA-DPO preference data."""

    recipe: typing.Literal["opa_dpo_data"] = dataclasses.field(
        default="opa_dpo_data", metadata={"help": "Selects this builder."}
    )
    output_dir: str = dataclasses.field(default="runs/opa_data", metadata={"help": "Where everything is written."})
    policy: str = dataclasses.field(
        default="runs/demo/sft_base/final", metadata={"help": "Checkpoint that rolls out (the base policy)."}
    )
    prompts: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Public RLAIF-V-style rows {image, question, chosen[, rejected]} (save_to_disk folder, .parquet "
            "or .jsonl; chosen becomes the reference); null = ToyWorld. Needs expert: openai (no ground truth)."
        },
    )
    world: tw.WorldConfig = dataclasses.field(default_factory=tw.WorldConfig, metadata={"help": "ToyWorld."})
    cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "ToyWorld cache root."})
    split: typing.Literal["train", "val", "test"] = dataclasses.field(default="train", metadata={"help": "Images."})
    limit: int | None = dataclasses.field(default=None, metadata={"help": "Prompts to use (null = the whole split)."})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of prompt choice and sampling."})
    rollout: RolloutSettings = dataclasses.field(default_factory=RolloutSettings, metadata={"help": "Sampling."})
    served: ServedPolicyConfig | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Sample from a policy served by vLLM (an OpenAI-compatible server) instead of loading `policy`: "
            "{base_url, model, concurrency}; the rollout settings still apply. null = load `policy` here."
        },
    )
    expert: typing.Literal["oracle", "openai"] = dataclasses.field(
        default="oracle", metadata={"help": "oracle (ground truth) or openai (any OpenAI-compatible VLM)."}
    )
    openai: OpenAIExpertConfig = dataclasses.field(
        default_factory=OpenAIExpertConfig, metadata={"help": "Used when expert: openai."}
    )
    concurrency: int = dataclasses.field(default=8, metadata={"help": "Expert requests in flight."})
    max_word_repeats: int = dataclasses.field(
        default=30, metadata={"help": "Drop a rollout whose last word repeats more often than this."}
    )

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 or null")
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.prompts is not None and self.expert == "oracle":
            raise ValueError("prompts: public rows have no ground-truth objects for the oracle; set expert: openai")


@dataclasses.dataclass
class RLAIFVDataConfig:
    """`align build-data` config: one round of RLAIF-V feedback data from a policy's own samples."""

    recipe: typing.Literal["rlaif_v_data"] = dataclasses.field(
        default="rlaif_v_data", metadata={"help": "Selects this builder."}
    )
    output_dir: str = dataclasses.field(default="runs/rlaif_v_data", metadata={"help": "Where everything goes."})
    policy: str = dataclasses.field(
        default="runs/demo/sft_base/final", metadata={"help": "Checkpoint that samples (and labels, labeler: policy)."}
    )
    prompts: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Public RLAIF-V-style rows (save_to_disk folder, .parquet, .jsonl); null = ToyWorld."},
    )
    world: tw.WorldConfig = dataclasses.field(default_factory=tw.WorldConfig, metadata={"help": "ToyWorld."})
    cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "ToyWorld cache root."})
    split: typing.Literal["train", "val", "test"] = dataclasses.field(default="train", metadata={"help": "Images."})
    limit: int | None = dataclasses.field(default=None, metadata={"help": "Prompts to use (null = all)."})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the prompts (the same every round)."})
    round: int = dataclasses.field(
        default=0, metadata={"help": "Iteration number: shifts the sampling seed so each round samples anew."}
    )
    samples: int = dataclasses.field(default=4, metadata={"help": "Responses sampled per prompt."})
    rollout: RolloutSettings = dataclasses.field(
        default_factory=lambda: RolloutSettings(temperature=0.7, top_p=1.0),
        metadata={"help": "Sampling (RLAIF-V: T=0.7)."},
    )
    served: ServedPolicyConfig | None = dataclasses.field(
        default=None,
        metadata={
            "help": "Sample from a policy served by vLLM (an OpenAI-compatible server) instead of loading `policy`: "
            "{base_url, model, concurrency}; the rollout settings still apply. null = load `policy` here."
        },
    )
    divider: typing.Literal["toyworld", "sentences", "openai"] = dataclasses.field(
        default="toyworld",
        metadata={"help": "toyworld: rules for ToyWorld captions; sentences: a claim per sentence; openai: an LLM."},
    )
    labeler: typing.Literal["oracle", "policy", "openai"] = dataclasses.field(
        default="oracle",
        metadata={"help": "oracle: ground truth; policy: the sampling policy's own P(yes) (self-feedback); openai."},
    )
    openai: OpenAIExpertConfig = dataclasses.field(
        default_factory=lambda: OpenAIExpertConfig(max_tokens=1024),
        metadata={"help": "The OpenAI-compatible endpoint of divider: openai and labeler: openai."},
    )
    concurrency: int = dataclasses.field(default=8, metadata={"help": "OpenAI requests in flight."})
    min_score_diff: int = dataclasses.field(default=1, metadata={"help": "Least score gap of a pair (RLAIF-V: 1)."})
    pairs_per_prompt: int = dataclasses.field(default=2, metadata={"help": "Pairs drawn per prompt (RLAIF-V: 2)."})
    length_balance: bool = dataclasses.field(default=True, metadata={"help": "Search the length threshold."})
    chunk: int = dataclasses.field(default=64, metadata={"help": "Responses checked per feedback.jsonl append."})

    def __post_init__(self):
        if self.samples < 2:
            raise ValueError("samples must be >= 2: pairs are made between responses to the same prompt")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 or null")
        if self.min_score_diff < 1 or self.pairs_per_prompt < 1 or self.chunk < 1 or self.concurrency < 1:
            raise ValueError("min_score_diff, pairs_per_prompt, chunk and concurrency must be >= 1")
        if self.prompts is not None and (self.labeler == "oracle" or self.divider == "toyworld"):
            raise ValueError(
                "prompts: public rows have no ground truth; use divider: openai|sentences and labeler: openai|policy"
            )
        if self.labeler == "oracle" and self.divider != "toyworld":
            raise ValueError("labeler: oracle checks structured ToyWorld claims only; set divider: toyworld")
        if self.served is not None and self.labeler == "policy":
            raise ValueError("labeler: policy reads the policy's own P(yes), which needs it loaded; unset served")


@dataclasses.dataclass
class RewardPairsConfig:
    """`align build-data` config: reward-model pairs from a policy's own ToyWorld samples, ranked by the oracle
    (fewer hallucinated mentions wins, ties by recall), each with the image's ground truth as facts."""

    prompts: typing.ClassVar[None] = None  # ToyWorld prompts only: the ranking needs the ground truth
    recipe: Literal["reward_pairs"] = dataclasses.field(default="reward_pairs", metadata={"help": "This builder."})
    output_dir: str = dataclasses.field(default="runs/reward_pairs", metadata={"help": "Where everything goes."})
    policy: str = dataclasses.field(default="runs/demo/sft_base/final", metadata={"help": "Checkpoint that samples."})
    world: tw.WorldConfig = dataclasses.field(default_factory=tw.WorldConfig, metadata={"help": "ToyWorld."})
    cache_dir: str | None = dataclasses.field(default=None, metadata={"help": "ToyWorld cache root."})
    split: typing.Literal["train", "val", "test"] = dataclasses.field(default="train", metadata={"help": "Images."})
    limit: int | None = dataclasses.field(default=None, metadata={"help": "Images to use (null = all)."})
    seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the prompts and the sampling."})
    samples: int = dataclasses.field(
        default=4, metadata={"help": "Captions sampled per image; the best and the worst make its pair."}
    )
    rollout: RolloutSettings = dataclasses.field(
        default_factory=lambda: RolloutSettings(temperature=0.7, top_p=1.0),
        metadata={"help": "Sampling (LLaVA-RLHF samples its pairs at T=0.7)."},
    )

    def __post_init__(self):
        if self.samples < 2:
            raise ValueError("samples must be >= 2: a pair is two captions of the same image")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 or null")


@dataclasses.dataclass
class PreferenceDataConfig:
    """`align build-data` config: RLHF-V preference pairs from an OPA-DPO dataset (the same rollouts and
    corrections, so DPO/DDPO and OPA-DPO can be compared on equal data)."""

    recipe: Literal["preference_data"] = dataclasses.field(
        default="preference_data", metadata={"help": "Selects this builder."}
    )
    opa_dataset: str = dataclasses.field(
        default="runs/opa_data/dataset", metadata={"help": "OPA dataset from `align build-data` (opa_dpo_data)."}
    )
    output_dir: str = dataclasses.field(
        default="runs/pref_data", metadata={"help": "Where dataset/ and summary.json are written."}
    )
    gamma: float = dataclasses.field(
        default=5.0,
        metadata={
            "help": "DDPO weight of corrected tokens, stored as the span weight. 5.0 as the RLHF-V paper and "
            "Muffin's first README; the current RLHF-V script uses 1.1."
        },
    )
    spans: Literal["report", "diff"] = dataclasses.field(
        default="report",
        metadata={
            "help": "report: the sentences the expert flagged; diff: the tokens a token-id diff of revision and "
            "rollout marks changed (Muffin's rule; needs policy for its tokenizer)."
        },
    )
    policy: str | None = dataclasses.field(
        default=None, metadata={"help": "Checkpoint whose tokenizer the diff runs on (spans: diff only)."}
    )
    min_match: int = dataclasses.field(
        default=3, metadata={"help": "spans: diff: matching runs shorter than this count as changed (Muffin: 3)."}
    )
    chosen: Literal["revision", "reference"] = dataclasses.field(
        default="revision",
        metadata={
            "help": "The chosen answer: the expert's revision of the rollout (RLHF-V), or the record's reference "
            "answer, which the policy did not write (needs spans: diff)."
        },
    )

    def __post_init__(self):
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        if self.chosen == "reference" and self.spans != "diff":
            raise ValueError("chosen: reference needs spans: diff (the expert's report marks edits of the rollout)")
        if self.spans == "diff" and not self.policy:
            raise ValueError("spans: diff needs policy (a checkpoint directory) for its tokenizer")
        if self.min_match < 1:
            raise ValueError("min_match must be >= 1")


@dataclasses.dataclass
class PublicPreferenceConfig:
    """`align build-data` config: a public preference set (a file you downloaded) as PreferenceRecords, optionally
    with RLHF-V's DDPO spans, for `align train` with recipe dpo."""

    recipe: Literal["public_preferences"] = dataclasses.field(
        default="public_preferences", metadata={"help": "Selects this builder."}
    )
    path: str | None = dataclasses.field(
        default=None,
        metadata={"help": "The downloaded rows: .parquet (hub layout), .jsonl, .json array or save_to_disk folder."},
    )
    format: Format = dataclasses.field(
        default="rlhf_v",
        metadata={
            "help": "rlhf_v: HaoyeZhang/RLHF-V-Dataset; rlaif_v: openbmb/RLAIF-V-Dataset; llava_human_pref: "
            "zhiqings/LLaVA-Human-Preference-10K."
        },
    )
    image_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "Root of image paths named in rows (null: the file's folder)."}
    )
    captions: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "JSON captions file (LLaVA-RLHF's image_to_caption.json: image file name -> a caption or a list "
            "of captions). Each record whose image it names (by the row's path, else its file name) gets them as "
            "meta.facts, the facts the fact-augmented reward model reads (`align train` recipe reward_model); the "
            "others are kept without facts and counted. null = no facts."
        },
    )
    limit: int | None = dataclasses.field(default=None, metadata={"help": "Rows to read (null = all)."})
    output_dir: str = dataclasses.field(
        default="runs/public_pref", metadata={"help": "Where dataset/ and summary.json are written."}
    )
    spans: Literal["none", "diff"] = dataclasses.field(
        default="none",
        metadata={
            "help": "none: plain DPO pairs; diff: Muffin's token-id diff of chosen vs rejected marks the corrected "
            "tokens with weight gamma (RLHF-V's DDPO; needs policy for its tokenizer)."
        },
    )
    gamma: float = dataclasses.field(
        default=5.0,
        metadata={
            "help": "DDPO weight of the changed tokens (spans: diff). 5.0 as the RLHF-V paper and Muffin's first "
            "README; the current RLHF-V script uses 1.1."
        },
    )
    min_match: int = dataclasses.field(
        default=3, metadata={"help": "spans: diff: matching runs shorter than this count as changed (Muffin: 3)."}
    )
    policy: str | None = dataclasses.field(
        default=None,
        metadata={"help": "Checkpoint or hub id whose tokenizer the diff uses (spans: diff only; no remote code)."},
    )

    def __post_init__(self):
        if not self.path:
            raise ValueError("path: the downloaded preference file or folder is required (nothing is downloaded)")
        if self.spans == "diff" and not self.policy:
            raise ValueError("policy: spans: diff needs a checkpoint or hub id for its tokenizer")
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        if self.min_match < 1:
            raise ValueError("min_match must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 or null")
