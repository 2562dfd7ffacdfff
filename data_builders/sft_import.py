"""SFT rows from the user's data: LLaVA-format conversations, or an HF dataset of `{image, prompt, response}`.

    rows, report = import_sft("data/llava_v1_5_mix665k.json", "llava_json", image_root="data")
    rows, report = import_sft("data/my_sft.parquet", "hf", fields=("question", "answer", "image"))

Both return an HF Dataset of `{id, image, prompt, response, context}` (what align/core/data.py encodes) and a
report of what was read and skipped. Nothing is downloaded.

- llava_json: a JSON list (or a .jsonl file) of `{"id", "image": "relative/path.jpg", "conversations":
  [{"from": "human", "value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}, ...]}` as LLaVA's
  llava_v1_5_mix665k.json. Multi-turn: a conversation of N human/gpt pairs becomes N rows; row k trains on the
  k-th reply, with the k-1 earlier turns as its `context` (prompt tokens, not trained on), and the image before
  the first human turn's text whichever turn held `<image>`. That is the loss of training every reply in one
  sequence, as LLaVA does, at the cost of encoding the shared prefix N times; a row whose context no longer fits
  `data.max_length` is skipped by the encoder and counted there. A trailing human turn with no reply is dropped.
- hf: a `save_to_disk` folder, .parquet, .jsonl or .json list with an image column (bytes, `{bytes, path}` or a
  path) and prompt / response text columns (names given by `fields`); one row each, no context.

Image paths are resolved against `image_root` (default: the data file's folder; a save_to_disk folder: itself).
Every image is decoded once here, so a broken one is skipped at import, not met mid-run. A bad item is skipped
and counted by reason, never raised (a .json file that does not parse is the exception: nothing in it can be
read): SKIP_REASONS below; `examples` say where (`<file>:<line>` in a .jsonl file, `<file>[index]` otherwise).
Rows keep an image given as a path as that path (decoded when encoded), so a large set is not held as bytes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from datasets import Dataset, Features, Image, List, Value

from data_builders.importers import _read
from data_builders.preference_import import _IMAGE_TOKEN, SkipRow, _checked_image, _text

SOURCES = ("llava_json", "hf")
SKIP_REASONS = (
    "malformed_row",  # a .jsonl line or list entry that is not a JSON object, or turns that do not alternate
    "missing_field",  # no conversations / prompt / response / image value, or one of the wrong type
    "text_only",  # a LLaVA item without an image: every row needs one
    "multi_image",  # a LLaVA item with a list of images: a row holds one
    "missing_image_token",  # a LLaVA item with an image but no `<image>` in its conversation
    "extra_image_token",  # more than one `<image>` (or one in a reply): the text names images the row lacks
    "empty_prompt",
    "empty_response",
    "bad_image",  # the image file does not exist, or the image does not decode
)
MAX_SKIP_EXAMPLES = 50
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
SFT_FEATURES = Features(
    {
        "id": Value("string"),
        "image": Image(),
        "prompt": Value("string"),
        "response": Value("string"),
        "context": List({"prompt": Value("string"), "response": Value("string")}),
    }
)


def llava_pairs(conversations) -> list[tuple[str, str]]:
    """The (human, gpt) turn pairs of a LLaVA conversation with `<image>` taken out; SkipRow when the turns do
    not alternate human first, hold no pair, name no image or more than one, or a prompt or reply is empty."""
    if not isinstance(conversations, list):
        raise SkipRow("missing_field", "conversations: expected a list of {from, value}")
    values = []
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in ROLES:
            raise SkipRow("malformed_row", f"conversations[{k}]: expected {{from: human|gpt, value: text}}")
        if ROLES[turn["from"]] != ("user", "assistant")[k % 2]:
            raise SkipRow("malformed_row", f"conversations[{k}]: a {turn['from']} turn; turns alternate, human first")
        values.append(turn["value"])
    pairs = list(zip(values[0::2], values[1::2]))  # a trailing question without its reply trains nothing
    if not pairs:
        raise SkipRow("missing_field", "conversations: no human/gpt turn pair")
    in_prompts = sum(prompt.count("<image>") for prompt, _ in pairs)
    if in_prompts == 0:
        raise SkipRow("missing_image_token", "conversations: the item has an image but no turn holds <image>")
    if in_prompts > 1 or any("<image>" in reply for _, reply in pairs):
        raise SkipRow("extra_image_token", "conversations: more than one <image> (a row holds one image)")
    pairs = [(_IMAGE_TOKEN.sub(" ", prompt).strip(), reply.strip()) for prompt, reply in pairs]
    for k, (prompt, reply) in enumerate(pairs):
        if not prompt:
            raise SkipRow("empty_prompt", f"conversations[{2 * k}]: no text besides <image>")
        if not reply:
            raise SkipRow("empty_response", f"conversations[{2 * k + 1}]: empty reply")
    return pairs


def conversation_rows(item_id: str, image, pairs: list[tuple[str, str]]) -> list[dict]:
    """One row per turn pair: row k trains on reply k with the earlier turns as its context."""
    rows = []
    for k, (prompt, response) in enumerate(pairs):
        context = [{"prompt": p, "response": r} for p, r in pairs[:k]]
        rows.append(
            {"id": f"{item_id}/{k}", "image": image, "prompt": prompt, "response": response, "context": context}
        )
    return rows


def _image(value, image_dir: Path) -> dict:
    """The row's image as datasets stores it, checked to exist and decode: a path stays a path, bytes stay bytes."""
    data = _checked_image(value, image_dir)
    path = value.get("path") if isinstance(value, dict) and not value.get("bytes") else value
    if isinstance(path, str):
        return {"bytes": None, "path": str((image_dir / path).resolve())}
    return {"bytes": data, "path": None}


def _item_id(item: dict, index: int, path: Path) -> str:
    value = item.get("id")
    return f"{path.stem}-{index}" if value is None or value == "" else str(value)


def llava_item_rows(item, index: int, path: Path, image_dir: Path) -> list[dict]:
    """The rows of one LLaVA-format item, or SkipRow."""
    if not isinstance(item, dict):
        raise SkipRow("malformed_row", "not a JSON object")
    image = item.get("image")
    if image is None or image == "":
        raise SkipRow("text_only", "no image: a text-only item (every row needs one image)")
    if isinstance(image, list):
        raise SkipRow("multi_image", f"image: a list of {len(image)} images (a row holds one)")
    pairs = llava_pairs(item.get("conversations"))
    return conversation_rows(_item_id(item, index, path), _image(image, image_dir), pairs)


def hf_item_rows(row, index: int, path: Path, image_dir: Path, fields: tuple[str, str, str]) -> list[dict]:
    """The row of one `{image, prompt, response}` record (column names: `fields`), or SkipRow."""
    if not isinstance(row, dict):
        raise SkipRow("malformed_row", "not a JSON object")
    prompt_field, response_field, image_field = fields
    prompt, response = _text(row, prompt_field), _text(row, response_field)
    if prompt.count("<image>") > 1 or "<image>" in response:
        raise SkipRow("extra_image_token", f"{prompt_field}: more than one <image> (a row holds one image)")
    prompt, response = _IMAGE_TOKEN.sub(" ", prompt).strip(), response.strip()
    if not prompt:
        raise SkipRow("empty_prompt", f"{prompt_field}: empty")
    if not response:
        raise SkipRow("empty_response", f"{response_field}: empty")
    image = _image(row.get(image_field), image_dir)
    return [{"id": _item_id(row, index, path), "image": image, "prompt": prompt, "response": response, "context": []}]


def _items(path: Path, columns: tuple[str, ...], image_field: str) -> Iterator[tuple[str, object]]:
    """(where, item) per item: .jsonl line by line (a line that is not JSON comes as a SkipRow), a .json list,
    or a columnar source (save_to_disk folder, .parquet) that must have `columns`."""
    if path.suffix == ".jsonl":
        for number, line in enumerate(path.read_bytes().split(b"\n"), 1):
            if line.strip():
                try:
                    yield f"{path}:{number}", json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    yield f"{path}:{number}", SkipRow("malformed_row", f"not a JSON line ({err})")
        return
    if path.suffix == ".json":
        try:
            items = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err}); expected a JSON list of items") from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of items, got a {type(items).__name__}")
        for index, item in enumerate(items):
            yield f"{path}[{index}]", item
        return
    data = _read(path)
    missing = [c for c in columns if c not in data.column_names]
    if missing:
        raise ValueError(
            f"{path}: no column(s) {', '.join(missing)} (it has {', '.join(data.column_names)}); "
            "name the columns with data.prompt_field / response_field / image_field"
        )
    if isinstance(data.features.get(image_field), Image):
        data = data.cast_column(image_field, Image(decode=False))
    for index, row in enumerate(data):
        yield f"{path}[{index}]", row


def _checked_path(path: str | Path, source: str, image_root) -> tuple[Path, Path]:
    if source not in SOURCES:
        raise ValueError(f"data.source: {source!r} is not one of {', '.join(SOURCES)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data.path: {str(path)!r} does not exist")
    if source == "llava_json":
        usable, kinds = path.is_file() and path.suffix in (".json", ".jsonl"), "a .json list or a .jsonl file"
    else:
        usable = path.suffix in (".json", ".jsonl", ".parquet") or (path / "dataset_info.json").is_file()
        kinds = "a save_to_disk dataset folder (one split) or a .json, .jsonl or .parquet file"
    if not usable:
        raise ValueError(f"data.path: {path} is not {kinds} (data.source: {source})")
    image_dir = Path(image_root) if image_root is not None else (path if path.is_dir() else path.parent)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"data.image_root: {str(image_dir)!r} is not a directory")
    return path, image_dir


def import_sft(
    path: str | Path,
    source: str,
    image_root: str | Path | None = None,
    fields: tuple[str, str, str] = ("prompt", "response", "image"),
    limit: int | None = None,
) -> tuple[Dataset, dict]:
    """SFT rows from user data and a report: source, path, items_read, items_kept, rows, skipped {reason: count}
    over SKIP_REASONS, and up to MAX_SKIP_EXAMPLES examples {where, reason, detail}. `fields`: the hf source's
    (prompt, response, image) columns. `limit` caps the items read (a skipped item counts). No usable item is a
    ValueError naming the file and the skip counts."""
    path, image_dir = _checked_path(path, source, image_root)

    def item_rows(item, index: int) -> list[dict]:
        if source == "llava_json":
            return llava_item_rows(item, index, path, image_dir)
        return hf_item_rows(item, index, path, image_dir, fields)

    columns = () if source == "llava_json" else fields
    rows, report = read_items(path, limit, item_rows, SKIP_REASONS, columns, fields[2])
    return Dataset.from_list(rows, features=SFT_FEATURES), {"source": source, **report}


def read_items(
    path: Path, limit: int | None, item_rows, reasons: tuple[str, ...], columns=(), image_field: str = "image"
) -> tuple[list[dict], dict]:
    """The rows of every item of `path` through `item_rows(item, index)` (a SkipRow skips the item, counted by
    reason) and the report: path, items_read, items_kept, rows, skipped {reason: count over `reasons`}, examples.
    No row at all is a ValueError naming the file, the skip counts and the first skip."""
    skipped: Counter = Counter()
    examples: list[dict] = []
    rows, items_read, items_kept = [], 0, 0
    for index, (where, item) in enumerate(_items(path, columns, image_field)):
        if limit is not None and items_read >= limit:
            break
        items_read += 1
        try:
            if isinstance(item, SkipRow):
                raise item
            rows += item_rows(item, index)
            items_kept += 1
        except SkipRow as skip:
            skipped[skip.reason] += 1
            if len(examples) < MAX_SKIP_EXAMPLES:
                examples.append({"where": where, "reason": skip.reason, "detail": str(skip)})
    report = {"path": str(path), "items_read": items_read, "items_kept": items_kept, "rows": len(rows)}
    report.update(skipped={reason: skipped[reason] for reason in reasons}, examples=examples)
    if not rows:
        first = f"; first: {examples[0]['where']}: {examples[0]['detail']}" if examples else ""
        raise ValueError(f"{path}: no usable item in {items_read} read ({skipped_line(report)}){first}")
    return rows, report


def skipped_line(report: dict) -> str:
    """`skipped 2 (bad_image: 1, text_only: 1)` from an import report."""
    counts = {k: v for k, v in report["skipped"].items() if v}
    reasons = f" ({', '.join(f'{k}: {v}' for k, v in counts.items())})" if counts else ""
    return f"skipped {sum(counts.values())}{reasons}"
