import skimage.data
from PIL import Image

from kp2d.cli import main
from kp2d.config import load_config
from kp2d.overfit import overfit


def test_overfit_writes_three_gifs_with_one_frame_per_record(tmp_path):
    config = load_config("v4", {"augmentation": {"image_shape": [64, 96]}, "loss": {"io_top_k": 40},
                                "train": {"precision": "fp32"}})
    result = overfit(skimage.data.coffee(), config, tmp_path, steps=4, every=2, batch_size=2, top_k=20,
                     progress=False)
    assert len(result.losses) == 3  # step 1, 2 and 4
    for path in (result.keypoints_gif, result.scores_gif, result.crop_gif):
        with Image.open(path) as gif:
            assert gif.n_frames == 3 and gif.size == (96, 64)


def test_overfit_cli_rejects_bad_values(tmp_path, capsys):
    assert main(["overfit", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert main(["overfit", str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_overfit_cli_without_progress_bar(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("extends: v4\naugmentation: {image_shape: [64, 96]}\nloss: {io_top_k: 40}\n"
                      "train: {precision: fp32}\n")
    out = tmp_path / "gifs"
    assert main(["overfit", "--config", str(config), "--steps", "2", "--every", "1", "--batch-size", "2",
                 "--top-k", "10", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "overfit:" not in captured.err  # the tqdm bar's description
    assert sorted(path.name for path in out.iterdir()) == ["crop.gif", "keypoints.gif", "scores.gif"]
    assert "-> " in captured.out
