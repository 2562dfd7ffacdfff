"""What a bench's figures depend on besides the code: package versions, Python, the CPU and its core count.
Every bench writes this into its results so that figures from two machines are read side by side correctly."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

TRAINING_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(packages: tuple[str, ...] = TRAINING_PACKAGES) -> dict:
    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "versions": {p: installed(p) for p in packages},
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cores": cores,
    }
