"""Turn `{id, image, prompt, response}` rows (optionally with `context`, the earlier turns of a conversation) into
training tensors without ever cutting image tokens, and the collators that batch them (SFT rows; every response
and image view a preference record needs).

Rules (a known failure of general trainers is truncating through the image tokens and then training on rows
whose image no longer matches its text):
- over-long rows lose *response* tokens from the end;
- a row whose prompt and image tokens alone reach `max_length` is skipped and counted, never cut;
- a row whose image-token count differs from what the model's vision tower produces raises
  `ImageTokenMismatch` naming the row and both counts;
- a row without a decodable image raises `DataError` naming the row.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable

import numpy as np
import torch
from datasets import Image as DatasetImage
from PIL import Image

from align.core.masking import mask_blocks, mask_random
from data_builders.progress import bar
from data_builders.spans import span_token_weights


class DataError(ValueError):
    """A dataset row is unusable. The message names the row."""


class ImageTokenMismatch(DataError):
    """The text of a row holds a different number of image tokens than the model makes image features."""


def user_prompt(processor, prompt: str, context: list[dict] | None = None) -> str:
    """The model's chat-formatted prompt with one image placeholder before the text, ending where the reply starts.
    `context`: the earlier turns `[{prompt, response}]` of a multi-turn conversation, rendered before `prompt`;
    the image placeholder then goes before the first turn's text."""
    messages = []
    for turn in [*(context or []), {"prompt": prompt, "response": None}]:
        image = [] if messages else [{"type": "image"}]
        messages.append({"role": "user", "content": [*image, {"type": "text", "text": turn["prompt"]}]})
        if turn["response"] is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": turn["response"]}]})
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def to_pil(image, row_id: str) -> Image.Image:
    """Accept a PIL image, `{"bytes": ...}` as datasets stores it, or raw bytes; anything else names the row.
    An RGB PIL image is returned as it is (not copied), so rows may share one."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    data = image.get("bytes") if isinstance(image, dict) else image
    if isinstance(image, dict) and data is None and image.get("path"):
        try:
            return Image.open(image["path"]).convert("RGB")
        except OSError as e:
            raise DataError(f"row {row_id}: cannot open image file {image['path']!r}: {e}") from e
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise DataError(f"row {row_id}: no image (got {type(image).__name__}); every row needs one image")
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except OSError as e:
        raise DataError(f"row {row_id}: image bytes cannot be decoded: {e}") from e


def image_seq_length(model_config) -> int:
    """Image features the vision tower + projector produce per image (LLaVA-1.5: 576)."""
    return int(model_config.image_seq_length)


@dataclasses.dataclass
class EncodeStats:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    skipped_too_long: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.kept}/{self.rows} rows kept, {self.truncated} responses truncated, "
            f"{len(self.skipped_too_long)} skipped (prompt+image tokens >= max_length)"
        )


def encode_row(processor, row: dict, max_length: int, features_per_image: int, _prompt_cache=None) -> dict | None:
    """Tokenize one row. Returns `{id, input_ids, labels, image, truncated}`, or None if the prompt alone is too long.

    A row may carry `context`, the earlier turns `[{prompt, response}]` of its conversation: they are prompt
    tokens (not trained on; see `user_prompt`). The prompt's token ids depend on the image only through its size
    (how many image tokens the processor expands `<image>` into), so they are memoised per (context, prompt,
    image size) when a cache dict is given.
    """
    row_id = str(row.get("id", "?"))
    image = to_pil(row.get("image"), row_id)
    context = row.get("context") or []
    key = (row["prompt"], image.size, tuple((turn["prompt"], turn["response"]) for turn in context))
    if _prompt_cache is None or key not in _prompt_cache:
        text = user_prompt(processor, row["prompt"], context)
        enc = processor(images=[image], text=[text], return_tensors=None)
        prompt_ids = list(enc["input_ids"][0])
        if _prompt_cache is not None:
            _prompt_cache[key] = prompt_ids
    else:
        prompt_ids = _prompt_cache[key]
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    n_image_tokens = prompt_ids.count(image_token_id)
    if n_image_tokens != features_per_image:
        raise ImageTokenMismatch(
            f"row {row_id}: the prompt holds {n_image_tokens} image tokens but the model makes {features_per_image} "
            "image features per image; check the processor's patch_size / num_additional_image_tokens"
        )
    if len(prompt_ids) >= max_length:
        return None
    response_ids = processor.tokenizer(row["response"] + processor.tokenizer.eos_token, add_special_tokens=False)[
        "input_ids"
    ]
    room = max_length - len(prompt_ids)
    return {
        "id": row_id,
        "input_ids": prompt_ids + response_ids[:room],
        "labels": [-100] * len(prompt_ids) + response_ids[:room],
        "image": image,
        "truncated": len(response_ids) > room,
    }


def shared_images(dataset):
    """The rows of `dataset` with each distinct image decoded once and shared by the rows that hold it (a ToyWorld
    image has a caption and a dozen questions: decoding it per row took most of the encoding time, and kept a
    dozen copies). A `datasets.Dataset` is read with its images left encoded, then decoded here."""
    features = getattr(dataset, "features", None) or {}
    if isinstance(features.get("image"), DatasetImage) and features["image"].decode:
        dataset = dataset.cast_column("image", DatasetImage(decode=False))
    decoded = {}
    for i, row in enumerate(dataset):
        image = row.get("image")
        key = None
        if isinstance(image, dict):
            key = image.get("bytes") or (("path", image["path"]) if image.get("path") else None)
        if key is not None:
            if key not in decoded:
                decoded[key] = to_pil(image, str(row.get("id", i)))
            row = {**row, "image": decoded[key]}
        yield row


def encode_dataset(dataset, processor, max_length: int, features_per_image: int, desc: str = "encode"):
    """Encode every row; returns (encoded rows, EncodeStats). Too-long rows are skipped and listed in the stats."""
    stats, out, cache = EncodeStats(), [], {}
    for row in bar(shared_images(dataset), desc=desc, total=len(dataset)):
        stats.rows += 1
        enc = encode_row(processor, row, max_length, features_per_image, cache)
        if enc is None:
            stats.skipped_too_long.append(str(row.get("id", stats.rows - 1)))
            continue
        stats.kept += 1
        stats.truncated += enc.pop("truncated")
        out.append(enc)
    if not out:
        raise DataError(f"no usable rows: all {stats.rows} rows exceed max_length={max_length}; raise data.max_length")
    return out, stats


def response_offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    """Character offsets of the response's tokens, tokenized as `encode_row` does (no special tokens)."""
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


def response_weights(offsets: list, spans: list, n: int) -> list[float]:
    """Weights of the n trained response tokens: each token its span's weight, the EOS token 1, cut like the
    response (`encode_row` drops tokens from the end)."""
    return (span_token_weights(offsets, spans) + [1.0])[:n]


class RowsDataset(torch.utils.data.Dataset):
    """A list of encoded rows as a torch Dataset (what `Trainer` takes)."""

    def __init__(self, rows: list):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {**self.rows[i], "row_index": i}  # the row's place: what its random image mask is drawn from


def pad_right(rows: list[list], width: int, fill, dtype) -> torch.Tensor:
    """Stack variable-length lists into a [len(rows), width] tensor, filling the right with `fill`."""
    out = torch.full((len(rows), width), fill, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=dtype)
    return out


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices of `lengths` grouped into bins whose lengths sum to at most `capacity` (a
    longer row gets a bin of its own). Bins are filled in order of decreasing length; each bin lists its rows in
    the order they went in."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((b for b, free in enumerate(room) if lengths[i] <= free), None)
        if slot is None:
            bins.append([i])
            room.append(capacity - lengths[i])
        else:
            bins[slot].append(i)
            room[slot] -= lengths[i]
    return bins


@dataclasses.dataclass
class VisionSFTCollator:
    """Right-pads encoded rows and runs the image processor; labels are -100 on prompt, image and padding.

    `packing` (with `max_length`, the bin size) concatenates rows into as few rows as fit instead (`pack_rows`),
    with position ids restarting at 0 for each row and no attention mask: transformers then lets each token attend
    only within its own row (its packed-sequence detection, which also needs `use_cache=False`). A bin's tail of
    padding restarts the position ids too, so it is a separate sequence nothing attends to. The images go in the
    order their rows appear, the order in which LLaVA places image features on `<image>` tokens."""

    processor: object
    packing: bool = False
    max_length: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.packing:
            return self.packed(rows)
        width = max(len(r["input_ids"]) for r in rows)
        pixels = self.processor.image_processor([r["image"] for r in rows], return_tensors="pt")["pixel_values"]
        return {
            "input_ids": pad_right(
                [r["input_ids"] for r in rows], width, self.processor.tokenizer.pad_token_id, torch.long
            ),
            "attention_mask": pad_right([[1] * len(r["input_ids"]) for r in rows], width, 0, torch.long),
            "labels": pad_right([r["labels"] for r in rows], width, -100, torch.long),
            "pixel_values": pixels,
        }

    def packed(self, rows: list[dict]) -> dict:
        lengths = [len(r["input_ids"]) for r in rows]
        bins = [[rows[i] for i in members] for members in pack_rows(lengths, self.max_length or max(lengths))]
        width = max(sum(len(r["input_ids"]) for r in members) for members in bins)
        ids, labels, positions = [], [], []
        for members in bins:
            used = sum(len(r["input_ids"]) for r in members)
            ids.append([t for r in members for t in r["input_ids"]])
            labels.append([t for r in members for t in r["labels"]])
            positions.append([p for r in members for p in range(len(r["input_ids"]))] + list(range(width - used)))
        pixels = self.processor.image_processor([r["image"] for m in bins for r in m], return_tensors="pt")
        return {
            "input_ids": pad_right(ids, width, self.processor.tokenizer.pad_token_id, torch.long),
            "labels": pad_right(labels, width, -100, torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            "pixel_values": pixels["pixel_values"],
            "use_cache": False,  # with a cache transformers skips the packed-sequence mask
        }


@dataclasses.dataclass
class PreferenceCollator:
    """Stacks every (response, image view) a record needs into one padded batch: row v*B + b is view v of record b.

    `token_weights` are each row's response-token weights (sentence-score weights on rollout and revision);
    `revision_error_weights` are the revision's error-type weights, used by the image-contrast pair."""

    processor: object
    views: tuple[str, ...]
    mask: str = "random"
    mask_ratio: float = 0.3
    seed: int = 0
    patch_size: int = 14
    epoch_of: Callable[[], int] | None = None  # the training epoch now (the recipe binds its trainer's state)

    def __call__(self, records: list[dict]) -> dict:
        pixels = self.processor.image_processor([r["image"] for r in records], return_tensors="pt")["pixel_values"]
        masked = None
        if any(v.endswith("_masked") for v in self.views):
            masked = torch.cat([self.masked(pixels[b : b + 1], r) for b, r in enumerate(records)])
        seqs = [r[v.removesuffix("_masked")] for v in self.views for r in records]
        width = max(len(s["input_ids"]) for s in seqs)
        resp = max(len(s["weights"]) for s in seqs)
        batch = {
            "input_ids": pad_right(
                [s["input_ids"] for s in seqs], width, self.processor.tokenizer.pad_token_id, torch.long
            ),
            "attention_mask": pad_right([[1] * len(s["input_ids"]) for s in seqs], width, 0, torch.long),
            "labels": pad_right([s["labels"] for s in seqs], width, -100, torch.long),
            "pixel_values": torch.cat([masked if v.endswith("_masked") else pixels for v in self.views]),
            "token_weights": pad_right([s["weights"] for s in seqs], resp, 0.0, torch.float),
        }
        # the reference's precomputed log-probs (align/core/ref_cache.py) where stored: not for the masked views,
        # whose masks are drawn per batch (their rows stay 0; the trainer computes them)
        cached = [not v.endswith("_masked") for v in self.views for _ in records]
        if all("ref_logps" in s for s, c in zip(seqs, cached) if c):
            logps = [s["ref_logps"] if c else [] for s, c in zip(seqs, cached)]
            batch["ref_logps"] = pad_right(logps, resp, 0.0, torch.float)
        if "revision" in self.views:
            batch["revision_error_weights"] = pad_right(
                [r["revision_error_weights"] for r in records], resp, 0.0, torch.float
            )
        return batch

    def masked(self, pixels: torch.Tensor, record: dict) -> torch.Tensor:
        """One image masked afresh each epoch, drawn from (seed, epoch, the record's row): the same mask whichever
        process, batch or accumulation step the record lands in, and after a resume."""
        epoch = self.epoch_of() if self.epoch_of is not None else 0
        key = np.random.SeedSequence([self.seed, epoch, record.get("row_index", 0)]).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(key))
        if self.mask == "random":
            return mask_random(pixels, ratio=self.mask_ratio, generator=gen)
        return mask_blocks(pixels, ratio=self.mask_ratio, block=self.patch_size, generator=gen)  # patch-sized
