"""Per-view breakdown of a ``kp2d eval --json`` file: means over the illumination (``i_*``) and viewpoint
(``v_*``) pairs, and over each view ``1-k`` of each (the view change grows with ``k`` in HPatches).

    python scripts/hpatches_breakdown.py results.json [--metrics c3,mscore]

Prints one Markdown table per evaluated size and method (the model, then each ``--baselines`` method).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

METRICS = ("repeatability", "localization_error", "c1", "c3", "c5", "mscore")


def _groups(per_pair: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``{"i": [...], "i 1-2": [...], "v": [...], ...}`` from pair names ``<sequence>:1-<k>``."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pair in per_pair:
        sequence, _, view = pair["pair"].partition(":")
        kind = sequence[:1] if sequence[:2] in ("i_", "v_") else "other"
        groups[kind].append(pair)
        groups[f"{kind} {view}"].append(pair)
    return dict(sorted(groups.items(), key=lambda item: (item[0].split()[0], len(item[0]), item[0])))


def _mean(pairs: list[dict[str, Any]], metric: str) -> float:
    values = [p[metric] for p in pairs if p.get(metric) is not None and not math.isnan(p[metric])]
    return sum(values) / len(values) if values else math.nan


def breakdown_tables(results: dict[str, Any], metrics: tuple[str, ...] = METRICS) -> list[str]:
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
            means = " | ".join(f"{_mean(pairs, m):.3f}" for m in metrics)
            lines.append(f"| {name} | {len(pairs)} | {means} |")
        tables.append("\n".join(lines))
    return tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, help="a kp2d eval --json file")
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated (default: all six)")
    args = parser.parse_args(argv)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRICS]
    try:
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
        results = json.loads(args.json.read_text())
        print("\n\n".join(breakdown_tables(results, metrics)))
    except (OSError, ValueError) as error:
        print(f"hpatches_breakdown: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
