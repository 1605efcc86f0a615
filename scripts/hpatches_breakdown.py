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
from kp2d.eval.hpatches import METRIC_NAMES, pair_groups, summarize


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"c3,mscore"`` → ``("c3", "mscore")``; ValueError unless they are known metrics, at least one."""
    metrics = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    if not metrics:
        raise ValueError(f"--metrics: give at least one of {', '.join(METRIC_NAMES)}")
    return metrics


def _check_entry(size: str, entry: Any) -> None:
    """ValueError unless ``entry`` is one method's result at one size, with every pair's metrics."""
    if not isinstance(entry, dict):
        raise ValueError(f"{size}: not a kp2d eval result (an object with 'per_pair' expected)")
    if "per_pair" not in entry:
        raise ValueError(f"{size}: no per-pair metrics (a JSON written before kp2d eval kept them)")
    per_pair = entry["per_pair"]
    if not isinstance(per_pair, list):
        raise ValueError(f"{size}: 'per_pair' is not a list of pairs")
    if not per_pair:
        raise ValueError(f"{size}: no pair in 'per_pair'")
    for index, pair in enumerate(per_pair):
        if not isinstance(pair, dict) or not isinstance(pair.get("pair"), str):
            raise ValueError(f"{size}: per_pair[{index}] is not a pair's metrics with its name ('pair')")
        bad = [m for m in METRIC_NAMES if not (pair.get(m) is None or isinstance(pair.get(m), (int, float)))]
        missing = [m for m in METRIC_NAMES if m not in pair]
        if missing or bad:
            raise ValueError(f"{size}: pair {pair['pair']}: no number for {', '.join(missing or bad)}")


def breakdown_tables(results: Any, metrics: tuple[str, ...] = METRIC_NAMES) -> list[str]:
    """One Markdown table per ``(size, method)`` of a ``kp2d eval --json`` result.

    Raises:
        ValueError: ``results`` is not such a result (not an object of sizes, a pair without its metrics,
            no result at all).
    """
    if not isinstance(results, dict):
        raise ValueError("not a kp2d eval --json result (a JSON object of sizes expected)")
    baselines = results.get("baselines", {})
    if not isinstance(baselines, dict) or not all(isinstance(sizes, dict) for sizes in baselines.values()):
        raise ValueError("'baselines' is not an object of methods, each an object of sizes")
    entries = [(size, entry, "?") for size, entry in results.items() if size != "baselines"]
    for method, sizes in baselines.items():
        entries += [(size, entry, method) for size, entry in sizes.items()]
    if not entries:
        raise ValueError("no results in it (not a kp2d eval --json result?)")
    tables = []
    for size, entry, method in entries:
        _check_entry(size, entry)
        lines = [f"{entry.get('model', method)}, {size}, top {entry.get('top_k', '?')}", "",
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
        metrics = parse_metrics(args.metrics)
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
