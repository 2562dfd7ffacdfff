"""What a build tells its user at the end: the items it could not finish, and one line that counts done, failed
and skipped items and what the endpoint was paid. Torch- and datasets-free: the CLI reads it for its exit status."""

from __future__ import annotations

from collections import Counter


def build_failures(summary: dict) -> dict[str, int]:
    """Items a build could not finish, by reason (expert: OPA-DPO data; divider, labeler: RLAIF-V data); each is
    asked again on a rerun."""
    failed = summary.get("failed") or {}
    if "checked" in summary:  # RLAIF-V counts responses (*_failed) beside its labeler's per-question reasons
        failed = {k: v for k, v in failed.items() if k.endswith("_failed")}
    failed = Counter(failed) + Counter((summary.get("expert") or {}).get("failures") or {})
    return dict(failed)  # Counter addition drops zero counts


def counts_line(summary: dict) -> str:
    """The last line of a build: done, failed and skipped items with reasons, and what the endpoint was paid over
    every run of the build (OPA-DPO's expert; RLAIF-V's divider and labeler)."""
    done = summary.get("rows_out", summary.get("checked"))
    failed, skipped = build_failures(summary), dict(summary.get("dropped") or summary.get("skipped") or {})
    skipped = {k: v for k, v in skipped.items() if v and k not in failed and k != "expert_failed"}

    def part(name: str, counts: dict) -> str:
        reasons = f" ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})" if counts else ""
        return f"{name} {sum(counts.values())}{reasons}"

    expert, usage = summary.get("expert") or {}, (summary.get("paid") or {}).get("all_runs") or {}
    paid = ""
    if expert.get("paid_requests") or expert.get("prompt_tokens"):  # an oracle expert costs nothing
        paid = f"; {expert.get('paid_requests', 0)} paid requests, {expert.get('prompt_tokens', 0)} + "
        paid += f"{expert.get('completion_tokens', 0)} tokens, ${expert.get('cost_usd', 0):.4f} over all runs"
    elif usage.get("prompt_tokens"):
        paid = f"; {usage['prompt_tokens']} + {usage.get('completion_tokens', 0)} tokens over all runs"
    facts, counts = "", summary.get("facts")  # a public preference import with a captions file
    if isinstance(counts, dict):
        facts = f"; facts: {counts['with_facts']} with, {counts['without_facts']} without (image not in the captions)"
    return f"done {done}, {part('failed', failed)}, {part('skipped', skipped)}{paid}{facts}"
