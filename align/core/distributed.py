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

import torch
from accelerate import PartialState


def state() -> PartialState:
    return PartialState(cpu=not torch.cuda.is_available())


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
