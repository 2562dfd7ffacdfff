"""Row encoding: truncation never cuts image tokens; too-long rows are skipped and counted; clear row errors."""

from __future__ import annotations

import io

import numpy as np
import pytest

from align.core.data import DataError, ImageTokenMismatch, VisionSFTCollator, encode_dataset, encode_row
from align.core.models import build_tiny_processor
from data_builders import toyworld as tw
from tests.conftest import MICRO_SPEC

N_IMG = (MICRO_SPEC.image_size // MICRO_SPEC.patch_size) ** 2


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor(MICRO_SPEC)


def png_bytes():
    rng = np.random.default_rng(0)
    return tw.image_to_png(tw.render(tw.sample_scene(rng, tw.WorldConfig())[1], rng, 18.0))


def row(i=0, response="There is a red cup at the top left.", image="png"):
    return {
        "id": f"r{i}",
        "image": {"bytes": png_bytes(), "path": None} if image == "png" else image,
        "prompt": "Describe the image in detail.",
        "response": response,
    }


def test_long_response_is_cut_from_the_end_and_image_tokens_survive(processor):
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    full = encode_row(processor, row(), max_length=200, features_per_image=N_IMG)
    n_prompt = sum(label == -100 for label in full["labels"])
    cut = encode_row(processor, row(), max_length=n_prompt + 3, features_per_image=N_IMG)
    assert len(cut["input_ids"]) == n_prompt + 3 and cut["truncated"]
    assert cut["input_ids"].count(image_id) == N_IMG
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 3]  # the response lost its end, nothing else
    assert cut["labels"][n_prompt:] == full["labels"][n_prompt : n_prompt + 3]


def test_rows_whose_prompt_does_not_fit_are_skipped_and_counted(processor):
    rows = [row(0), row(1, response="yes")]
    full = encode_row(processor, rows[0], max_length=200, features_per_image=N_IMG)
    n_prompt = sum(label == -100 for label in full["labels"])
    with pytest.raises(DataError, match="all 2 rows exceed max_length"):
        encode_dataset(rows, processor, max_length=n_prompt, features_per_image=N_IMG)
    encoded, stats = encode_dataset(rows, processor, max_length=n_prompt + 1, features_per_image=N_IMG)
    assert stats.kept == 2 and stats.truncated == 2 and not stats.skipped_too_long
    rows.append({**row(2), "prompt": "Describe the image in detail. " * 20})
    encoded, stats = encode_dataset(rows, processor, max_length=n_prompt + 5, features_per_image=N_IMG)
    assert stats.skipped_too_long == ["r2"] and stats.kept == 2 and "1 skipped" in stats.summary()


def test_image_token_feature_mismatch_names_row_and_counts(processor):
    with pytest.raises(
        ImageTokenMismatch, match=rf"row r0: the prompt holds {N_IMG} image tokens but the model makes {N_IMG - 1}"
    ):
        encode_row(processor, row(), max_length=200, features_per_image=N_IMG - 1)


def test_row_without_image_names_the_row(processor):
    with pytest.raises(DataError, match="row r5: no image"):
        encode_row(processor, row(5, image=None), max_length=200, features_per_image=N_IMG)
    with pytest.raises(DataError, match="row r6: image bytes cannot be decoded"):
        encode_row(
            processor, row(6, image={"bytes": b"not a png", "path": None}), max_length=200, features_per_image=N_IMG
        )


def test_collator_pads_right_and_masks_labels(processor):
    encoded, _ = encode_dataset([row(0), row(1, response="yes")], processor, 200, N_IMG)
    batch = VisionSFTCollator(processor)(encoded)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    short = len(encoded[1]["input_ids"])
    assert (batch["labels"][1, short:] == -100).all() and (batch["attention_mask"][1, short:] == 0).all()
    assert batch["pixel_values"].shape == (2, 3, 48, 48)


def test_pil_images_are_accepted(processor):
    from PIL import Image

    img = Image.open(io.BytesIO(png_bytes()))
    assert encode_row(processor, row(image=img), 200, N_IMG)["image"].size == (48, 48)


def test_masked_views_draw_each_records_mask_from_its_row_and_epoch():
    """OPA-DPO's masked images: a record's mask depends on (seed, epoch, its row) only, so it is the same in any batch,
    on any process, after a resume; a new epoch draws a new one."""
    import torch
    from PIL import Image

    from align.core.data import PreferenceCollator, RowsDataset

    processor = build_tiny_processor(MICRO_SPEC)
    seq = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "weights": [1.0, 1.0]}
    rows = RowsDataset([{"image": Image.new("RGB", (48, 48), (40 * i, 90, 160)), "x": seq} for i in range(3)])
    epoch = {"now": 0}
    collate = PreferenceCollator(processor, ("x", "x_masked"), seed=5, epoch_of=lambda: epoch["now"])
    together = collate([rows[0], rows[1], rows[2]])["pixel_values"][3:]  # the masked view's rows
    apart = torch.cat([collate([rows[i]])["pixel_values"][1:] for i in (2, 0, 1)])[[1, 2, 0]]
    assert torch.equal(together, apart)
    epoch["now"] = 1
    assert not torch.equal(collate([rows[0]])["pixel_values"][1], together[0])
