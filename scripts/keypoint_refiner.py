"""A learned per-keypoint refiner after the network (an experiment of issue #23; not part of the package).

Each keypoint of a run at input scale ``s`` is moved by a small fully-convolutional network that looks at a
24×24 patch of the gray image sampled around it at that scale (``1/s`` image px per patch px, bicubic), so
that the patch shows what the run saw. It is trained so that the moved keypoints of two views of one photo
agree under the known warp (record: ``docs/experiments/2026-12-learned-refiner.md``)::

    python scripts/keypoint_refiner.py pairs train.npz --pairs 4000 --seed 1
    python scripts/keypoint_refiner.py pairs trainp.npz --pairs 2000 --seed 11 --photometric
    python scripts/keypoint_refiner.py pairs valp.npz --pairs 300 --seed 12 --photometric
    python scripts/keypoint_refiner.py train refiner.pt --data train.npz,trainp.npz --val valp.npz \\
        --minutes 15
    python scripts/keypoint_refiner.py eval refiner.pt --hpatches DIR --json OUT.json

``pairs``: photos of ``../shared/data/train`` (a random 4:3 crop at 640×480), a second view warped by a zoom
about the centre, a turn of up to 60° and a small perspective, both resized to 320×240 as the evaluation
does; the default model's single runs (×2.8 or ×1.25, chosen so the two views' content scales lie within
1.25 of each other) detect on each, and the mutual nearest keypoints within 4 run px under the warp are kept
with a 32×32 patch each. ``train``: Huber loss on the disagreement of the moved keypoints (run px of the
second view), plus ``--move-weight`` × the mean squared move and ``--gauge-weight`` × the squared mean move
(a shift common to all keypoints would cost nothing in the loss and move every image's keypoints);
``--max-scale`` holds the keypoints of runs at larger input scales where the network put them.
``eval``: ``kp2d eval``'s protocol with each run's best ``--top-cells`` cells refined (``--max-scale``: only
the runs at input scales up to it); the JSON has the same layout, so ``scripts/compare_evals.py`` reads it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kp2d.errors import Kp2dError
from kp2d.eval.hpatches import KeyPointNetDetector, evaluate_hpatches
from kp2d.eval.settings import parse_shapes
from kp2d.features.extraction import DenseCells, extract
from kp2d.features.matching import match
from kp2d.geometry import warp_points, warp_points_numpy
from kp2d.io.weights import DEFAULT_MODEL
from kp2d.models.keypoint_net import load_keypoint_net

PATCH = 24  # px of the run's input seen by the refiner
STORED = 32  # px stored per keypoint; training reads the centre PATCH px (crop offsets did not help)
EVAL_SIZE_WH = (320, 240)
SOURCE_SIZE_WH = (640, 480)


class Refiner(nn.Module):
    """``(N, 1, PATCH, PATCH)`` gray patches centred on keypoints -> ``(N, 2)`` moves ``(dx, dy)``, patch px.

    Four convolutions give a score per patch pixel; a Gaussian prior about the centre (learned width) keeps
    the answer near the keypoint, and the soft-argmax of the scores is the move.
    """

    def __init__(self, channels: int = 8, size: int = PATCH) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, channels, 5, padding=2), nn.LeakyReLU(0.1),
            nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.1),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2), nn.LeakyReLU(0.1),
            nn.Conv2d(channels, 1, 3, padding=1),
        )
        self.log_sigma = nn.Parameter(torch.tensor(1.2))
        self.register_buffer("offsets", torch.arange(size, dtype=torch.float32) - (size - 1) / 2)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches - patches.mean((2, 3), keepdim=True)
        x = x / (x.std((2, 3), keepdim=True) + 0.02)  # contrast-free: the move depends on the pattern only
        logits = self.body(x)[:, 0]
        radius2 = self.offsets[None, :, None] ** 2 + self.offsets[None, None, :] ** 2
        logits = logits - radius2 / (2 * self.log_sigma.exp() ** 2)
        weights = logits.flatten(1).softmax(1).view_as(logits)  # (N, rows, cols)
        dx = (weights.sum(1) * self.offsets).sum(1)
        dy = (weights.sum(2) * self.offsets).sum(1)
        return torch.stack([dx, dy], 1)


def sample_patches(gray: torch.Tensor, keypoints: torch.Tensor, scale: float, size: int) -> torch.Tensor:
    """``(N, 1, size, size)`` patches of ``gray (H, W)`` about ``keypoints (N, 2)``, ``1/scale`` px apart."""
    height, width = gray.shape
    steps = (torch.arange(size, dtype=torch.float32, device=gray.device) - (size - 1) / 2) / scale
    xs, ys = torch.broadcast_tensors(
        keypoints[:, 0, None, None] + steps[None, None, :], keypoints[:, 1, None, None] + steps[None, :, None]
    )
    grid = torch.stack([(xs + 0.5) / width * 2 - 1, (ys + 0.5) / height * 2 - 1], -1)
    images = gray[None, None].expand(len(keypoints), 1, height, width)
    return F.grid_sample(images, grid, mode="bicubic", padding_mode="border", align_corners=False)


def refine(refiner: Refiner, gray: torch.Tensor, keypoints: torch.Tensor, scale: float) -> torch.Tensor:
    """``keypoints (N, 2)`` px of ``gray (H, W)`` found by a run at ``scale``, moved by ``refiner``."""
    if len(keypoints) == 0:
        return keypoints
    with torch.no_grad():
        moves = refiner(sample_patches(gray, keypoints.float(), scale, PATCH))
    return (keypoints.float() + moves / scale).to(keypoints.dtype)


# ---- pairs ------------------------------------------------------------------------------------------

def _warp(rng: np.random.Generator, zoom: float) -> np.ndarray:
    """A 3×3 map of 640×480 px: zoom and turn about the centre, a small perspective and shift."""
    centre = np.array([(SOURCE_SIZE_WH[0] - 1) / 2, (SOURCE_SIZE_WH[1] - 1) / 2])
    angle = 0.0 if rng.random() < 0.3 else rng.uniform(-math.radians(60), math.radians(60))
    cos, sin = zoom * math.cos(angle), zoom * math.sin(angle)
    to_centre = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]])
    turn = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])
    perspective = np.eye(3)
    perspective[2, :2] = rng.normal(0, 1e-4, 2)
    shift = rng.normal(0, 30, 2) / zoom
    back = np.array([[1, 0, centre[0] + shift[0]], [0, 1, centre[1] + shift[1]], [0, 0, 1]])
    return back @ perspective @ turn @ to_centre


def _photometric(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Blur, gamma, gain, offset, noise and JPEG, each view drawn on its own."""
    x = image.astype(np.float32) / 255
    if rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.2))
    x = np.clip(x, 0, 1) ** math.exp(rng.normal(0, 0.25))
    x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    x = x + rng.normal(0, rng.uniform(0, 0.02), x.shape).astype(np.float32)
    out = (np.clip(x, 0, 1) * 255).astype(np.uint8)
    if rng.random() < 0.5:
        quality = int(rng.integers(60, 96))
        encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
        out = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
    return out


def make_pairs(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    files = sorted(p for p in Path(args.photos).rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not files:
        raise Kp2dError(f"no photos under {args.photos}")
    model = load_keypoint_net(args.model)
    # 640x480 -> 320x240 about pixel centres: x' = (x + 0.5) / 2 - 0.5
    down = np.array([[0.5, 0, -0.25], [0, 0.5, -0.25], [0, 0, 1.0]])
    records: dict[str, list[torch.Tensor]] = {k: [] for k in ("pa", "pb", "sa", "sb", "ka", "kb", "T")}
    made, start = 0, time.time()
    while made < args.pairs:
        image = cv2.imread(str(files[rng.integers(len(files))]))
        if image is None or min(image.shape[:2]) < 200:
            continue
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        height, width = image.shape[:2]
        crop_w = min(width, height * 4 / 3) * rng.uniform(0.7, 1.0)
        crop_h = crop_w * 3 / 4
        x0, y0 = rng.uniform(0, width - crop_w), rng.uniform(0, height - crop_h)
        fit = np.array([[640 / crop_w, 0, -x0 * 640 / crop_w], [0, 480 / crop_h, -y0 * 480 / crop_h]])
        shrink = cv2.INTER_AREA if crop_w > 640 else cv2.INTER_LINEAR
        photo = cv2.warpAffine(image, fit, SOURCE_SIZE_WH, flags=shrink)
        case = rng.integers(3)  # one run at about one zoom, or the x2.8 run against a x1.25 run 2-2.8x in
        scale_a, scale_b = (2.8, 2.8) if case == 0 else (2.8, 1.25) if case == 1 else (1.25, 1.25)
        low, high = (1.8, 2.8) if case == 1 else (0.8, 1.25)
        warp = _warp(rng, math.exp(rng.uniform(math.log(low), math.log(high))))
        view = cv2.warpPerspective(photo, warp, SOURCE_SIZE_WH, flags=cv2.INTER_LINEAR)
        if args.photometric:
            photo, view = _photometric(rng, photo), _photometric(rng, view)
        first, second = cv2.resize(photo, EVAL_SIZE_WH), cv2.resize(view, EVAL_SIZE_WH)
        a_to_b = down @ warp @ np.linalg.inv(down)
        runs = {"top_k": 300, "extra_scales": (), "extra_rotations": ()}
        ka = extract(model, first, scale_factor=scale_a, **runs).keypoints.float()
        kb = extract(model, second, scale_factor=scale_b, **runs).keypoints.float()
        if len(ka) < 5 or len(kb) < 5:
            continue
        warped = torch.from_numpy(warp_points_numpy(ka.numpy().astype(np.float64), a_to_b)).float()
        pairs, distance = match(warped, kb)  # mutual nearest keypoints by place
        x, y = warped[pairs[:, 0]].unbind(1)
        inside = (x > 6) & (x < 313) & (y > 6) & (y < 233)
        pairs = pairs[(distance * scale_b < 4.0) & inside]
        if len(pairs) < 3:
            continue
        in_a, in_b = ka[pairs[:, 0]], kb[pairs[:, 1]]
        gray_a = torch.from_numpy(first.astype(np.float32).mean(2) / 255)
        gray_b = torch.from_numpy(second.astype(np.float32).mean(2) / 255)
        records["pa"].append(sample_patches(gray_a, in_a, scale_a, STORED)[:, 0].half())
        records["pb"].append(sample_patches(gray_b, in_b, scale_b, STORED)[:, 0].half())
        records["sa"].append(torch.full((len(pairs),), scale_a))
        records["sb"].append(torch.full((len(pairs),), scale_b))
        records["ka"].append(in_a)
        records["kb"].append(in_b)
        records["T"].append(torch.from_numpy(a_to_b).float()[None].expand(len(pairs), 3, 3))
        made += 1
        if made % 100 == 0:
            found = sum(map(len, records["sa"]))
            print(f"{made} pairs, {found} keypoints, {time.time() - start:.0f} s", flush=True)
    np.savez(args.out, **{key: torch.cat(value).numpy() for key, value in records.items()})
    print(f"{sum(map(len, records['sa']))} keypoint pairs -> {args.out}")


# ---- train ------------------------------------------------------------------------------------------

def _load(paths: str) -> dict[str, torch.Tensor]:
    parts = [{k: torch.from_numpy(v) for k, v in np.load(p).items()} for p in paths.split(",")]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _disagreement(
    refiner: Refiner | None,
    data: dict[str, torch.Tensor],
    index: torch.Tensor,
    max_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, the moved keypoints' disagreement ``(n, 2)`` (run px of view b); the moves ``(2n, 2)``.

    ``max_scale``: keypoints of runs at input scales above it stay where the network put them.
    """
    margin = (STORED - PATCH) // 2
    scale_a, scale_b = data["sa"][index, None], data["sb"][index, None]
    if refiner is None:
        moves_a = moves_b = torch.zeros(len(index), 2)
    else:
        crop = slice(margin, margin + PATCH)
        moves_a = refiner(data["pa"][index][:, None, crop, crop].float())
        moves_b = refiner(data["pb"][index][:, None, crop, crop].float())
        if max_scale is not None:
            moves_a = moves_a * (scale_a <= max_scale).float()
            moves_b = moves_b * (scale_b <= max_scale).float()
    moved_a = data["ka"][index] + moves_a / scale_a
    moved_b = data["kb"][index] + moves_b / scale_b
    warped = warp_points(moved_a[:, None], data["T"][index])[:, 0]  # each pair's own warp
    return (warped - moved_b) * scale_b, torch.cat([moves_a, moves_b])


def _report(refiner: Refiner, data: dict[str, torch.Tensor], step: int, max_scale: float | None) -> None:
    index = torch.arange(len(data["sa"]))
    with torch.no_grad():
        before = _disagreement(None, data, index)[0].norm(dim=1)
        after, moves = _disagreement(refiner, data, index, max_scale)
    after = after.norm(dim=1)
    parts = []
    for scale_a, scale_b in ((2.8, 2.8), (2.8, 1.25), (1.25, 1.25)):
        rows = (data["sa"] == scale_a) & (data["sb"] == scale_b)
        parts.append(
            f"x{scale_a}/x{scale_b}: mean {before[rows].mean():.3f} -> {after[rows].mean():.3f}, "
            f"median {before[rows].median():.3f} -> {after[rows].median():.3f}"
        )
    moved = moves.norm(dim=1).mean()
    print(f"step {step} (run px): " + " | ".join(parts) + f" | mean move {moved:.3f}", flush=True)


def train(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    data, val = _load(args.data), _load(args.val)
    if args.max_scale is not None:  # pairs of two runs that stay put have nothing to learn from
        keep = (data["sa"] <= args.max_scale) | (data["sb"] <= args.max_scale)
        if not keep.any():
            raise Kp2dError(f"--max-scale {args.max_scale:g}: no pair in --data has a run at that scale")
        data = {key: value[keep] for key, value in data.items()}
    refiner = Refiner(args.channels)
    optimizer = torch.optim.Adam(refiner.parameters(), args.learning_rate)
    start, step = time.time(), 0
    while time.time() - start < args.minutes * 60:
        index = torch.randint(len(data["sa"]), (args.batch,))
        error, moves = _disagreement(refiner, data, index, args.max_scale)
        loss = F.huber_loss(error, torch.zeros_like(error), delta=1.0)
        loss = loss + args.move_weight * (moves**2).mean() + args.gauge_weight * (moves.mean(0) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 1000 == 0:
            _report(refiner, val, step, args.max_scale)
            torch.save({"channels": args.channels, "state_dict": refiner.state_dict()}, args.out)
    _report(refiner, val, step, args.max_scale)
    torch.save({"channels": args.channels, "state_dict": refiner.state_dict()}, args.out)


# ---- eval -------------------------------------------------------------------------------------------

class RefinedDetector(KeyPointNetDetector):
    """The protocol's detector with each run's ``top_cells`` best cells moved by a refiner.

    ``max_scale``: only the runs at an input scale of at most this are refined (``None``: every run).
    """

    def __init__(
        self, refiner: Refiner, top_cells: int, *args, max_scale: float | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.refiner, self.top_cells, self.max_scale = refiner, top_cells, max_scale

    def _cells(self, batch: torch.Tensor, scale_factor: float, rotation_deg: float = 0.0) -> DenseCells:
        cells = super()._cells(batch, scale_factor, rotation_deg)
        if self.max_scale is not None and scale_factor > self.max_scale:
            return cells
        gray = batch.float().mean(1)
        coords = cells.coords.flatten(2).clone()  # (B, 2, Hc*Wc)
        for image in range(len(coords)):
            scores = torch.where(cells.valid[image].flatten(), cells.scores[image].flatten().float(), -1.0)
            best = scores.argsort(descending=True)[: self.top_cells]
            moved = refine(self.refiner, gray[image], coords[image][:, best].t().float(), scale_factor)
            coords[image][:, best] = moved.t().to(coords.dtype)
        return cells._replace(coords=coords.view_as(cells.coords))


def evaluate(args: argparse.Namespace) -> None:
    try:
        saved = torch.load(args.refiner, weights_only=True)
        refiner = Refiner(saved["channels"])
        refiner.load_state_dict(saved["state_dict"])
    except Exception as error:  # any unreadable file is the user's to fix, not a traceback
        message = f"{args.refiner}: not a refiner saved by keypoint_refiner.py train ({type(error).__name__})"
        raise Kp2dError(message) from None
    refiner.eval()
    model = load_keypoint_net(args.model)
    ((width, height, top_k),) = parse_shapes([args.shape], [args.top_k] if args.top_k else None)
    detector = RefinedDetector(refiner, args.top_cells, model, "cpu", max_scale=args.max_scale)
    result = evaluate_hpatches(detector, args.hpatches, size_wh=(width, height), top_k=top_k, progress=False)
    names = ("repeatability", "localization_error", "c1", "c3", "c5", "mscore")
    print(" ".join(f"{name} {result[name]:.3f}" for name in names))
    if args.json:
        Path(args.json).write_text(json.dumps({f"{width}x{height}": result}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pairs = commands.add_parser("pairs", help="patch pairs of the default model's keypoints on warped photos")
    pairs.add_argument("out")
    pairs.add_argument("--pairs", type=int, default=4000, help="image pairs (default 4000)")
    pairs.add_argument("--seed", type=int, default=1)
    pairs.add_argument("--photometric", action="store_true", help="blur, gamma, gain, noise, JPEG per view")
    pairs.add_argument("--photos", default="../shared/data/train")
    pairs.add_argument("--model", default=DEFAULT_MODEL)
    fit = commands.add_parser("train", help="train a refiner on patch pairs")
    fit.add_argument("out")
    fit.add_argument("--data", required=True, help="comma-separated .npz files of `pairs`")
    fit.add_argument("--val", required=True)
    fit.add_argument("--minutes", type=float, default=15.0)
    fit.add_argument("--channels", type=int, default=8)
    fit.add_argument("--batch", type=int, default=512)
    fit.add_argument("--learning-rate", type=float, default=2e-3)
    fit.add_argument("--move-weight", type=float, default=0.02)
    fit.add_argument("--gauge-weight", type=float, default=1.0)
    fit.add_argument("--max-scale", type=float, default=None,
                     help="move only the keypoints of runs at input scales up to this (default: every run)")
    run = commands.add_parser("eval", help="the HPatches protocol with the refiner")
    run.add_argument("refiner")
    run.add_argument("--hpatches", required=True)
    run.add_argument("--shape", default="320x240")
    run.add_argument("--top-k", default=None, help="default 300 at 320x240, else 1000")
    run.add_argument("--top-cells", type=int, default=800, help="cells refined per run (default 800)")
    run.add_argument("--max-scale", type=float, default=None,
                     help="refine only the runs at input scales up to this, e.g. 1.25 (default: every run)")
    run.add_argument("--model", default=DEFAULT_MODEL)
    run.add_argument("--json")
    args = parser.parse_args(argv)
    try:
        _check(args)
        {"pairs": make_pairs, "train": train, "eval": evaluate}[args.command](args)
    except Kp2dError as error:
        print(f"keypoint_refiner: error: {error}", file=sys.stderr)
        return 2
    return 0


def _check(args: argparse.Namespace) -> None:
    """The user's mistakes, before any long work."""
    if args.command == "pairs":
        if args.pairs < 1:
            raise Kp2dError(f"--pairs must be at least 1, got {args.pairs}")
        if not Path(args.photos).is_dir():
            raise Kp2dError(f"--photos {args.photos}: no such folder")
    elif args.command == "train":
        for path in (*args.data.split(","), args.val):
            if not Path(path).is_file():
                raise Kp2dError(f"{path}: no such file (make it with `keypoint_refiner.py pairs`)")
        if args.minutes <= 0 or args.channels < 1 or args.batch < 1:
            raise Kp2dError("--minutes, --channels and --batch must be positive")
    else:
        if not Path(args.refiner).is_file():
            raise Kp2dError(f"{args.refiner}: no such file (make it with `keypoint_refiner.py train`)")
        if not Path(args.hpatches).is_dir():
            raise Kp2dError(f"--hpatches {args.hpatches}: no such folder")
        parse_shapes([args.shape], [args.top_k] if args.top_k else None)


if __name__ == "__main__":
    sys.exit(main())
