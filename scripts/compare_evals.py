"""Is one result better than another, or within the noise? Paired comparison of two ``kp2d eval --json`` runs
on the same pairs (or of the model and a baseline in one run).

    python scripts/compare_evals.py RUN.json:model RUN.json:sift [--metrics c1,c3,mscore]
    python scripts/compare_evals.py A.json B.json --size 640x480
    python scripts/compare_evals.py zoom.json zoom.json:sift --views 2-5    # a warp sweep's first four levels

Each side is ``FILE[:METHOD]``: ``model`` (the default) or a ``--baselines`` method of that file. For every
metric it prints both means, their difference A - B with a 95 % interval from resampling whole sequences
(pairs of one sequence share a scene, so they are not independent; 10,000 resamples, seed 0; the pairs
themselves when the set has fewer than 5 sequences, as `v_graffiti`'s one), and for the
per-pair yes / no metrics (C1, C3, C5) the pairs only A gets, the pairs only B gets and the two-sided exact
sign-test p-value on those discordant pairs. A difference whose interval holds 0 is not a win.
``--views`` keeps the pairs ``1-V`` of those views only (in a warp sweep view V is level V - 1).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kp2d.errors import user_message
from kp2d.eval.hpatches import METRIC_NAMES, parse_metric_names, result_entries
from kp2d.eval.settings import pair_view, parse_views

BINARY_METRICS = ("c1", "c3", "c5")
MIN_SEQUENCES = 5


def sign_test_p(a_only: int, b_only: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven of ``a_only + b_only``
    discordant pairs if each were a fair coin (1.0 when there are none)."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def sequence_bootstrap_interval(
    differences: np.ndarray, sequences: list[str], resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95 % interval of the mean of ``differences`` (N,) resampling whole sequences with replacement.

    Each resample draws as many sequences as there are and averages the differences of all their pairs.
    """
    names = sorted(set(sequences))
    index = {name: i for i, name in enumerate(names)}
    owner = np.array([index[name] for name in sequences])
    sums = np.bincount(owner, weights=differences, minlength=len(names))  # (S,)
    counts = np.bincount(owner, minlength=len(names)).astype(np.float64)  # (S,)
    draws = np.random.default_rng(seed).integers(0, len(names), size=(resamples, len(names)))  # (R, S)
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)  # (R,)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def load_entry(spec: str, size: str | None) -> tuple[str, dict[str, Any]]:
    """``FILE[:METHOD]`` → (label, the result entry with ``per_pair``); ValueError when it is not there."""
    path, method = Path(spec), "model"
    if not path.exists() and ":" in spec:
        path_text, _, method = spec.rpartition(":")
        path, method = Path(path_text), method or "model"
    try:
        entries = result_entries(json.loads(path.read_text()))
    except json.JSONDecodeError:
        raise ValueError(f"{path}: not JSON (a kp2d eval --json file expected)") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    sizes = {entry_size: entry for name, entry_size, entry in entries if (name or "model") == method}
    if not sizes:
        known = ", ".join(dict.fromkeys(name or "model" for name, _, _ in entries))
        raise ValueError(f"{path}: no method {method!r} in it (it has {known})")
    if size is None:
        if len(sizes) != 1:
            raise ValueError(f"{path}: results at {', '.join(sizes)}; choose one with --size")
        size = next(iter(sizes))
    if size not in sizes:
        raise ValueError(f"{path}: no {method} result at {size} (it has {', '.join(sizes)})")
    return f"{sizes[size].get('model', method)} ({path.name})", sizes[size]


def compare(
    a: dict[str, Any], b: dict[str, Any], metrics: tuple[str, ...], views: set[int] | None = None
) -> list[dict[str, Any]]:
    """One row per metric comparing two result entries pair by pair (``views``: pairs ``1-V`` of those only).

    Raises:
        ValueError: the two hold different pairs (not the same set), or no pair of ``views``.
    """
    a_pairs = {pair["pair"]: pair for pair in a["per_pair"]}
    b_pairs = {pair["pair"]: pair for pair in b["per_pair"]}
    if set(a_pairs) != set(b_pairs):
        only = sorted(set(a_pairs) ^ set(b_pairs))
        raise ValueError(f"the two runs hold different pairs ({len(only)} in one only, e.g. {only[0]})")
    names = sorted(a_pairs)
    if views is not None:
        names = [name for name in names if pair_view(name) in views]
        if not names:
            raise ValueError(f"no pair of views {', '.join(map(str, sorted(views)))} in the runs")
    rows = []
    for metric in metrics:
        values = np.array([[_number(a_pairs[n][metric]), _number(b_pairs[n][metric])] for n in names])
        kept = np.isfinite(values).all(axis=1)  # the localization error is undefined for some pairs
        a_values, b_values = values[kept, 0], values[kept, 1]
        sequences = [name.partition(":")[0] for name, keep in zip(names, kept, strict=True) if keep]
        if len(set(sequences)) < MIN_SEQUENCES:  # too few scenes to resample: resample the pairs
            sequences = [name for name, keep in zip(names, kept, strict=True) if keep]
        row: dict[str, Any] = {"metric": metric, "pairs": int(kept.sum())}
        if not row["pairs"]:  # e.g. no pair with a localization error on both sides
            rows.append({**row, "a": math.nan, "b": math.nan, "difference": math.nan,
                         "interval": (math.nan, math.nan)})
            continue
        row.update(a=float(a_values.mean()), b=float(b_values.mean()))
        row["difference"] = row["a"] - row["b"]
        row["interval"] = sequence_bootstrap_interval(a_values - b_values, sequences)
        if metric in BINARY_METRICS:
            row["a_only"] = int(((a_values > 0.5) & (b_values < 0.5)).sum())
            row["b_only"] = int(((b_values > 0.5) & (a_values < 0.5)).sum())
            row["p"] = sign_test_p(row["a_only"], row["b_only"])
        rows.append(row)
    return rows


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def format_table(label_a: str, label_b: str, rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`compare`'s rows."""
    lines = [f"A: {label_a}", f"B: {label_b}", "",
             "| metric | pairs | A | B | A - B (95 % interval) | only A / only B | sign test p |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        low, high = row["interval"]
        split = f"{row['a_only']} / {row['b_only']}" if "p" in row else ""
        p = f"{row['p']:.2f}" if "p" in row else ""
        lines.append(f"| {row['metric']} | {row['pairs']} | {row['a']:.3f} | {row['b']:.3f} | "
                     f"{row['difference']:+.3f} ({low:+.3f} … {high:+.3f}) | {split} | {p} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", metavar="A", help="FILE[:METHOD] (METHOD: model, the default, or a baseline)")
    parser.add_argument("b", metavar="B", help="FILE[:METHOD]")
    parser.add_argument("--size", help="e.g. 640x480, when a file holds several sizes")
    parser.add_argument("--views", help="only the pairs 1-V of these views, e.g. 2-5 (a warp sweep's levels "
                        "1-4)")
    parser.add_argument("--metrics", default="c1,c3,mscore",
                        help=f"comma-separated, of {', '.join(METRIC_NAMES)} (default c1,c3,mscore)")
    args = parser.parse_args(argv)
    try:
        metrics = parse_metric_names(args.metrics)
        label_a, entry_a = load_entry(args.a, args.size)
        label_b, entry_b = load_entry(args.b, args.size)
        views = None if args.views is None else parse_views(args.views)
        rows = compare(entry_a, entry_b, metrics, views)
    except (OSError, ValueError) as error:
        print(f"compare_evals: error: {user_message(error)}", file=sys.stderr)
        return 2
    print(format_table(label_a, label_b, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
