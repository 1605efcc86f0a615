"""extract against the original code's eval-mode outputs."""

import pytest
import torch

from kp2d.features.extraction import extract


@pytest.mark.slow
def test_extract_reproduces_the_golden_eval_output(golden_net, golden_forward):
    images = golden_forward["image"]  # (2, 3, 64, 96), multiples of 8: no padding
    expected = golden_forward["v4"]
    results = extract(golden_net, images, top_k=None)
    assert isinstance(results, list) and len(results) == 2
    for b, kpts in enumerate(results):
        coord, score, desc = _expected_from_dense(
            expected["score"][b], expected["coord"][b], expected["desc"][b]
        )
        assert len(kpts) == score.shape[0] == 6 * 10  # interior cells of the 8 x 12 grid
        assert kpts.image_size == (96, 64)
        torch.testing.assert_close(kpts.scores, score, atol=1e-5, rtol=0)
        torch.testing.assert_close(kpts.keypoints, coord, atol=1e-5, rtol=0)
        torch.testing.assert_close(kpts.descriptors, desc, atol=1e-4, rtol=0)
    assert len(extract(golden_net, images[0], top_k=None, score_threshold=-1.0)) == 60  # never border cells
    single = golden_net.extract(images[1], top_k=7)
    torch.testing.assert_close(single.keypoints, results[1].keypoints[:7])


def _expected_from_dense(score, coord, desc):
    """Cells with score > 0 of one image's golden maps, by decreasing score."""
    flat_score = score.flatten()
    index = torch.nonzero(flat_score > 0).squeeze(1)
    order = flat_score[index].argsort(descending=True)
    index = index[order]
    return coord.flatten(1)[:, index].t(), flat_score[index], desc.flatten(1)[:, index].t()
