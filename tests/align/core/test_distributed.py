"""The process helpers (align/core/distributed.py) in one process are no-ops, and PPO's whitening over processes
(`whiten(..., total=)`) is whitening over the batch the processes hold together. Two real processes:
tests/distributed."""

from __future__ import annotations

import torch

from align.core import distributed
from align.core.losses.ppo import whiten


def test_one_process_helpers_change_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.rank_and_world() == (0, 1) and distributed.is_main()
    x = torch.tensor([1.0, 2.0])
    assert distributed.all_sum(x) is x
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    distributed.average_gradients([p])
    assert torch.equal(p.grad, torch.full((2,), 3.0))
    assert distributed.mean_over_processes({"loss": 0.5}) == {"loss": 0.5}


def test_whitening_over_processes_is_whitening_over_their_joint_batch():
    g = torch.Generator().manual_seed(0)
    halves = [torch.randn(3, 5, generator=g) for _ in range(2)]
    masks = [torch.rand(3, 5, generator=g) > 0.3 for _ in range(2)]
    joint = whiten(torch.cat(halves), torch.cat(masks))

    def total_for(mine: int):
        """all_sum as process `mine` sees it: its value plus what the other process adds to the same reduction.
        whiten makes three, in order: the count, the sum, the squared deviations about the joint mean."""
        m = masks[1 - mine].float()
        joint_mean = (torch.cat(halves) * torch.cat(masks)).sum() / torch.cat(masks).sum()
        theirs = iter([m.sum(), (halves[1 - mine] * m).sum(), ((halves[1 - mine] - joint_mean) ** 2 * m).sum()])
        return lambda t: t + next(theirs)

    for mine in range(2):
        alone = whiten(halves[mine], masks[mine], total=total_for(mine))
        torch.testing.assert_close(alone, joint[3 * mine : 3 * mine + 3])


def test_fsdp_without_a_gpu_is_said(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    distributed.warn_unsharded_launch()
    assert "no GPU" in capsys.readouterr().out
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    distributed.warn_unsharded_launch()
    assert capsys.readouterr().out == ""
