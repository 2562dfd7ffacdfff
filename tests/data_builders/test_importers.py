"""Public RLAIF-V-style rows as OPA-DPO prompts: parquet, save_to_disk and jsonl sources; bad rows named."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, Features, Image, Value

from data_builders.configs import OPADataConfig
from data_builders.importers import PublicRowError, public_prompts
from data_builders.toyworld import image_to_png, render
from data_builders.toyworld_data import objects_from_json

FEATURES = Features(
    {
        "idx": Value("string"),
        "image": Image(),
        "question": Value("string"),
        "chosen": Value("string"),
        "rejected": Value("string"),
    }
)


def rows(small_world, n=3):
    import numpy as np

    out = []
    for i, row in enumerate(small_world["train"].select(range(n))):
        png = image_to_png(render(objects_from_json(row["objects"]), np.random.default_rng(i), 10.0))
        out.append(
            {
                "idx": f"pub-{i}",
                "image": {"bytes": png, "path": None},
                "question": "Describe the image.",
                "chosen": row["caption"],
                "rejected": "a kite.",
            }
        )
    return out


def test_parquet_and_save_to_disk_give_the_same_prompts(small_world, tmp_path):
    data = Dataset.from_list(rows(small_world), features=FEATURES)
    data.to_parquet(str(tmp_path / "rlaifv.parquet"))
    data.save_to_disk(str(tmp_path / "rlaifv"))
    from_parquet = public_prompts(tmp_path / "rlaifv.parquet")
    assert from_parquet == public_prompts(tmp_path / "rlaifv")
    first = from_parquet[0]
    assert first["id"] == "pub-0" and first["image"].startswith(b"\x89PNG")
    assert first["reference"] == small_world["train"][0]["caption"] and first["offpolicy"] == "a kite."
    assert len(public_prompts(tmp_path / "rlaifv", limit=2)) == 2


def test_jsonl_with_relative_image_paths(small_world, tmp_path):
    lines = []
    for r in rows(small_world, 2):
        (tmp_path / f"{r['idx']}.png").write_bytes(r["image"]["bytes"])
        lines.append(json.dumps({**r, "image": f"{r['idx']}.png"}))
    (tmp_path / "rows.jsonl").write_text("\n".join(lines))
    assert [p["id"] for p in public_prompts(tmp_path / "rows.jsonl")] == ["pub-0", "pub-1"]


def test_bad_sources_are_named(small_world, tmp_path):
    Dataset.from_list([{"question": "q", "chosen": "c"}]).to_parquet(str(tmp_path / "noimage.parquet"))
    with pytest.raises(PublicRowError, match="noimage.parquet: missing column"):
        public_prompts(tmp_path / "noimage.parquet")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "broken.jsonl").write_text(
        json.dumps({"idx": "x", "image": "empty.png", "question": "q", "chosen": "c"})
    )
    with pytest.raises(PublicRowError, match=r"row 0 \(x\): no image bytes"):
        public_prompts(tmp_path / "broken.jsonl")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        public_prompts(tmp_path / "nope.parquet")


def test_public_prompts_need_the_openai_expert():
    with pytest.raises(ValueError, match="set expert: openai"):
        OPADataConfig(prompts="rows.parquet")
    assert OPADataConfig(prompts="rows.parquet", expert="openai").prompts == "rows.parquet"
