"""`align build-data` with the policy served behind an OpenAI-compatible API (`served:`): the OPA-DPO data build
rolls ToyWorld prompts out through the loopback server, the oracle corrects the replies, and a rerun of the killed
build reads the policy's replies from its cache instead of asking again."""

from __future__ import annotations

import json
from pathlib import Path

from align.cli import main
from tests.conftest import SMALL_WORLD
from tests.openai_server import openai_server_fixture  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[3]
EXPECTED = [
    "align_config.yaml",
    "build.log",
    "dataset",
    "expert_cache",
    "policy_cache",
    "rollouts.jsonl",
    "summary.json",
]


def test_opa_data_built_from_a_served_policy(openai_server, tmp_path, cache_dir):
    openai_server.default = ("text", "This is a kitchen scene. There is a red cup at the top. There is also a spoon.")
    out = tmp_path / "opa"
    world = [f"world.{k}={getattr(SMALL_WORLD, k)}" for k in ("seed", "n_train", "n_val", "n_test")]
    served = f"served={{base_url: '{openai_server.base_url}', model: policy, max_retries: 0}}"
    argv = ["build-data", str(REPO / "configs/toy/opa_dpo_data.yaml"), f"output_dir={out}", "limit=6",
            f"cache_dir={cache_dir}", served, *world]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(openai_server.requests) == 6 and {r["model"] for r in openai_server.requests} == {"policy"}
    assert summary["rows_out"] >= 1
    assert sorted(p.name for p in out.iterdir()) == EXPECTED, sorted(p.name for p in out.iterdir())
    for name in ("rollouts.jsonl", "summary.json", "dataset"):  # as if killed before the rollouts were written
        path = out / name
        path.unlink() if path.is_file() else __import__("shutil").rmtree(path)
    assert main(argv) == 0  # resumes: every reply is read from policy_cache/, none asked again
    again = json.loads((out / "summary.json").read_text())
    assert len(openai_server.requests) == 6 and again["rows_out"] == summary["rows_out"]
