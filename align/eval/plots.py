"""Hallucination metrics against training step: one small panel per metric, one line per run, in one PNG.

Drawn with matplotlib's object API on an Agg canvas, never pyplot: no display is needed, no global state changes
(backend, the open-figure registry), so it is safe inside a training process and in tests. `plot_metrics`
returns the data read back from the figure's lines, so callers and tests can check what was drawn.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from align.eval.runner import table_columns

Lines = dict[str, tuple[list[int], list[float]]]  # run name -> (steps, values)


def run_name(checkpoint: str) -> str:
    """The run a checkpoint belongs to: the parent of `checkpoint-N/` or `final/`, else the checkpoint's own name."""
    path = Path(checkpoint)
    return path.parent.name if re.fullmatch(r"checkpoint-\d+|final", path.name) else path.name


def metric_series(results: dict[str, dict]) -> dict[str, Lines]:
    """`{panel title: {run: (steps, values)}}` for each table metric some result has; rates in percent, as the
    table. Results without a known step are left out, and a run's step is drawn once (`final/` usually repeats the
    last checkpoint's step; the checkpoint, listed first, is kept)."""
    panels: dict[str, Lines] = {}
    for bench, metric, label in table_columns():
        own_scale = metric.endswith(("length", "score"))
        scale, title = (1.0, label) if own_scale else (100.0, f"{label} (%)")
        points: dict[str, dict[int, float]] = {}
        for checkpoint, result in results.items():
            step, value = result.get("meta", {}).get("step"), result.get(bench, {}).get(metric)
            if step is not None and value is not None:
                points.setdefault(run_name(checkpoint), {}).setdefault(int(step), scale * value)
        if points:
            panels[title] = {run: (sorted(p), [p[s] for s in sorted(p)]) for run, p in points.items()}
    return panels


def plot_metrics(results: dict[str, dict], out_png: str | Path) -> dict[str, Lines]:
    """Write the panels of `metric_series(results)` to `out_png`; return the lines as drawn on the figure."""
    panels = metric_series(results)
    if not panels:
        raise ValueError("nothing to plot: no result has both a step and a known metric")
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax, (title, lines) in zip(axes, panels.items()):
        for run, (steps, values) in lines.items():
            ax.plot(steps, values, marker="o", label=run)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))  # whole steps, few enough not to overlap
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize="small")
    for ax in axes[len(panels) :]:
        fig.delaxes(ax)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return {ax.get_title(): _drawn(ax) for ax in fig.axes}


def _drawn(ax) -> Lines:
    return {
        line.get_label(): ([int(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
        for line in ax.get_lines()
    }


def collect_step_evals(run_dir: str | Path) -> dict[str, dict]:
    """A run's checkpoint evals (`eval/step-N.json`, written by HallucinationEvalCallback) as `{checkpoint: eval
    dict}` in step order, ready for `plot_metrics` or `format_table`."""
    found = []
    for f in Path(run_dir, "eval").glob("step-*.json"):
        m = re.fullmatch(r"step-(\d+)\.json", f.name)
        if m:
            found.append((int(m.group(1)), f))
    out = {}
    for step, f in sorted(found):
        record = json.loads(f.read_text())
        results = record["results"]
        results.setdefault("meta", {})["step"] = record.get("step", step)
        out[record.get("checkpoint", f"step-{step}")] = results
    return out


SWEEP_PANELS = (("chair_i", "CHAIR_i (%)", 100.0), ("recall", "recall (%)", 100.0), ("length", "length (words)", 1.0))


def plot_switch_sweep(runs: dict[str, list[dict]], out_png: str | Path, bands: dict[str, list[dict]] | None = None):
    """CHAIR_i, recall and length against the HallE switch value ε, one line per run (rows {switch, chair_i,
    recall, length}); `bands` (same keys) give a ± std per point. Returns the lines as drawn."""
    fig = Figure(figsize=(3.4 * len(SWEEP_PANELS), 2.8), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (key, title, scale) in zip(fig.subplots(1, len(SWEEP_PANELS)), SWEEP_PANELS):
        for name, rows in runs.items():
            xs = [r["switch"] for r in rows]
            ys = [scale * r[key] for r in rows]
            ax.plot(xs, ys, marker="o", label=name)
            if bands and name in bands:
                sd = [scale * r[key] for r in bands[name]]
                ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("switch ε")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize="small")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return {ax.get_title(): {ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines()} for ax in fig.axes}
