"""Two processes (gloo on the CPU, `accelerate launch --multi_gpu --num_processes 2 -m align train`) train what one
process with 2 accumulation steps trains: the same losses, gradient norms, logged rewards and final weights, for DPO
and OPA-DPO (whose masked-image views draw their masks per record, not per process). A 2-process run killed with
`kill -9` after a checkpoint resumes to the weights of an uninterrupted one. Only the main process writes the run
directory. Slow (each launch starts two Python processes): `make test-slow`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from align.config.loading import to_dict
from align.config.sections import OptimConfig
from align.core.preference import train_dpo
from tests.align.core.test_ref_cache import config, opa_config, pairs  # noqa: F401  (the module's fixture)

pytestmark = pytest.mark.slow
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
LOGGED = ("loss", "grad_norm")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_args(cfg_file: Path) -> list[str]:
    flags = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    flags += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    return [ACCELERATE, "launch", *flags, "-m", "align", "train", str(cfg_file)]


def write_config(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def launch(cfg, path: Path) -> dict:
    """Train `cfg` as two processes; its train_summary.json."""
    out = subprocess.run(launch_args(write_config(cfg, path)), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((Path(cfg.run.output_dir) / "train_summary.json").read_text())


def kill_all(marker: str) -> None:
    """kill -9 every process whose command line holds `marker` (Linux /proc)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue  # gone already


def history(summary: dict, key: str) -> list[float]:
    return [h[key] for h in summary["log_history"] if key in h]


def assert_same_training(one: dict, two: dict, keys) -> None:
    for key in keys:
        a, b = history(one, key), history(two, key)
        assert len(a) == len(b) >= 3 and b == pytest.approx(a, rel=1e-5, abs=1e-5), key


def assert_same_weights(a: Path, b: Path) -> None:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    for k in x:
        assert (x[k] - y[k]).abs().max() <= 1e-5, k


def test_dpo_two_processes_equal_one_with_two_accumulation_steps(pairs, tmp_path):  # noqa: F811
    policy, dataset = pairs
    one = config(tmp_path, policy, dataset, "one")
    one.optim = OptimConfig(lr=1e-2, warmup_steps=0, max_steps=3, batch_size=2, grad_accum=2)
    single = train_dpo(one)
    two = config(tmp_path, policy, dataset, "two")
    two.optim = OptimConfig(lr=1e-2, warmup_steps=0, max_steps=3, batch_size=2, grad_accum=1)
    double = launch(two, tmp_path / "two.yaml")
    assert_same_training(single, double, (*LOGGED, "rewards/margin", "rewards/accuracy"))
    assert_same_weights(Path(single["final"]), Path(double["final"]))
    # the run directory is the main process's: one config, one final/, no second writer's leftovers
    names = sorted(p.name for p in Path(two.run.output_dir).iterdir())
    assert names == ["align_config.yaml", "checkpoint-3", "final", "train.log", "train_summary.json"]


def test_opa_dpo_two_processes_equal_one_with_two_accumulation_steps(micro_opa_data, tmp_path):
    from align.recipes import opa_dpo

    policy, dataset = micro_opa_data
    one = opa_config(tmp_path, policy, dataset, "one")  # all five views: masked images included
    one.opa.batch_size, one.opa.grad_accum = 4, 2
    one.optim = OptimConfig(lr=1e-2, warmup_steps=0, max_steps=3, batch_size=2, grad_accum=2)
    single = opa_dpo.main(one)
    two = opa_config(tmp_path, policy, dataset, "two")
    two.opa.batch_size, two.opa.grad_accum = 4, 1
    two.optim = OptimConfig(lr=1e-2, warmup_steps=0, max_steps=3, batch_size=2, grad_accum=1)
    double = launch(two, tmp_path / "two.yaml")
    assert_same_training(single, double, (*LOGGED, "rewards/margin"))
    assert_same_weights(Path(single["final"]), Path(double["final"]))


def test_two_processes_killed_after_a_checkpoint_resume_to_the_same_weights(pairs, tmp_path):  # noqa: F811
    policy, dataset = pairs
    steps = 40

    def cfg(name):
        c = config(tmp_path, policy, dataset, name, save_steps=4, logging_steps=4)
        c.optim = OptimConfig(lr=1e-3, warmup_steps=0, max_steps=steps, batch_size=2)
        return c

    whole = launch(cfg("whole"), tmp_path / "whole.yaml")
    killed = cfg("killed")
    args = launch_args(write_config(killed, tmp_path / "killed.yaml"))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = Path(killed.run.output_dir) / "checkpoint-4" / "trainer_state.json"
    deadline = time.time() + 240
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    kill_all(str(tmp_path / "killed.yaml"))  # the launcher and both workers (torchrun starts them in new sessions)
    proc.wait()
    time.sleep(1)  # had any worker lived on, it would write final/ and the summary by now
    assert first.is_file() and not (Path(killed.run.output_dir) / "train_summary.json").is_file()
    resumed = launch(killed, tmp_path / "killed.yaml")
    assert "train_loss_resumed_steps" in resumed["train"]
    assert_same_weights(Path(whole["final"]), Path(resumed["final"]))


def test_sft_two_processes_equal_one_with_two_accumulation_steps(tmp_path, cache_dir):
    """The token-mean loss over both processes' tokens (Trainer's average_tokens_across_devices), a full fine-tune
    saved through the gathering path."""
    from align.recipes.sft import main as sft_main
    from tests.conftest import micro_sft_config

    def cfg(name, accum):
        c = micro_sft_config(tmp_path / name, cache_dir, steps=3, vision_pretrain_steps=0, eval_at_end=False)
        c.run.logging_steps = 1
        c.optim.batch_size, c.optim.grad_accum = 4, accum
        return c

    single = sft_main(cfg("one", 2))
    double = launch(cfg("two", 1), tmp_path / "two.yaml")
    a, b = ([loss for _, loss in r["loss_history"]] for r in (single, double))
    assert len(a) == 3 and b == pytest.approx(a, rel=1e-5, abs=1e-5)
    assert_same_weights(Path(single["final"]), Path(double["final"]))


def test_halle_controller_two_processes_equal_one_with_two_accumulation_steps(micro_opa_data, cache_dir, tmp_path):
    """One ε per row across processes, and a checkpoint that holds W alone, written by the main process."""
    from align.recipes import halle_switch
    from tests.align.recipes.test_halle_switch import _cfg

    policy, _ = micro_opa_data

    def cfg(name, accum):
        c = _cfg(policy, cache_dir, tmp_path / name, steps=3, save_steps=100)
        c.optim = OptimConfig(lr=1e-2, warmup_steps=0, max_steps=3, batch_size=4, grad_accum=accum)
        return c

    single = halle_switch.main(cfg("one", 2))
    double = launch(cfg("two", 1), tmp_path / "two.yaml")
    a, b = ([loss for _, loss in r["loss_history"]] for r in (single, double))
    assert len(a) == 3 and b == pytest.approx(a, rel=1e-5, abs=1e-5)
    w1, w2 = (load_file(str(Path(r["final"]) / "switch.safetensors"))["weight"] for r in (single, double))
    assert (w1 - w2).abs().max() <= 1e-6 and w1.abs().sum() > 0


def test_rlaif_v_rounds_two_processes_equal_one_with_two_accumulation_steps(micro_opa_data, cache_dir, tmp_path):
    """The main process samples and labels each round's data (the others wait for it), every process trains, and
    round 1 samples from round 0's policy: both rounds end with a 1-process run's weights."""
    from align.recipes import rlaif_v
    from tests.align.recipes.test_rlaif_v_loop import loop_config

    policy, _ = micro_opa_data

    def cfg(name, accum):
        c = loop_config(tmp_path / name, policy, cache_dir)
        c.train.model.lora_dropout = 0.0  # dropout draws per process: no layout could match another's masks
        c.train.optim = OptimConfig(lr=1e-2, warmup_steps=0, max_steps=2, batch_size=2, grad_accum=accum)
        return c

    single = rlaif_v.main(cfg("one", 2))
    two = cfg("two", 1)
    out = subprocess.run(launch_args(write_config(two, tmp_path / "two.yaml")), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    double = json.loads((Path(two.output_dir) / "rounds.json").read_text())
    for a, b in zip(single["rounds"], double["rounds"], strict=True):
        assert a["data"]["pairs"] == b["data"]["pairs"] and b["eval"]["meta"]["images"] == 2
        assert_same_weights(Path(a["final"]), Path(b["final"]))
    assert sorted(p.name for p in (Path(two.output_dir) / "round-1" / "train").iterdir()) == [
        "adapter", "align_config.yaml", "checkpoint-2", "final", "train.log", "train_summary.json"
    ]  # fmt: skip


def test_ppo_two_processes_equal_one_with_two_accumulation_steps(micro_opa_data, cache_dir, tmp_path):
    """PPO's own loop: each process rolls out half of the step's prompts, advantages are whitened over both halves
    and gradients averaged, so with greedy sampling (the same captions however the prompts are split) and one row
    per micro-batch 2 processes x 2 micro-batches train what 1 process x 4 does."""
    from align.recipes import ppo
    from data_builders.configs import RolloutSettings
    from tests.align.recipes.test_ppo import _cfg

    policy, _ = micro_opa_data

    def cfg(name, accum):
        c = _cfg(policy, None, cache_dir, tmp_path / name, steps=3, reward="oracle")
        c.rollout = RolloutSettings(temperature=1.0, top_k=1, max_new_tokens=8, batch_size=8)
        c.optim = OptimConfig(lr=5e-3, warmup_steps=0, max_steps=3, batch_size=1, grad_accum=accum)
        return c

    single = ppo.main(cfg("one", 4))
    double = launch(cfg("two", 2), tmp_path / "two.yaml")
    assert_same_training(single, double, ("loss", "policy_loss", "value_loss", "reward/score", "kl"))
    assert_same_weights(Path(single["final"]), Path(double["final"]))
    names = sorted(p.name for p in Path(double["final"]).parent.iterdir())
    assert names == ["align_config.yaml", "checkpoint-2", "checkpoint-3", "final", "train.log", "train_summary.json"]


@pytest.fixture(scope="module")
def reward_pairs(micro_opa_data, tmp_path_factory, cache_dir):
    """(the micro policy, reward-model pairs ranked by ToyWorld's truth), as tests/align/recipes/test_reward_model."""
    from data_builders.configs import RewardPairsConfig, RolloutSettings
    from data_builders.reward_pairs import build
    from data_builders.toyworld_data import toyworld_prompts
    from tests.conftest import SMALL_WORLD
    from tests.data_builders.test_reward_pairs import TruthEngine

    out = tmp_path_factory.mktemp("reward_pairs")
    cfg = RewardPairsConfig(output_dir=str(out), world=SMALL_WORLD, cache_dir=str(cache_dir), limit=16, samples=3,
                            rollout=RolloutSettings(batch_size=16))  # fmt: skip
    return micro_opa_data[0], build(cfg, TruthEngine(toyworld_prompts(cfg)))["dataset"]


def test_reward_model_two_processes_equal_one_with_two_accumulation_steps(reward_pairs, tmp_path):
    from align.recipes import reward_model
    from tests.align.recipes.test_reward_model import _cfg

    policy, dataset = reward_pairs

    def cfg(name, accum):
        c = _cfg(policy, dataset, tmp_path / name, steps=3)
        c.run.logging_steps = 1
        c.optim = OptimConfig(lr=5e-3, warmup_steps=0, max_steps=3, batch_size=2, grad_accum=accum)
        return c

    single = reward_model.main(cfg("one", 2))
    double = launch(cfg("two", 1), tmp_path / "two.yaml")
    assert_same_training(single, double, LOGGED)
    assert double["held_out"] == pytest.approx(single["held_out"], abs=1e-5)
    a, b = (load_file(str(Path(r["final"]) / "reward_head.safetensors")) for r in (single, double))
    assert all((a[k] - b[k]).abs().max() <= 1e-5 for k in a)


def test_grpo_runs_as_two_processes_and_the_main_one_writes_the_run(micro_opa_data, cache_dir, tmp_path):
    """TRL's GRPOTrainer spreads the groups over the processes itself; the run directory is the main process's."""
    from tests.align.recipes.test_grpo import _cfg

    cfg = _cfg(micro_opa_data[0], cache_dir, tmp_path / "grpo", reward="oracle")
    summary = launch(cfg, tmp_path / "grpo.yaml")
    assert len(history(summary, "loss")) == 2 and Path(summary["final"], "model.safetensors").is_file()
    names = sorted(p.name for p in (tmp_path / "grpo").iterdir())
    assert names == ["README.md", "align_config.yaml", "checkpoint-2", "final", "train.log", "train_summary.json"], (
        names
    )  # README: TRL's model card
