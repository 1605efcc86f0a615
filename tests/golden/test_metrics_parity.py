"""HPatches metrics against the original evaluation code's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp2d.eval.metrics import evaluate_pair

GOLDEN_CASES = 7
SHAPE = (100, 80)  # (W, H)
TRANSLATION = np.array([[1.0, 0.0, 10.0], [0.0, 1.0, 5.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def golden_metrics(golden_dir):
    return torch.load(golden_dir / "hpatches_metrics.pt", weights_only=False)


@pytest.mark.parametrize("index", range(GOLDEN_CASES))
def test_golden_parity(golden_metrics, index):
    case = golden_metrics[index]
    inputs, expected = case["inputs"], case["expected"]
    result = evaluate_pair(
        inputs["prob"],
        inputs["desc"],
        inputs["warped_prob"],
        inputs["warped_desc"],
        inputs["homography"],
        inputs["image_shape"],
        case["top_k"],
    )
    assert result["n1"] == expected["N1"]
    assert result["n2"] == expected["N2"]
    assert result["repeatability"] == expected["repeatability"]
    assert result["localization_error"] == pytest.approx(expected["localization_error"], abs=1e-5)
    assert result["mscore"] == pytest.approx(expected["mscore"], abs=1e-5)
    assert (result["c1"], result["c3"], result["c5"]) == (expected["c1"], expected["c3"], expected["c5"])


def test_golden_cases_cover_all_outcomes(golden_metrics):
    """The golden set has C1 = 0 with C3 = 1, all zeros, all ones, and a 640x480 case."""
    outcomes = {(c["expected"]["c1"], c["expected"]["c3"], c["expected"]["c5"]) for c in golden_metrics}
    assert {(1.0, 1.0, 1.0), (0.0, 1.0, 1.0), (0.0, 0.0, 0.0)} <= outcomes
    assert {c["inputs"]["image_shape"] for c in golden_metrics} == {(320, 240), (640, 480)}
