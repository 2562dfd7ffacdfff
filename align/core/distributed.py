"""Which process this is, for recipes started once per device by `accelerate launch` (or torchrun), and plainly.

    accelerate launch --num_processes 8 -m align train CONFIG              # GPUs
    accelerate launch --multi_gpu --num_processes 2 -m align train CONFIG  # CPU: gloo (`--cpu` starts ONE process)

Every process trains; the run directory is written by the main process only (the config, final/, the summary, the
final eval), the others wait where they must read what it wrote. The state is accelerate's `PartialState`, created
as `transformers.TrainingArguments` creates it (on the CPU when there is no GPU), so both agree on the process group.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import timedelta

import torch
from accelerate import PartialState


def timeout_s() -> int:
    """How long a process waits at a barrier for the others: the main process alone may be building a round's data
    or evaluating a checkpoint meanwhile, which on a 7B model outlasts torch's 30 minutes. ALIGN_DIST_TIMEOUT
    seconds, 4 h by default."""
    return int(os.environ.get("ALIGN_DIST_TIMEOUT", 4 * 3600))


def state() -> PartialState:
    """The process group (created on first use; TrainingArguments makes the same one, with the same timeout)."""
    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=timeout_s()))


def launched() -> bool:
    """Whether this process is one of several started by a launcher (the env it sets), without starting anything."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    return not launched() or state().is_main_process


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if launched():
        state().wait_for_everyone()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (computing and storing what the others then read), the others after."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def quiet_other_processes() -> None:
    """Send the console output of every process but the main one to nowhere (each would print the same lines);
    errors still reach stderr. ALIGN_DEBUG=1 keeps it all."""
    if launched() and os.environ.get("RANK", "0") != "0" and not os.environ.get("ALIGN_DEBUG"):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, how many processes), (0, 1) when not launched."""
    return (state().process_index, state().num_processes) if launched() else (0, 1)


def device() -> torch.device:
    """This process's device: its own GPU under a launcher, else the GPU or the CPU."""
    if launched():
        return state().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of `x` over every process (x itself in one process); differentiable only in one process."""
    if not launched():
        return x
    out = x.detach().clone()
    torch.distributed.all_reduce(out)
    return out


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Each parameter's gradient replaced by its mean over the processes (what DDP does in backward), for a loop
    that calls backward on its own models; a parameter without a gradient counts as zero."""
    _, world = rank_and_world()
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad /= world


def broadcast_parameters(params: list[torch.nn.Parameter]) -> None:
    """The main process's values of `params` on every process (the start DDP makes from rank 0)."""
    if launched():
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, src=0)


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Each value's mean over the processes (the same keys on each), in the order given."""
    _, world = rank_and_world()
    if world == 1:
        return values
    keys = sorted(values)  # the same order on every process, whatever order each built its dict in
    total = all_sum(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device()))
    means = dict(zip(keys, total.tolist(), strict=True))
    return {k: means[k] / world for k in values}


def warn_unsharded_launch() -> None:
    """Say so when the launcher asked for FSDP on a machine without a GPU: the Trainer then runs on the CPU and the
    processes run plain DDP over gloo, each holding every weight."""
    if launched() and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not torch.cuda.is_available():
        print("[align] FSDP was asked for, but there is no GPU: the processes run DDP over gloo, unsharded")
