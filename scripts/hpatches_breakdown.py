"""Per-view breakdown of a ``kp2d eval --json`` file: means over the illumination (``i_*``) and viewpoint
(``v_*``) pairs, and over each view ``1-k`` of each (the view change grows with ``k`` in HPatches).

    python scripts/hpatches_breakdown.py results.json [--metrics c3,mscore]

Prints one Markdown table per evaluated size and method (the model, then each ``--baselines`` method).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kp2d.eval.hpatches import METRIC_NAMES, pair_groups, summarize


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
        per_pair = entry["per_pair"]
        for name, indices in pair_groups([pair["pair"] for pair in per_pair]).items():
            pairs = [per_pair[i] for i in indices]
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
