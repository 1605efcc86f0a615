"""Per-view breakdown of a ``kp2d eval --json`` file: means over the illumination (``i_*``) and viewpoint
(``v_*``) pairs, and over each view ``1-k`` of each (the view change grows with ``k`` in HPatches).

    python scripts/hpatches_breakdown.py results.json [--metrics c3,mscore]

Prints one Markdown table per evaluated size and method (the model, then each ``--baselines`` method).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from kp2d.eval.hpatches import METRIC_NAMES, summarize


def _groups(per_pair: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``{"i": [...], "i 1-2": [...], "v": [...], ...}`` from pair names ``<sequence>:1-<k>``."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pair in per_pair:
        sequence, _, view = pair["pair"].partition(":")
        kind = sequence[:1] if sequence[:2] in ("i_", "v_") else "other"
        groups[kind].append(pair)
        groups[f"{kind} {view}"].append(pair)
    return dict(sorted(groups.items(), key=lambda item: (item[0].split()[0], len(item[0]), item[0])))


def breakdown_tables(results: dict[str, Any], metrics: tuple[str, ...] = METRIC_NAMES) -> list[str]:
    """One Markdown table per ``(size, method)`` of a ``kp2d eval --json`` result."""
    entries = [(size, entry) for size, entry in results.items() if size != "baselines"]
    for method, sizes in results.get("baselines", {}).items():
        entries += [(size, {**entry, "model": entry.get("model", method)}) for size, entry in sizes.items()]
    tables = []
    for size, entry in entries:
        if "per_pair" not in entry:
            raise ValueError(f"{size}: no per-pair metrics (a JSON written before kp2d eval kept them)")
        lines = [f"{entry.get('model', '?')}, {size}, top {entry.get('top_k', '?')}", "",
                 "| pairs | n | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
        for name, pairs in _groups(entry["per_pair"]).items():
            summary = summarize(pairs)  # the means `kp2d eval` prints, over this group of pairs
            means = " | ".join(f"{summary[m]:.3f}" for m in metrics)
            lines.append(f"| {name} | {len(pairs)} | {means} |")
        tables.append("\n".join(lines))
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, help="a kp2d eval --json file")
    parser.add_argument("--metrics", default=",".join(METRIC_NAMES), help="comma-separated (default: all)")
    args = parser.parse_args(argv)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    try:
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
        results = json.loads(args.json.read_text())
        print("\n\n".join(breakdown_tables(results, metrics)))
    except (OSError, ValueError) as error:
        print(f"hpatches_breakdown: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
