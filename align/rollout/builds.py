"""The `align build-data` entry points whose data the policy itself samples (and, for RLAIF-V, may label): the
builders live in data_builders and take the engine and labeler made here."""

from __future__ import annotations

from pathlib import Path

from align.rollout.engine import HFRolloutEngine
from align.rollout.labeler import PolicyLabeler
from data_builders import opa_dpo, reward_pairs, rlaif_v
from data_builders.claims import OracleLabeler
from data_builders.configs import OPADataConfig, RewardPairsConfig, RLAIFVDataConfig
from data_builders.openai_feedback import OpenAILabeler
from data_builders.served_rollout import ServedRolloutEngine


def policy_engine(cfg: OPADataConfig | RLAIFVDataConfig, adapter: tuple[str, Path] | None = None):
    """The policy that samples: served (vLLM, `cfg.served`; its replies cached in the build's folder, so a killed
    build asks nothing twice), with `adapter` = (name, folder) loaded into the server first and sampled, or
    `cfg.policy` loaded here."""
    if cfg.served is not None:
        engine = ServedRolloutEngine(cfg.served, cfg.rollout, cache_dir=f"{cfg.output_dir}/policy_cache")
        if adapter is not None:
            engine.load_adapter(*adapter)
        return engine
    if adapter is not None:
        raise ValueError("an adapter to serve was given but nothing is served (cfg.served is null)")
    return HFRolloutEngine(cfg.policy, cfg.rollout)


def build_opa_data(cfg: OPADataConfig) -> dict:
    """`align build-data` for the OPA-DPO recipe: roll out `cfg.policy`, correct, filter, save."""
    return opa_dpo.build(cfg, policy_engine(cfg))


def build_rlaif_v_data(cfg: RLAIFVDataConfig, adapter: tuple[str, Path] | None = None) -> dict:
    """`align build-data` for one RLAIF-V round: `cfg.policy` (or the served policy, with `adapter` loaded into the
    server) samples, the configured labeler checks its claims."""
    engine = policy_engine(cfg, adapter)
    if cfg.labeler == "oracle":
        labeler = OracleLabeler()
    elif cfg.labeler == "policy":
        labeler = PolicyLabeler(engine.model, engine.processor, cfg.policy, cfg.rollout.batch_size)
    else:
        labeler = OpenAILabeler(cfg.openai, cache_dir=f"{cfg.output_dir}/labeler_cache", concurrency=cfg.concurrency)
    return rlaif_v.build(cfg, engine, labeler)


def build_reward_pairs(cfg: RewardPairsConfig) -> dict:
    """`align build-data` for reward-model pairs: `cfg.policy` samples, the oracle ranks its captions."""
    return reward_pairs.build(cfg, HFRolloutEngine(cfg.policy, cfg.rollout))
