"""`align demo` prints the committed bench figures beside its own table, for the models it trained."""

from __future__ import annotations

import json

from align.demo import EXPECTED, expected_table


def test_expected_table_reads_the_bench_json_for_the_models_of_the_run(tmp_path):
    stat = {"values": [0.1, 0.3], "mean": 0.2, "std": 0.1}
    bench = {"seeds": [0, 1], "machine": {"cpu": "a CPU"}, "models": {"base (SFT)": {"toyworld_chair.chair_i": stat}}}
    path = EXPECTED.parent / "measured-test.json"  # under the repo, as the real file is
    try:
        path.write_text(json.dumps(bench))
        table = expected_table(path, ["base (SFT)", "OPA-DPO"])
    finally:
        path.unlink()
    assert "seeds 0 1" in table and "a CPU" in table
    row = next(line for line in table.splitlines() if line.startswith("base (SFT)"))
    assert "20.0 ± 10.0" in row and row.count("-") >= 4  # CHAIR_i given, the other columns missing
    assert "OPA-DPO" not in table
    assert expected_table(tmp_path / "absent.json", ["base (SFT)"]) is None


def test_the_committed_demo_figures_name_every_model_the_demo_trains():
    bench = json.loads((EXPECTED / "demo.json").read_text())
    assert list(bench["models"]) == ["base (SFT)", "OPA step", "OPA-DPO", "off-policy DPO"]
    assert bench["machine"]["versions"]["torch"] and len(bench["seeds"]) >= 3
