"""`align build-data` with an OpenAI-compatible expert that fails (issue 16): the build keeps every finished row,
says how many failed and why, exits 1 (0 with --allow-failures), and a rerun once the server is healthy asks again
for exactly the failed rows and exits 0 with all of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.cli import main
from align.core.models import save_policy
from tests.conftest import SMALL_WORLD
from tests.data_builders.test_openai_expert import GOOD
from tests.openai_server import kill_cli_after, openai_server_fixture  # noqa: F401  (the openai_server fixture)

REPO = Path(__file__).resolve().parents[3]


def build_argv(config: str, micro_model, out, cache_dir, server, *extra) -> list[str]:
    """`align build-data <config>` on the micro policy and the small world, its endpoint the fake server."""
    model, processor = micro_model
    policy = save_policy(model, processor, out.parent / "policy")
    world = [f"world.{k}={getattr(SMALL_WORLD, k)}" for k in ("seed", "n_train", "n_val", "n_test")]
    return [
        "build-data", str(REPO / "configs/toy" / config), f"policy={policy}", f"output_dir={out}",
        f"cache_dir={cache_dir}", *world, f"openai.base_url={server.base_url}", "openai.api_key_env=null",
        "openai.max_retries=0", *extra,
    ]  # fmt: skip


@pytest.fixture
def argv(micro_model, tmp_path, cache_dir, openai_server) -> list[str]:
    extra = ("limit=6", "rollout.max_new_tokens=8", "expert=openai", "concurrency=1")
    return build_argv("opa_dpo_data.yaml", micro_model, tmp_path / "out", cache_dir, openai_server, *extra)


def test_a_build_with_failed_rows_exits_1_and_a_healthy_rerun_recovers_them(openai_server, argv, tmp_path, capsys):
    openai_server.script = [("json", GOOD)]  # the first row is corrected, the other five fail
    openai_server.default = ("status", 500)
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "5 items failed (InternalServerError: 5)" in captured.err and "rerun" in captured.err
    assert "[build] done 1, failed 5 (InternalServerError: 5), skipped 0; 1 paid requests, 100 + 20" in captured.err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["expert"]["ok"] == 1 and summary["dropped"] == {"expert_failed": 5}

    openai_server.default = ("json", GOOD)
    assert main(argv) == 0  # the fault cleared: only the 5 failed rows are asked again
    assert len(openai_server.requests) == 6 + 5
    assert "[build] done 6, failed 0, skipped 0; 6 paid requests, 600 + 120 tokens" in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["expert"]["ok"] == 6 and summary["expert"]["cached"] == 1 and not summary["expert"]["failures"]


def test_allow_failures_keeps_exit_0(openai_server, argv, capsys):
    openai_server.script = [("json", GOOD)]
    assert main([*argv, "--allow-failures"]) == 0
    assert "5 items failed" in capsys.readouterr().err


def test_a_rejected_key_stops_the_build_with_one_line(openai_server, argv, capsys):
    openai_server.default = ("status", 401)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: expert 'gpt-4o' at http://127.0.0.1" in err and "AuthenticationError" in err
    assert len(openai_server.requests) <= 2  # of 6 rows: the rejected one and at most one the worker had started


def test_a_build_killed_mid_expert_resumes_losing_nothing(openai_server, argv, tmp_path):
    """kill -9 while expert requests are in flight; the rerun keeps every reply that came back before the kill,
    repeats at most `concurrency` paid requests, and ends with every row exactly once."""
    import collections

    from datasets import load_from_disk

    argv = [a if not a.startswith("concurrency=") else "concurrency=2" for a in argv]
    openai_server.default = ("sleep", 0.4, ("json", GOOD))
    assert kill_cli_after(openai_server, argv, REPO, requests=4) >= 4, "the build never reached the expert"

    openai_server.default = ("json", GOOD)
    assert main(argv) == 0
    rows = load_from_disk(str(tmp_path / "out" / "dataset"))
    assert len(rows) == 6 and len(set(rows["id"])) == 6  # 0 rows lost, 0 duplicated
    asked = collections.Counter(json.dumps(r["messages"][1]["content"][0]) for r in openai_server.requests)
    assert len(asked) == 6 and sum(n - 1 for n in asked.values()) <= 2  # at most `concurrency` paid twice


def rlaif_argv(micro_model, tmp_path, cache_dir, server, *extra) -> list[str]:
    extra = ("samples=2", "labeler=openai", "concurrency=2", *extra)
    return build_argv("rlaif_v_data.yaml", micro_model, tmp_path / "rlaif", cache_dir, server, *extra)


def test_an_rlaif_v_build_whose_labeler_fails_says_so_and_a_rerun_checks_the_rest(
    openai_server, micro_model, tmp_path, cache_dir, capsys
):
    argv = rlaif_argv(micro_model, tmp_path, cache_dir, openai_server, "limit=3", "rollout.max_new_tokens=8")
    openai_server.default = ("status", 503)
    assert main(argv) == 2  # nothing checked, so no pair: one error line, and the work so far is kept
    captured = capsys.readouterr()
    assert "[build] done 0, failed 6 (labeler_failed: 6)" in captured.err and "no preference pair" in captured.err
    failed_requests = len(openai_server.requests)
    assert failed_requests > 0

    openai_server.default = ("logprobs", [("Yes", -0.1), ("No", -2.5)])
    code = main(argv)
    assert "[build] done 6, failed 0" in capsys.readouterr().err  # every response checked once the labeler answers
    assert code in (0, 2)  # 2 only when no pair differs in score (a micro policy's captions may all tie)
    paid = json.loads((tmp_path / "rlaif" / "summary.json").read_text())["paid"]
    answered = len(openai_server.requests) - failed_requests
    expected = {"prompt_tokens": 100 * answered, "completion_tokens": 20 * answered}
    assert paid["this_run"] == paid["all_runs"] == expected
    main(argv)  # nothing left to ask: this run pays nothing, the build's total stays
    again = json.loads((tmp_path / "rlaif" / "summary.json").read_text())["paid"]
    assert again["this_run"]["prompt_tokens"] == 0 and again["all_runs"] == paid["all_runs"]


def test_an_rlaif_v_build_killed_mid_labeling_resumes_losing_nothing(openai_server, micro_model, tmp_path, cache_dir):
    """kill -9 with labeler requests in flight: every answer that came back is kept (cached), the rerun repeats at
    most `concurrency` paid requests, and every response ends up checked exactly once."""
    extra = ("limit=4", "rollout.max_new_tokens=16", "--allow-failures")
    argv = rlaif_argv(micro_model, tmp_path, cache_dir, openai_server, *extra)
    answer = ("logprobs", [("Yes", -0.1), ("No", -2.5)])
    openai_server.default = ("sleep", 0.3, answer)
    kill_cli_after(openai_server, argv, REPO, requests=4)
    before_kill = len(openai_server.requests)
    assert before_kill >= 4, "the build never reached the labeler"

    openai_server.default = answer
    main(argv)  # exit 0, or 2 when the micro policy's captions give no pair: the feedback is what is checked here
    feedback = [json.loads(line) for line in (tmp_path / "rlaif" / "feedback.jsonl").read_text().splitlines()]
    assert len(feedback) == 8 and len({f["id"] for f in feedback}) == 8  # 4 prompts x 2 samples, each once
    first, second = ({json.dumps(r["messages"]) for r in part} for part in
                     (openai_server.requests[:before_kill], openai_server.requests[before_kill:]))  # fmt: skip
    assert len(first & second) <= 2  # asked again after the kill: at most the `concurrency` in flight
