"""``scripts/compare_evals.py``: the sign test and the sequence bootstrap against hand-computed cases, the
pairing of two ``kp2d eval --json`` results, and one error line for a user's mistake."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cli_output import single_error_line


@pytest.fixture
def compare(load_script):
    return load_script("compare_evals")


def _pair(name, c1, c3, mscore=0.5, loc=0.5):
    return {"pair": name, "repeatability": 0.5, "localization_error": loc, "c1": c1, "c3": c3, "c5": 1.0,
            "mscore": mscore}


@pytest.mark.parametrize(("a_only", "b_only", "p"), [
    (0, 0, 1.0),
    (0, 2, 0.5),            # 2 * (1/4)
    (0, 5, 0.0625),         # 2 * (1/32)
    (1, 4, 0.375),          # 2 * (1 + 5) / 32
    (3, 3, 1.0),
    (9, 23, 2 * sum(math.comb(32, i) for i in range(10)) / 2**32),
])
def test_sign_test_against_the_binomial(compare, a_only, b_only, p):
    assert compare.sign_test_p(a_only, b_only) == pytest.approx(p)
    assert compare.sign_test_p(b_only, a_only) == pytest.approx(p)


def test_bootstrap_of_two_sequences(compare):
    # sequence s (mean 1) and t (mean 0), two pairs each: a resample is (s, s), (s, t) / (t, s) or (t, t),
    # means 1, 0.5, 0 with chances 1/4, 1/2, 1/4, so the 2.5 % and 97.5 % quantiles are 0 and 1
    low, high = compare.sequence_bootstrap_interval(np.array([1.0, 1.0, 0.0, 0.0]), ["s", "s", "t", "t"])
    assert (low, high) == (0.0, 1.0)


def test_bootstrap_of_a_constant_difference(compare):
    low, high = compare.sequence_bootstrap_interval(np.full(6, 0.25), ["a", "a", "b", "c", "c", "d"])
    assert low == pytest.approx(0.25) and high == pytest.approx(0.25)


def test_compare_pairs_by_name(compare):
    a = {"per_pair": [_pair("s:1-2", 1.0, 1.0, 0.6), _pair("s:1-3", 1.0, 0.0, 0.4), _pair("t:1-2", 0.0, 1.0)]}
    b = {"per_pair": [_pair("t:1-2", 1.0, 1.0), _pair("s:1-3", 0.0, 1.0, 0.2), _pair("s:1-2", 0.0, 1.0, 0.2)]}
    rows = {row["metric"]: row for row in compare.compare(a, b, ("c1", "c3", "mscore"))}
    assert rows["c1"]["a"] == pytest.approx(2 / 3) and rows["c1"]["b"] == pytest.approx(1 / 3)
    assert (rows["c1"]["a_only"], rows["c1"]["b_only"]) == (2, 1)
    assert (rows["c3"]["a_only"], rows["c3"]["b_only"]) == (0, 1)
    assert rows["mscore"]["difference"] == pytest.approx((0.6 + 0.4 + 0.5 - 0.5 - 0.2 - 0.2) / 3)
    assert "p" not in rows["mscore"]


def test_compare_skips_pairs_without_a_localization_error(compare):
    a = {"per_pair": [_pair("s:1-2", 1, 1, loc=None), _pair("s:1-3", 1, 1, loc=0.4)]}
    b = {"per_pair": [_pair("s:1-2", 1, 1, loc=0.9), _pair("s:1-3", 1, 1, loc=0.6)]}
    (row,) = compare.compare(a, b, ("localization_error",))
    assert row["pairs"] == 1 and row["difference"] == pytest.approx(-0.2)


def test_compare_refuses_different_sets(compare):
    with pytest.raises(ValueError, match="different pairs"):
        compare.compare({"per_pair": [_pair("s:1-2", 1, 1)]}, {"per_pair": [_pair("u:1-2", 1, 1)]}, ("c1",))


def _write(path, results):
    path.write_text(json.dumps(results))
    return str(path)


def test_main_compares_the_model_with_a_baseline(compare, tmp_path, capsys):
    run = _write(tmp_path / "run.json", {
        "320x240": {"model": "net", "per_pair": [_pair("s:1-2", 1, 1), _pair("t:1-2", 1, 1)]},
        "baselines": {"sift": {"320x240": {"per_pair": [_pair("s:1-2", 0, 1), _pair("t:1-2", 1, 1)]}}},
    })
    assert compare.main([run, f"{run}:sift", "--metrics", "c1"]) == 0
    out = capsys.readouterr().out
    assert "| c1 | 2 | 1.000 | 0.500 | +0.500 " in out and "| 1 / 0 | 1.00 |" in out


@pytest.mark.parametrize(("spec", "extra", "message"), [
    ("{run}:orb", [], "no method 'orb'"),
    ("{two}", [], "choose one with --size"),
    ("{two}", ["--size", "100x100"], "no model result at 100x100"),
    ("{text}", [], "not JSON"),
    ("{run}", ["--metrics", "speed"], "unknown metric(s) speed; choose from repeatability, "),
])
def test_main_one_error_line(compare, tmp_path, capsys, spec, extra, message):
    pairs = {"per_pair": [_pair("s:1-2", 1, 1)]}
    paths = {
        "run": _write(tmp_path / "run.json", {"320x240": pairs, "baselines": {"sift": {"320x240": pairs}}}),
        "two": _write(tmp_path / "two.json", {"320x240": pairs, "640x480": pairs}),
        "text": str(tmp_path / "notes.txt"),
    }
    (tmp_path / "notes.txt").write_text("not json")
    assert compare.main([spec.format(**paths), paths["run"], *extra]) == 2
    line = single_error_line(capsys)
    assert line.startswith("compare_evals: error: ") and message in line


def test_one_sequence_resamples_its_pairs(compare):
    # v_graffiti is one sequence: resampling it alone would give a zero-width interval
    a = {"per_pair": [_pair(f"v_graffiti:1-{k}", float(k == 2), 1) for k in range(2, 7)]}
    b = {"per_pair": [_pair(f"v_graffiti:1-{k}", 0.0, 1) for k in range(2, 7)]}
    (row,) = compare.compare(a, b, ("c1",))
    assert row["difference"] == pytest.approx(0.2)
    assert row["interval"][0] == 0.0 and row["interval"][1] > 0.2


def test_a_metric_no_pair_has_is_nan_not_an_error(compare):
    a = {"per_pair": [_pair("s:1-2", 1, 1, loc=None)]}
    b = {"per_pair": [_pair("s:1-2", 1, 1, loc=0.5)]}
    (row,) = compare.compare(a, b, ("localization_error",))
    assert row["pairs"] == 0 and np.isnan(row["difference"])
    assert "| localization_error | 0 | nan | nan |" in compare.format_table("a", "b", [row])


def test_views_keep_the_levels_asked_for(compare):
    # a warp sweep: view V is level V - 1; --views 2-3 leaves out the pairs 1-4 (here the only difference)
    a = {"per_pair": [_pair(f"{s}:1-{k}", 1.0, 1.0) for s in "st" for k in (2, 3, 4)]}
    b = {"per_pair": [_pair(f"{s}:1-{k}", float(k < 4), 1.0) for s in "st" for k in (2, 3, 4)]}
    (every,) = compare.compare(a, b, ("c1",))
    assert (every["a_only"], every["b_only"], every["pairs"]) == (2, 0, 6)
    (first,) = compare.compare(a, b, ("c1",), compare.parse_views("2-3"))
    assert (first["a_only"], first["b_only"], first["pairs"], first["difference"]) == (0, 0, 4, 0.0)
    assert compare.parse_views("2-3,6") == {2, 3, 6} and compare.pair_view("v_x:1-12") == 12
    for bad in ("1-3", "3-2", "x", "2-"):
        with pytest.raises(ValueError, match="--views must be view numbers"):
            compare.parse_views(bad)
    with pytest.raises(ValueError, match="no pair of views 9"):
        compare.compare(a, b, ("c1",), {9})
