"""The OPA build's summary after a resume (issue 16, item 6): expert tokens and cost count every reply the rows use,
the ones an earlier run paid for (now cached) included; `paid_this_run` is what the last run sent."""

from __future__ import annotations

import pytest

from data_builders import opa_dpo
from data_builders.configs import OPADataConfig, RolloutSettings
from data_builders.endpoint import Usage
from data_builders.oracle import OracleExpert
from data_builders.toyworld_data import toyworld_prompts
from tests.conftest import SMALL_WORLD


class FixedEngine:
    name = "fixed"

    def generate(self, images, prompts, seed):
        return ["there is a red cup at the top left."] * len(prompts)


class PaidOracle(OracleExpert):
    """The oracle's reports at 100 prompt + 20 completion tokens a request; rows in `down` fail (the endpoint is
    down for them), which is transient: not cached, asked again on the next run."""

    def __init__(self, down: set[str]):
        self.down, self.asked = down, []

    def correct(self, request):
        self.asked.append(request.id)
        if request.id in self.down:
            raise ConnectionError("endpoint down")
        return super().correct(request)[0], Usage(100, 20)


def opa_config(tmp_path, cache_dir, limit: int) -> OPADataConfig:
    cfg = OPADataConfig(
        output_dir=str(tmp_path / "opa"),
        world=SMALL_WORLD,
        cache_dir=str(cache_dir),
        limit=limit,
        rollout=RolloutSettings(batch_size=4),
        concurrency=1,
    )
    cfg.openai.price_in, cfg.openai.price_out = 1.0, 10.0  # USD per 1M tokens
    return cfg


def run(cfg, monkeypatch, expert: PaidOracle) -> dict:
    monkeypatch.setattr(opa_dpo, "make_expert", lambda cfg: expert)
    return opa_dpo.build(cfg, FixedEngine())["expert"]


def test_a_rerun_with_every_reply_cached_still_reports_what_the_rows_cost(tmp_path, cache_dir, monkeypatch):
    cfg = opa_config(tmp_path, cache_dir, limit=10)
    first = run(cfg, monkeypatch, PaidOracle(down=set()))
    assert first["ok"] == 10 and first["prompt_tokens"] == 1000 and first["completion_tokens"] == 200

    expert = PaidOracle(down=set())
    again = run(cfg, monkeypatch, expert)  # a rerun sends nothing, and still reports what the rows cost
    assert expert.asked == [] and again["cached"] == 10
    assert again["prompt_tokens"] == 1000 and again["completion_tokens"] == 200
    assert again["cost_usd"] == pytest.approx((1000 * 1.0 + 200 * 10.0) / 1e6)
    assert again["paid_this_run"] == {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}


def test_a_resume_after_some_rows_failed_counts_both_runs(tmp_path, cache_dir, monkeypatch):
    cfg = opa_config(tmp_path, cache_dir, limit=6)
    ids = [p["id"] for p in toyworld_prompts(cfg)]
    first = run(cfg, monkeypatch, PaidOracle(down=set(ids[:2])))  # 4 rows paid in the first run, 2 failed
    assert first["ok"] == 4 and first["prompt_tokens"] == 400

    expert = PaidOracle(down=set())
    resumed = run(cfg, monkeypatch, expert)
    assert sorted(expert.asked) == sorted(ids[:2])  # only the failed rows are asked again
    assert resumed["prompt_tokens"] == 600 and resumed["completion_tokens"] == 120  # the whole build's
    assert resumed["paid_this_run"]["prompt_tokens"] == 200 and resumed["paid_this_run"]["completion_tokens"] == 40
    assert resumed["cost_usd"] == pytest.approx((600 * 1.0 + 120 * 10.0) / 1e6)
