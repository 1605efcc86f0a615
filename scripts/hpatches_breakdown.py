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

from kp2d.errors import user_message
from kp2d.eval.hpatches import METRIC_NAMES, pair_groups, parse_metric_names, result_entries, summarize


def breakdown_tables(results: Any, metrics: tuple[str, ...] = METRIC_NAMES) -> list[str]:
    """One Markdown table per ``(size, method)`` of a ``kp2d eval --json`` result.

    Raises:
        ValueError: ``results`` is not such a result (not an object of sizes, a pair without its metrics,
            no result at all).
    """
    entries = result_entries(results)
    tables = []
    for method, size, entry in entries:
        lines = [f"{entry.get('model', method or '?')}, {size}, top {entry.get('top_k', '?')}", "",
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
    try:
        metrics = parse_metric_names(args.metrics)
        text = args.json.read_text()
        try:
            tables = breakdown_tables(json.loads(text), metrics)
        except ValueError as error:  # not JSON, or not kp2d eval's
            raise ValueError(f"{args.json}: {error}") from None
    except (OSError, ValueError) as error:
        print(f"hpatches_breakdown: error: {user_message(error)}", file=sys.stderr)
        return 2
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
