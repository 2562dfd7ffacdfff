"""Which dataclass and which entry point each config's `recipe:` key selects. Kept as one plain dict."""

from __future__ import annotations

from typing import Any, NamedTuple

from align.dpo import DPORecipeConfig
from align.opa_dpo import OPADPOConfig
from align.rlaif_v import RLAIFVConfig
from align.sft import SFTConfig
from data_builders.opa_dpo import OPADataConfig
from data_builders.rlaif_v import RLAIFVDataConfig
from data_builders.rlhf_v import PreferenceDataConfig, PublicPreferenceConfig
from data_builders.toyworld_data import ToyWorldDataConfig


class Recipe(NamedTuple):
    config_cls: type
    command: str  # the CLI subcommand that runs it
    entry: str  # "module:function", imported when run


RECIPES: dict[str, Recipe] = {
    "sft": Recipe(SFTConfig, "train", "align.sft:main"),
    "opa_dpo": Recipe(OPADPOConfig, "train", "align.opa_dpo:main"),
    "dpo": Recipe(DPORecipeConfig, "train", "align.dpo:main"),
    "rlaif_v": Recipe(RLAIFVConfig, "train", "align.rlaif_v:main"),
    "toyworld": Recipe(ToyWorldDataConfig, "build-data", "data_builders.toyworld_data:build_from_config"),
    "opa_dpo_data": Recipe(OPADataConfig, "build-data", "align.rollout:build_opa_data"),
    "preference_data": Recipe(PreferenceDataConfig, "build-data", "data_builders.rlhf_v:build_preference_data"),
    "public_preferences": Recipe(
        PublicPreferenceConfig, "build-data", "data_builders.rlhf_v:build_public_preferences"
    ),
    "rlaif_v_data": Recipe(RLAIFVDataConfig, "build-data", "align.rollout:build_rlaif_v_data"),
}


def run_recipe(cfg: Any) -> Any:
    import importlib

    module, func = RECIPES[cfg.recipe].entry.split(":")
    return getattr(importlib.import_module(module), func)(cfg)
