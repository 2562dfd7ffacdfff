"""The reference's per-token log-probs computed once before training (`precompute_ref_logps: true`), so that each
DPO-family step runs the policy's forward alone instead of the policy's and the reference's.

TRL refuses this for vision datasets (`precompute_ref_log_probs` raises in its DPOTrainer): its collator tokenises
and crops every batch on the fly, so the scored tokens are not known ahead. Here the pairs are encoded once up front
(align/core/preference.py), so every response's scored tokens are fixed, and the reference's log-prob of each can
be stored per record and response and batched back with the same padding as the token weights
(`PreferenceCollator` adds them as `ref_logps`).

The values are stored beside the dataset, in `<dataset>/ref_logps/<key>.safetensors`, and reused by any run whose
key matches: the key hashes the dataset (its fingerprint and files), the reference (its path, weight files' sizes
and mtimes, dtype, attention implementation), the tokenisation (tokenizer, image processor, max_length, image
tokens) and the responses scored. A killed precompute leaves no file (written to a temporary name, then renamed),
so a rerun computes it again. Where the dataset folder is read-only, the run directory holds the file instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from align.core.data import PreferenceCollator
from align.core.distributed import main_first
from align.core.run_dir import files_fingerprint, weights_fingerprint
from data_builders.progress import bar

CACHE_DIR = "ref_logps"


def cache_key(parts: dict) -> str:
    """A short digest of everything the stored log-probs depend on (`parts`, JSON-serialisable)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def dataset_identity(dataset, path: str | Path) -> dict:
    """The dataset's fingerprint and its files' sizes and mtimes: a rebuilt dataset is a new one."""
    return {"fingerprint": getattr(dataset, "_fingerprint", None), "files": files_fingerprint(path, ("*.arrow",))}


def reference_identity(model_cfg, model) -> dict:
    """The reference is the start model (`model.name_or_path`); which weights, in which dtype and attention."""
    path = Path(model_cfg.name_or_path) if model_cfg.name_or_path else None
    return {
        "name_or_path": model_cfg.name_or_path,
        "weights": weights_fingerprint(path) if path is not None and path.is_dir() else {},
        "dtype": str(next(model.parameters()).dtype),
        "attn_implementation": model_cfg.attn_implementation,
    }


def tokenisation_identity(processor, max_length: int, n_image_tokens: int) -> dict:
    tokenizer = processor.tokenizer
    vocab = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else str(tokenizer)
    return {
        "tokenizer": hashlib.sha256(vocab.encode()).hexdigest()[:16],
        "image_processor": processor.image_processor.to_dict(),
        "max_length": max_length,
        "image_tokens": n_image_tokens,
    }


@torch.inference_mode()
def compute_reference_logps(reference_logps, records: list[dict], collator, views, batch_size: int, device) -> list:
    """[{view: [log-prob of each scored token]}] for each record, in order. `reference_logps(batch)` returns the
    reference's left-aligned log-probs [V*B, width] of a `collator` batch (row v*B + b is view v of record b)."""
    out = []
    for start in bar(range(0, len(records), batch_size), desc="reference log-probs", unit="batch"):
        chunk = records[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collator(chunk).items()}
        logps = reference_logps(batch).float().cpu()
        n = len(chunk)
        for b, record in enumerate(chunk):
            # a response's scored tokens are its weights' tokens (align/core/data.py `response_weights`)
            out.append({v: logps[i * n + b, : len(record[v]["weights"])].tolist() for i, v in enumerate(views)})
    return out


def save_reference_logps(path: Path, values: list[dict], views, parts: dict) -> None:
    """One flat fp32 tensor and the lengths (record-major, then view), with what they depend on as metadata."""
    flat = [x for record in values for v in views for x in record[v]]
    lengths = [len(record[v]) for record in values for v in views]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tensors = {"logps": torch.tensor(flat, dtype=torch.float32), "lengths": torch.tensor(lengths, dtype=torch.long)}
    save_file(tensors, str(tmp), metadata={"parts": json.dumps(parts, sort_keys=True, default=str)})
    tmp.replace(path)


def load_reference_logps(path: Path, n_records: int, views) -> list[dict] | None:
    """The stored values, or None when the file is missing or does not match the records' count."""
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    lengths = tensors["lengths"].tolist()
    if len(lengths) != n_records * len(views):
        return None
    parts = tensors["logps"].split(lengths)
    return [{v: parts[r * len(views) + i].tolist() for i, v in enumerate(views)} for r in range(n_records)]


def attach(records: list[dict], values: list[dict], views) -> None:
    """Put each response's reference log-probs beside its token ids (`record[view]["ref_logps"]`)."""
    for record, stored in zip(records, values, strict=True):
        for v in views:
            if len(stored[v]) != len(record[v]["weights"]):
                raise ValueError(f"record {record['id']}: stored reference log-probs do not fit its {v} tokens")
            record[v]["ref_logps"] = stored[v]


def cached_reference_logps(records, parts: dict, places: list[Path], compute, views) -> tuple[Path, bool]:
    """Attach the reference log-probs to `records`: from the first of `places` that holds them under this key, else
    computed (`compute()`) and saved to the first writable place. Returns (file, whether it was computed)."""
    name = f"{cache_key(parts)}.safetensors"
    for place in places:
        stored = load_reference_logps(place / name, len(records), views)
        if stored is not None:
            attach(records, stored, views)
            return place / name, False
    values = compute()
    attach(records, values, views)
    for place in places:
        try:
            save_reference_logps(place / name, values, views, parts)
            return place / name, True
        except OSError as e:  # a read-only dataset folder: the next place (the run directory)
            print(f"[ref-logps] cannot write {place / name} ({e}); trying the next place")
    raise OSError(f"reference log-probs could not be saved in any of {[str(p) for p in places]}")


def attach_reference_logps(trainer, records, processor, views, dataset, dataset_path, start, max_length, tag) -> None:
    """Attach the reference's log-probs of `views` to every encoded record: read from `<dataset_path>/ref_logps/`
    when computed before under the same key, else computed now (in eval mode, batches of the trainer's size) and
    stored there (or in the run directory). `start` is the model config of the reference (the start policy)."""
    model = trainer.model
    parts = {
        "dataset": dataset_identity(dataset, dataset_path),
        "reference": reference_identity(start, model),
        "tokenisation": tokenisation_identity(processor, max_length, int(model.config.image_seq_length)),
        "views": list(views),
    }
    places = [Path(dataset_path) / CACHE_DIR, Path(trainer.args.output_dir) / CACHE_DIR]

    def compute():
        was_training = model.training
        model.eval()  # the reference without dropout: deterministic, as stored values must be
        try:
            return compute_reference_logps(
                lambda batch: trainer.reference_logps(model, batch, batch["token_weights"].shape[1]),
                records,
                PreferenceCollator(processor, tuple(views)),  # its own: the training collator's count stays put
                views,
                trainer.args.per_device_train_batch_size,
                trainer.args.device,
            )
        finally:
            model.train(was_training)

    with main_first():  # several processes: the main one computes and stores, the others read the file
        path, computed = cached_reference_logps(records, parts, places, compute, views)
    print(f"[{tag}] reference log-probs {'computed and stored in' if computed else 'read from'} {path}")
