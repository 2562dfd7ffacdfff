"""Which dataclass, command and entry point each config's `recipe:` key selects, and `load_config`.

    cfg = load_config("configs/toy/sft_base.yaml", ["optim.lr=3e-4", "optim.max_steps=100"])

Entry points are "module:function" strings, imported only when a recipe runs (align/cli.py), so reading and
checking a config never imports a trainer, torch or datasets.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, NamedTuple

from align.config.loading import ConfigError, apply_overrides, from_dict, read_yaml
from align.config.online import GRPORecipeConfig, PPORecipeConfig
from align.config.recipes import DPORecipeConfig, OPADPOConfig, RewardModelConfig, RLAIFVConfig, SFTConfig
from align.config.switch import HalleSwitchConfig
from data_builders.configs import (
    OPADataConfig,
    PreferenceDataConfig,
    PublicPreferenceConfig,
    RewardPairsConfig,
    RLAIFVDataConfig,
    ToyWorldDataConfig,
)


class Recipe(NamedTuple):
    config_cls: type
    command: str  # the CLI subcommand that runs it
    entry: str  # "module:function", imported when run


RECIPES: dict[str, Recipe] = {
    "sft": Recipe(SFTConfig, "train", "align.recipes.sft:main"),
    "opa_dpo": Recipe(OPADPOConfig, "train", "align.recipes.opa_dpo:main"),
    "dpo": Recipe(DPORecipeConfig, "train", "align.recipes.dpo:main"),
    "rlaif_v": Recipe(RLAIFVConfig, "train", "align.recipes.rlaif_v:main"),
    "reward_model": Recipe(RewardModelConfig, "train", "align.recipes.reward_model:main"),
    "grpo": Recipe(GRPORecipeConfig, "train", "align.recipes.grpo:main"),
    "ppo": Recipe(PPORecipeConfig, "train", "align.recipes.ppo:main"),
    "halle_switch": Recipe(HalleSwitchConfig, "train", "align.recipes.halle_switch:main"),
    "toyworld": Recipe(ToyWorldDataConfig, "build-data", "data_builders.toyworld_data:build_from_config"),
    "opa_dpo_data": Recipe(OPADataConfig, "build-data", "align.rollout.builds:build_opa_data"),
    "preference_data": Recipe(PreferenceDataConfig, "build-data", "data_builders.rlhf_v:build_preference_data"),
    "public_preferences": Recipe(
        PublicPreferenceConfig, "build-data", "data_builders.rlhf_v:build_public_preferences"
    ),
    "rlaif_v_data": Recipe(RLAIFVDataConfig, "build-data", "align.rollout.builds:build_rlaif_v_data"),
    "reward_pairs": Recipe(RewardPairsConfig, "build-data", "align.rollout.builds:build_reward_pairs"),
}


def load_config(path: str | Path, overrides: list[str] | None = None) -> Any:
    """Load a recipe config: read YAML, apply overrides, pick the dataclass by its `recipe` key, validate."""
    data = apply_overrides(read_yaml(path), list(overrides or []))
    recipe = data.get("recipe")
    if recipe not in RECIPES:
        close = difflib.get_close_matches(str(recipe), list(RECIPES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{path}: recipe: {recipe!r} is not one of {', '.join(RECIPES)}{hint}")
    try:
        return from_dict(RECIPES[recipe].config_cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
