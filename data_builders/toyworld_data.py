"""ToyWorld as Hugging Face datasets: per-image records, SFT rows and POPE questions, cached on disk.

The per-image split (train/val/test, disjoint images) keeps everything an evaluator or an expert needs:
`image_id, image, scene, objects (JSON: [{name, color, cells}]), caption, injected (JSON), qa (JSON), pope (JSON)`.
It is cached under `<cache_dir>/toyworld-<hash of config + DATA_VERSION>`; a rebuild with the same config
loads the cache, so every stage of a run sees identical data. `toyworld_prompts` turns a split into the prompts
(with reference and off-policy captions) of the builders that roll the policy out (OPA-DPO, RLAIF-V).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image, Value, load_from_disk

from data_builders import toyworld as tw
from data_builders import toyworld_questions as twq
from data_builders.configs import OPADataConfig, RLAIFVDataConfig, ToyWorldDataConfig
from data_builders.progress import bar

DATA_VERSION = 5  # bump when generation changes, so stale caches are not reused
SPLITS = ("train", "val", "test")
FEATURES = Features(
    {
        "image_id": Value("string"),
        "image": Image(),
        "scene": Value("string"),
        "objects": Value("string"),
        "caption": Value("string"),
        "injected": Value("string"),
        "qa": Value("string"),
        "pope": Value("string"),
    }
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ALIGN_CACHE", Path.home() / ".cache" / "align")) / "toyworld"


def config_hash(cfg: tw.WorldConfig) -> str:
    blob = json.dumps({"version": DATA_VERSION, **dataclasses.asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def objects_to_json(objects: list[tw.SceneObject]) -> str:
    return json.dumps([dataclasses.asdict(o) for o in objects])


def objects_from_json(text: str) -> list[tw.SceneObject]:
    return [tw.SceneObject(**o) for o in json.loads(text)]


def _build_split(cfg: tw.WorldConfig, split: str, n: int) -> Dataset:
    # One generator per split, seeded by (world seed, split index): splits never share an image.
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
    scenes = [tw.sample_scene(rng, cfg) for _ in range(n)]
    freq = collections.Counter(o.name for _, objs in scenes for o in objs)
    popular = [c for c, _ in freq.most_common()] + [c for c in cfg.drawn_classes if c not in freq]
    rows = collections.defaultdict(list)
    for i, (scene, objects) in enumerate(bar(scenes, desc=f"toyworld {split}")):
        image = tw.render(objects, rng, cfg.noise, cfg.jitter, cfg.faint_contrast)
        inject = split == "train" and rng.random() < cfg.inject_fraction
        # guarded so that a v1 world (false_mention_prob 0) draws the same numbers as before
        false_mention = split == "train" and cfg.false_mention_prob > 0 and rng.random() < cfg.false_mention_prob
        text, injected = tw.caption(scene, objects, rng, cfg, inject=inject, false_mention=false_mention)
        rows["image_id"].append(f"toy{cfg.seed}-{split}-{i:05d}")
        rows["image"].append({"bytes": tw.image_to_png(image), "path": None})
        rows["scene"].append(scene)
        rows["objects"].append(objects_to_json(objects))
        rows["caption"].append(text)
        rows["injected"].append(objects_to_json(injected))
        rows["qa"].append(json.dumps(twq.qa_pairs(scene, objects, rng)))
        rows["pope"].append(json.dumps(twq.pope_questions(objects, rng, popular, cfg=cfg)))
    return Dataset.from_dict(dict(rows), features=FEATURES)


def build_toyworld(cfg: tw.WorldConfig, cache_dir: str | Path | None = None, rebuild: bool = False) -> DatasetDict:
    """Generate (or load from the cache) the three ToyWorld splits."""
    path = Path(cache_dir or default_cache_dir()) / f"toyworld-{config_hash(cfg)}"
    if path.exists() and not rebuild:
        return load_from_disk(str(path))
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    data = DatasetDict({split: _build_split(cfg, split, sizes[split]) for split in SPLITS})
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside then renamed: a killed build never leaves a half cache, and two processes building the same
    # world at once (parallel seeds) each write their own folder; the first rename wins, the other is dropped.
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".partial-"))
    data.save_to_disk(str(tmp))
    (tmp / "world_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    if rebuild:
        shutil.rmtree(path, ignore_errors=True)
    try:
        tmp.rename(path)
    except OSError:  # another process finished the same build first: identical content, keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(path))


def sft_rows(split: Dataset, seed: int = 0, yes_no: int = 2) -> Dataset:
    """Supervised rows `{id, image, prompt, response, kind}`: per image one caption, its short-answer questions
    (what is at each occupied cell and one empty cell, a colour, a count) and `yes_no` yes/no questions."""
    rng = np.random.default_rng(seed)
    rows = collections.defaultdict(list)

    def add(row_id, image, prompt, response, kind):
        rows["id"].append(row_id)
        rows["image"].append(image)
        rows["prompt"].append(prompt)
        rows["response"].append(response)
        rows["kind"].append(kind)

    plain = split.cast_column("image", Image(decode=False))  # keep PNG bytes; no decode/re-encode
    for i, ex in enumerate(plain):
        add(f"{ex['image_id']}/caption", ex["image"], str(rng.choice(tw.CAPTION_PROMPTS)), ex["caption"], "caption")
        for j, qa in enumerate(json.loads(ex["qa"])):
            add(f"{ex['image_id']}/qa{j}", ex["image"], qa["question"] + tw.SHORT_ANSWER_SUFFIX, qa["answer"], "qa")
        for j, q in enumerate(yes_no_picks(json.loads(ex["pope"]), json.loads(ex["objects"]), i, yes_no)):
            add(f"{ex['image_id']}/yesno{j}", ex["image"], q["question"] + tw.SHORT_ANSWER_SUFFIX, q["label"], "yesno")
    return Dataset.from_dict(
        dict(rows),
        features=Features(
            {
                "id": Value("string"),
                "image": Image(),
                "prompt": Value("string"),
                "response": Value("string"),
                "kind": Value("string"),
            }
        ),
    )


def yes_no_picks(questions: list[dict], objects: list[dict], index: int, n: int) -> list[dict]:
    """`n` of an image's POPE questions for training, half "yes", half "no". Two: a present object, and an absent
    one drawn alternately from the random and the adversarial (same-scene) negatives, so the labels are balanced per
    image. Four or six: the faint object (if any) and other present ones, then random and adversarial negatives."""
    if n == 2:
        negative_split = ("random", "adversarial")[index % 2]
        yes = [q for q in questions if q["split"] == "random" and q["label"] == "yes"][:1]
        no = [q for q in questions if q["split"] == negative_split and q["label"] == "no"][:1]
        return yes + no
    faint = [o["name"] for o in objects if o.get("faint")]
    positives = [q for q in questions if q["split"] == "random" and q["label"] == "yes" and q["object"] not in faint]
    # the faint object first, asked even when POPE's (at most three) positives left it out
    positives = [{"question": tw.pope_question(f), "object": f, "label": "yes"} for f in faint] + positives
    splits = ("random", "adversarial")
    negatives = {s: [q for q in questions if q["split"] == s and q["label"] == "no"] for s in splits}
    # random, adversarial, random, ...; then the popular ones where an image with few positives has fewer distinct
    # negatives than asked; one object never asked twice
    popular = [q for q in questions if q["split"] == "popular" and q["label"] == "no"]
    ranked = [same[rank] for rank in range(3) for same in negatives.values() if rank < len(same)]
    picked_no: list[dict] = []
    for q in ranked + popular:
        if q["object"] not in {p["object"] for p in picked_no}:
            picked_no.append(q)
    return positives[: n // 2] + picked_no[: n // 2]


def pope_rows(split: Dataset, limit: int | None = None) -> list[dict]:
    """Flat POPE question list `{question_id, image_index, question, object, label, split}` for the eval."""
    out = []
    n = len(split) if limit is None else min(limit, len(split))
    for i, text in enumerate(split.select(range(n))["pope"]):
        for q in json.loads(text):
            out.append({"question_id": len(out), "image_index": i, **q})
    return out


def hallucinated_caption(scene: str, objects: list[tw.SceneObject], rng, world: tw.WorldConfig) -> str:
    """A caption the policy did not write, for the off-policy DPO baseline: one present object misnamed as an
    absent same-scene class, one absent object added at a cell, and (no faint object there) one absent object
    named the faint way, in the world's caption style."""
    objects = [dataclasses.replace(o, cells=list(o.cells)) for o in objects]
    absent = [c for c in tw.SCENES[scene] if c not in {o.name for o in objects}]
    clear = [o for o in objects if not o.faint]
    if absent:
        victim = clear[int(rng.integers(len(clear)))]
        victim.name = str(rng.choice(absent))
    text, _ = tw.caption(scene, objects, rng, world, inject=True, false_mention=world.false_mention_prob > 0)
    return text


def toyworld_prompts(cfg: OPADataConfig | RLAIFVDataConfig) -> list[dict]:
    """The prompts of the builders that roll the policy out (OPA-DPO, RLAIF-V) on `cfg.split`: per image a
    detailed-description prompt with a clean reference caption (no injected object), an off-policy hallucinated
    caption for the baseline, and the ground truth as JSON {scene, objects}."""
    split = build_toyworld(cfg.world, cfg.cache_dir)[cfg.split].cast_column("image", Image(decode=False))
    n = len(split) if cfg.limit is None else min(cfg.limit, len(split))
    out = []
    for i, row in enumerate(split.select(range(n))):
        rng = np.random.default_rng([cfg.seed, i])
        objects = objects_from_json(row["objects"])
        reference, _ = tw.caption(row["scene"], objects, rng, cfg.world, inject=False)
        out.append(
            {
                "id": row["image_id"],
                "image": row["image"]["bytes"],
                "prompt": str(rng.choice(tw.CAPTION_PROMPTS)),
                "reference": reference,
                "offpolicy": hallucinated_caption(row["scene"], objects, rng, cfg.world),
                "objects": json.dumps({"scene": row["scene"], "objects": json.loads(row["objects"])}),
            }
        )
    return out


def summarize(data: DatasetDict) -> dict:
    """Per split: images, mean objects per image, share of images with a faint object, share of captions naming an
    absent object, scenes."""
    out = {}
    for split, ds in data.items():
        objects = [objects_from_json(x) for x in ds["objects"]]
        out[split] = {
            "images": len(ds),
            "objects_per_image": round(sum(sum(o.count for o in objs) for objs in objects) / max(len(ds), 1), 3),
            "faint_images": round(sum(any(o.faint for o in objs) for objs in objects) / max(len(ds), 1), 3),
            "injected_captions": round(sum(x != "[]" for x in ds["injected"]) / max(len(ds), 1), 3),
            "scenes": dict(collections.Counter(ds["scene"])),
        }
    return out


def build_from_config(cfg: ToyWorldDataConfig) -> dict:
    path = Path(cfg.cache_dir or default_cache_dir()) / f"toyworld-{config_hash(cfg.world)}"
    data = build_toyworld(cfg.world, cfg.cache_dir, rebuild=cfg.rebuild)
    summary = {"path": str(path), "splits": summarize(data)}
    (path / "summary.json").write_text(json.dumps(summary, indent=2))
    if cfg.export_dir:
        summary["exported"] = export_pope_files(data["test"], Path(cfg.export_dir))
    if cfg.export_llava_dir:
        summary["exported_llava"] = str(export_toyworld_llava(cfg.export_llava_dir, cfg.world, cfg.cache_dir))
    return summary


def export_pope_files(split: Dataset, out: Path) -> dict:
    """The split in POPE's public format: `pope/coco_pope_<split>.json` JSONL `{question_id, image, text, label}`
    (question ids from 1 per split, as POPE's) and the images as `images/<image_id>.png`."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    (out / "pope").mkdir(parents=True, exist_ok=True)
    raw = split.cast_column("image", Image(decode=False))
    for image_id, image in zip(raw["image_id"], raw["image"]):
        (images / f"{image_id}.png").write_bytes(image["bytes"])
    files, ids, rows = {}, raw["image_id"], pope_rows(split)
    for name in sorted({r["split"] for r in rows}):
        lines = [
            {"question_id": n, "image": f"{ids[r['image_index']]}.png", "text": r["question"], "label": r["label"]}
            for n, r in enumerate((r for r in rows if r["split"] == name), 1)
        ]
        path = out / "pope" / f"coco_pope_{name}.json"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        files[name] = len(lines)
    return {"dir": str(out), "images": len(raw), "pope_questions": files}


def export_toyworld_llava(
    out_dir: str | Path,
    world: tw.WorldConfig | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    turns: int = 3,
) -> Path:
    """Write ToyWorld's training split (the rows of the ToyWorld SFT: caption, questions) as LLaVA-format data,
    `<out_dir>/llava.json` and `<out_dir>/images/*.png`: a ready input for source llava_json. Each image's rows
    become conversations of up to `turns` human/gpt pairs (short enough for the tiny model's max_length), the
    first human turn of each holding `<image>`. Returns the JSON file."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    world = world or tw.WorldConfig()
    rows = sft_rows(build_toyworld(world, cache_dir)["train"], seed=seed, yes_no=world.yes_no_questions)
    by_image: dict[str, list[dict]] = {}
    for row in rows.cast_column("image", Image(decode=False)):
        image_id = row["id"].split("/")[0]
        if image_id not in by_image:
            (out / "images" / f"{image_id}.png").write_bytes(row["image"]["bytes"])
            by_image[image_id] = []
        by_image[image_id].append(row)
    items = []
    for image_id, image_rows in by_image.items():
        for start in range(0, len(image_rows), turns):
            conversation = []
            for row in image_rows[start : start + turns]:
                prompt = row["prompt"] if conversation else f"<image>\n{row['prompt']}"
                conversation += [{"from": "human", "value": prompt}, {"from": "gpt", "value": row["response"]}]
            item_id = f"{image_id}-{start // turns}"
            items.append({"id": item_id, "image": f"images/{image_id}.png", "conversations": conversation})
    path = out / "llava.json"
    path.write_text(json.dumps(items, indent=1))
    return path
