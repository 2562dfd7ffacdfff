"""Every field of a config's dataclass tree, with its dotted name, type, default, current value and help: what
`align train CONFIG --help` and `align show CONFIG` print (align/cli/configs.py); and the one-line summary of a
config file that `align configs` lists. Pure and torch-free.

    docs = describe_fields(SFTConfig, load_config("configs/toy/sft_base.yaml", ["optim.lr=3e-4"]))
    [d for d in docs if d.name == "optim.lr"][0]   # FieldDoc(name='optim.lr', type='float', default=0.0006, ...)
    print(render_fields(SFTConfig, cfg))          # grouped by section; `changed_only` keeps what differs

A field's default is what a YAML that leaves the key out gets: the parent's default for its section where the parent
sets one (SFTConfig's model defaults to finetune=full), else the section class's own. Items of a list of sections
(eval.sources) are described once, as `eval.sources[].name`, with no current value.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class _Marker:
    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


REQUIRED = _Marker("<required>")  # a field without a default
NO_VALUE = _Marker("<no value>")  # no current value: list items, or the fields of a section that is null


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    name: str  # dotted, as an override names it: optim.lr; eval.sources[].name for the items of a list
    section: str  # the dotted section that holds it ("" = top level)
    type: str
    default: Any
    value: Any
    help: str
    is_section: bool = False  # a field that holds a section: its fields follow it

    @property
    def changed(self) -> bool:
        return self.value is not NO_VALUE and self.value != self.default


def type_name(tp: Any) -> str:
    """`float`, `str | None`, `'lora' | 'full'`, `list[BenchmarkSource]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _section_class(tp: Any) -> tuple[type | None, bool]:
    """(the dataclass a field holds, whether it holds a list of them) or (None, False) for a plain value."""
    if dataclasses.is_dataclass(tp):
        return tp, False
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        classes = [a for a in args if dataclasses.is_dataclass(a)]
        return (classes[0], False) if len(classes) == 1 else (None, False)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return args[0], True
    return None, False


def _own_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def describe_fields(cls: type, cfg: Any = None, _prefix: str = "", _defaults: Any = None) -> list[FieldDoc]:
    """The fields of dataclass `cls` and of every section under it, a section's plain fields first, then its
    sections (each as a FieldDoc with is_section, followed by its own fields). `cfg`: the current values (an
    instance of `cls`), or None to describe the defaults only."""
    hints = typing.get_type_hints(cls)
    plain, sections = [], []
    for f in (f for f in dataclasses.fields(cls) if f.init):
        name = f"{_prefix}{f.name}"
        default = getattr(_defaults, f.name) if dataclasses.is_dataclass(_defaults) else _own_default(f)
        value = NO_VALUE if cfg is None or cfg is NO_VALUE else getattr(cfg, f.name)
        sub, is_list = _section_class(hints[f.name])
        help_text = f.metadata.get("help", "") or (_class_help(sub) if sub else "")
        doc = FieldDoc(name, _prefix.rstrip("."), type_name(hints[f.name]), default, value, help_text, bool(sub))
        if sub is None:
            plain.append(doc)
            continue
        sections.append(doc)
        if is_list:
            sections += describe_fields(sub, None, f"{name}[].")
        else:
            current = value if dataclasses.is_dataclass(value) else NO_VALUE
            sections += describe_fields(
                sub, current, f"{name}.", default if dataclasses.is_dataclass(default) else None
            )
    return plain + sections


def _class_help(cls: type) -> str:
    """The first sentence of a section class's docstring ("" for the one dataclasses writes itself)."""
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):
        return ""
    return re.split(r"(?<=[.:])\s", " ".join(doc.split()), maxsplit=1)[0]


def format_value(value: Any, limit: int = 100) -> str:
    """A value as an override would write it (YAML): null, true, 3e-4, runs/x, "" (quoted where YAML would not
    read it back as the same string), [a, b] as JSON."""
    if isinstance(value, _Marker):
        return repr(value)
    if value is None or isinstance(value, (bool, int, float)):
        text = yaml.safe_dump(value).split("\n")[0]
    elif isinstance(value, str):
        text = value if value and _reads_back(value) else json.dumps(value)
    else:
        text = json.dumps(value, default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else str(o))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reads_back(text: str) -> bool:
    try:
        return yaml.safe_load(text) == text and "\n" not in text
    except yaml.YAMLError:
        return False


def render_fields(cls: type, cfg: Any = None, changed_only: bool = False, width: int = 118) -> str:
    """The text of `align show`: each section's header, then `name: type = value` lines (with the default where
    the value differs from it) and the help text under each, indented. `changed_only`: only what differs."""
    lines: list[str] = []
    top = _class_help(cls)
    pending = [f"[top level] {cls.__name__}" + (f": {top}" if top else "")]  # printed with its first field
    for doc in describe_fields(cls, cfg):
        if doc.is_section:
            # a section that is null (eval.judge) or a list (eval.sources) has a value of its own
            own = not dataclasses.is_dataclass(doc.default if doc.value is NO_VALUE else doc.value)
            pending = ["", f"[{doc.name}] {doc.type}" + (f": {doc.help}" if doc.help else "")]
            pending += [_field_line(doc)] if own else []
            if not changed_only or (own and doc.changed):
                lines, pending = lines + pending, []
            continue
        if changed_only and not doc.changed:
            continue
        lines, pending = lines + pending + [_field_line(doc)], []
        if doc.help:
            lines += textwrap.wrap(
                doc.help, width, initial_indent=" " * 6, subsequent_indent=" " * 6, break_on_hyphens=False
            )
    return "\n".join(lines).lstrip("\n")


def _field_line(doc: FieldDoc) -> str:
    if doc.value is NO_VALUE:
        shown = "" if doc.default is REQUIRED else f" (default {format_value(doc.default)})"
        return f"  {doc.name}: {doc.type}{shown}" + (" (required)" if doc.default is REQUIRED else "")
    tail = f"  (default {format_value(doc.default)})" if doc.changed else "  (default)"
    return f"  {doc.name}: {doc.type} = {format_value(doc.value)}{tail}"


def config_summary(path: str | Path) -> dict:
    """What `align configs` lists of one YAML: its path, `recipe:`, the command on its first line, and the first
    sentence of the comment under it."""
    text = Path(path).read_text()
    head = text.splitlines()
    command = head[0].lstrip("#").strip() if head and head[0].startswith("#") else ""
    comment = []
    for line in head[1:]:
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    try:
        data = yaml.safe_load(text)
        recipe = data.get("recipe", "?") if isinstance(data, dict) else "?"
    except yaml.YAMLError:
        recipe = "?"
    description = re.split(r"(?<=[.;])\s", " ".join(comment), maxsplit=1)[0]
    description = description if len(description) <= 150 else description[:149].rstrip() + "…"
    return {"path": str(path), "recipe": str(recipe), "command": command, "description": description}
