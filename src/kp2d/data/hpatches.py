"""HPatches-format image sequences: discovery, image and homography reading, a per-sequence dataset.

Layout (the HPatches sequences release): a root holding one folder per sequence, ``i_*`` (illumination)
and ``v_*`` (viewpoint), each with images ``1.ppm`` … ``6.ppm`` and homographies ``H_1_2`` … ``H_1_6``
(3×3 text, image-1 pixels → image-k pixels). A pair ``(1, k)`` exists for every ``H_1_k`` file, so
folders with fewer views (e.g. the two-view ``homogr`` set) read the same way. Images may be ``.ppm``,
``.png``, ``.jpg``/``.jpeg`` or ``.pgm`` (grayscale is read as 3 channels). A root that itself holds
homography files is read as a single sequence.

The Oxford affine sequences' layout (``graf``, ``boat``, ``bark``, ...: images ``img1.ppm`` … ``img6.ppm``
and homographies ``H1to2p`` … ``H1to6p``, the same convention) reads the same way, pair names ``1-k`` as
above. Each folder is read in one layout: HPatches where it has an ``H_1_k`` file, else Oxford; files of
the other layout are named in a warning and left out. View names may have any case and leading zeros
(``IMG01.PPM``).

Images are read with :func:`kp2d.io.imageio.read_image_rgb` and turned to BGR (as the original feeds the
network; a truncated JPEG or PNG is a bad file, not a partial image),
resized with ``cv2.resize`` (bilinear) to the evaluation shape ``(W, H)``, and each homography rescaled
to the resized images: ``H' = S2 · H · S1⁻¹``, ``S_i = diag(W / w_i, H / h_i, 1)``.

One dataset item is a whole sequence (its reference image is read once, and the network can process
all its views in one batch). Bad files do not raise inside the dataset: they are reported in
:attr:`SequenceSample.problems`, and the caller decides whether to stop or skip.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from kp2d.errors import ConfigError, DataError
from kp2d.geometry import scale_homography
from kp2d.io.imageio import read_image_rgb
from kp2d.io.images import resize_image

__all__ = [
    "IMAGE_SUFFIXES",
    "SUBSETS",
    "HPatchesDataset",
    "HPatchesPair",
    "HPatchesSequence",
    "SequenceSample",
    "find_sequences",
    "read_homography",
    "read_image",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".ppm", ".png", ".jpg", ".jpeg", ".pgm")
SUBSETS = ("all", "i", "v")
_HOMOGRAPHY_NAME = re.compile(r"^(?:H_1_(\d+)|H1to(\d+)p)$")  # HPatches (group 1) or Oxford (group 2)
_MAX_CONDITION = 1e15  # a homography this ill-conditioned is treated as singular


@dataclass(frozen=True)
class HPatchesPair:
    """One evaluation pair ``(1, k)`` of a sequence.

    Attributes:
        sequence: sequence (folder) name.
        index: ``k``, the view compared with view 1.
        image1, image2: image paths; ``None`` when the folder has no such image.
        homography_path: the ``H_1_k`` (or Oxford ``H1tokp``) file.
    """

    sequence: str
    index: int
    image1: Path | None
    image2: Path | None
    homography_path: Path

    @property
    def name(self) -> str:
        """``"<sequence>:1-<k>"``."""
        return f"{self.sequence}:1-{self.index}"

    def stem(self, view: int) -> str:
        """How view ``view``'s image is named in this pair's layout, without suffix: ``k`` or ``imgk``."""
        return f"img{view}" if self.homography_path.name.startswith("H1to") else str(view)


@dataclass(frozen=True)
class HPatchesSequence:
    """A sequence folder and its pairs, sorted by ``k``."""

    name: str
    folder: Path
    pairs: tuple[HPatchesPair, ...]


@dataclass
class SequenceSample:
    """A sequence read and resized: the reference view and the views of its readable pairs.

    Attributes:
        name: sequence name.
        images: ``(1 + P, H, W, 3)`` uint8 BGR; ``images[0]`` is view 1, ``images[1 + p]`` the second
            view of ``pair_names[p]``.
        homographies: ``(P, 3, 3)`` float64, view-1 pixels → view-k pixels, rescaled to ``(W, H)``.
        pair_names: ``P`` pair names (``"<sequence>:1-<k>"``).
        problems: ``(pair name, message)`` for each pair that could not be read (left out of the above).
    """

    name: str
    images: np.ndarray
    homographies: np.ndarray
    pair_names: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)


#: A view's image name without suffix: ``k`` (HPatches) or ``imgk`` (Oxford), any case, leading zeros allowed.
_VIEW_NAME = re.compile(r"^(img)?0*(\d+)$", re.IGNORECASE)


def _homographies_by_layout(folder: Path) -> dict[bool, dict[int, Path]]:
    """``{oxford: {k: path}}``: the folder's ``H_1_k`` (under ``False``) and ``H1tokp`` files, k > 1."""
    found: dict[bool, dict[int, Path]] = {False: {}, True: {}}
    for path in sorted(folder.iterdir()):
        match = _HOMOGRAPHY_NAME.match(path.name)
        if match and path.is_file():
            oxford = match.group(1) is None
            view = int(match.group(2) if oxford else match.group(1))
            if view != 1:
                found[oxford][view] = path
    return found


def _homography_files(folder: Path) -> list[tuple[int, Path]]:
    """``(k, path)`` of the folder's homographies by ``k``: its ``H_1_k``, or ``H1tokp`` if it has none."""
    by_layout = _homographies_by_layout(folder)
    return sorted((by_layout[False] or by_layout[True]).items())


def _view_images_by_layout(folder: Path) -> dict[bool, dict[int, Path]]:
    """``{oxford: {k: path}}``: the folder's view images ``k.*`` (under ``False``) and ``imgk.*``.

    Suffixes are those of :data:`IMAGE_SUFFIXES` in any case, the first of that list where a view has several.
    """
    found: dict[bool, dict[int, Path]] = {False: {}, True: {}}
    for path in sorted(folder.iterdir(), key=lambda p: (_suffix_rank(p), p.name)):
        match = _VIEW_NAME.match(path.stem)
        if match and _suffix_rank(path) < len(IMAGE_SUFFIXES) and path.is_file():
            found[bool(match.group(1))].setdefault(int(match.group(2)), path)
    return found


def _suffix_rank(path: Path) -> int:
    suffix = path.suffix.lower()
    return IMAGE_SUFFIXES.index(suffix) if suffix in IMAGE_SUFFIXES else len(IMAGE_SUFFIXES)


def _read_sequence_folder(folder: Path) -> HPatchesSequence:
    """The sequence's pairs, one per homography file of the folder's layout; other views are logged.

    A folder with ``H_1_k`` files is read in the HPatches layout (``k.*`` images), one with only ``H1tokp``
    files in the Oxford layout (``imgk.*``); view images and homographies of the other layout, and views
    without a homography, are named in a warning and left out.
    """
    by_layout = _homographies_by_layout(folder)
    oxford = not by_layout[False]
    homographies = sorted(by_layout[oxford].items())
    images_by_layout = _view_images_by_layout(folder)
    images = images_by_layout[oxford]
    reference = images.get(1)
    pairs = tuple(HPatchesPair(folder.name, k, reference, images.get(k), path) for k, path in homographies)
    used = {1, *(k for k, _ in homographies)}
    unlisted = [path.name for k, path in sorted(images.items()) if k not in used]
    if unlisted:
        log.warning(
            "%s: no %s file for %s; left out of the evaluation",
            folder.name, "H1tokp" if oxford else "H_1_k", ", ".join(unlisted),
        )
    if not oxford:  # an Oxford-layout folder has no H_1_k file by definition
        other = sorted(path.name for path in [*by_layout[True].values(), *images_by_layout[True].values()])
        if other:
            log.warning(
                "%s: read in the HPatches layout (1.*, H_1_k); %s of the Oxford layout left out",
                folder.name, ", ".join(other),
            )
    return HPatchesSequence(folder.name, folder, pairs)


def _in_subset(name: str, subset: str) -> bool:
    return subset == "all" or name.startswith(f"{subset}_")


def find_sequences(root: str | Path, subset: str = "all") -> list[HPatchesSequence]:
    """The sequences under ``root`` (sorted by name) that belong to ``subset``.

    Args:
        root: folder of sequence folders (or a single sequence folder).
        subset: ``"all"``, ``"i"`` (folders named ``i_*``) or ``"v"`` (``v_*``).

    Raises:
        DataError: ``root`` is missing or holds no sequence (no folder with an ``H_1_k`` or ``H1tokp``
            file).
        ConfigError: unknown ``subset``.
    """
    if subset not in SUBSETS:
        raise ConfigError(f"unknown HPatches subset '{subset}' (use {', '.join(SUBSETS)})")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"HPatches folder not found: {root}")
    if _homography_files(root):
        folders = [root]
    else:
        folders = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if _homography_files(folder):
                folders.append(folder)
            else:
                log.warning("%s: no H_1_k (or H1tokp) homography files, not a sequence; ignored", folder)
    if not folders:
        raise DataError(
            f"no HPatches sequences in {root} (expected folders with 1.ppm/.png/.jpg and H_1_k, "
            "or img1.ppm and H1to2p)"
        )
    sequences = [_read_sequence_folder(folder) for folder in folders if _in_subset(folder.name, subset)]
    if not sequences:
        raise DataError(
            f"no sequences of subset '{subset}' in {root} (folder names must start with {subset}_)"
        )
    return sequences


def read_image(path: str | Path) -> np.ndarray:
    """``(h, w, 3)`` uint8 BGR image (as the original feeds the network), read with ``read_image_rgb``.

    Raises:
        DataError: the file is missing, truncated, damaged or cannot be decoded.
    """
    return cv2.cvtColor(read_image_rgb(path), cv2.COLOR_RGB2BGR)


def read_homography(path: str | Path) -> np.ndarray:
    """A ``(3, 3)`` float64 homography from whitespace-separated text (``np.loadtxt`` semantics).

    Raises:
        DataError: missing file, not 3×3 numbers, non-finite values, or a singular matrix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: homography file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loadtxt warns on an empty file; the shape check reports it
            homography = np.loadtxt(path, dtype=np.float64)
    except (ValueError, OSError) as err:
        raise DataError(f"{path}: malformed homography (expected 3x3 numbers): {err}") from None
    if homography.shape != (3, 3):
        raise DataError(f"{path}: malformed homography: expected 3x3 numbers, got shape {homography.shape}")
    if not np.all(np.isfinite(homography)):
        raise DataError(f"{path}: homography has non-finite values")
    if not np.linalg.cond(homography) < _MAX_CONDITION:
        raise DataError(f"{path}: homography is singular")
    return homography


def _image_size(image: np.ndarray) -> tuple[int, int]:
    return image.shape[1], image.shape[0]


class HPatchesDataset(torch.utils.data.Dataset):
    """HPatches-format sequences, one :class:`SequenceSample` per sequence, resized to ``size_wh``.

    Args:
        root: folder of sequences (see the module docstring).
        size_wh: evaluation size ``(W, H)``.
        subset: ``"all"``, ``"i"`` or ``"v"``.

    :func:`kp2d.eval.hpatches.evaluate_hpatches` reads it ahead with threads; it also works in a
    ``DataLoader(dataset, batch_size=None, collate_fn=lambda s: s)``.
    """

    def __init__(self, root: str | Path, size_wh: tuple[int, int] = (320, 240), subset: str = "all") -> None:
        width, height = size_wh
        if width <= 0 or height <= 0:
            raise ConfigError(f"evaluation shape must be positive, got {width}x{height}")
        self.root = Path(root)
        self.size_wh = (int(width), int(height))
        self.subset = subset
        self.sequences = find_sequences(root, subset)

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def num_pairs(self) -> int:
        """Pairs listed by the homography files (readable or not)."""
        return sum(len(sequence.pairs) for sequence in self.sequences)

    def __getitem__(self, index: int) -> SequenceSample:
        sequence = self.sequences[index]
        width, height = self.size_wh
        problems: list[tuple[str, str]] = []
        reference = None
        if sequence.pairs and sequence.pairs[0].image1 is None:
            stem = sequence.pairs[0].stem(1)
            message = (
                f"{sequence.folder / stem}.*: reference image not found (no {stem}.ppm/.png/.jpg/.jpeg/.pgm)"
            )
            problems = [(pair.name, message) for pair in sequence.pairs]
        else:
            try:
                reference = read_image(sequence.pairs[0].image1)
            except DataError as err:
                problems = [(pair.name, str(err)) for pair in sequence.pairs]

        images = [] if reference is None else [resize_image(reference, self.size_wh)]
        homographies, names = [], []
        if reference is not None:
            for pair in sequence.pairs:
                try:
                    if pair.image2 is None:
                        raise DataError(
                            f"{sequence.folder / pair.stem(pair.index)}.*: image not found "
                            f"(listed by {pair.homography_path.name})"
                        )
                    homography = read_homography(pair.homography_path)
                    image = read_image(pair.image2)
                except DataError as err:
                    problems.append((pair.name, str(err)))
                    continue
                scaled = scale_homography(
                    homography, _image_size(reference), _image_size(image), self.size_wh
                )
                images.append(resize_image(image, self.size_wh))
                homographies.append(scaled)
                names.append(pair.name)
        return SequenceSample(
            name=sequence.name,
            images=np.stack(images) if images else np.zeros((0, height, width, 3), np.uint8),
            homographies=np.stack(homographies) if homographies else np.zeros((0, 3, 3)),
            pair_names=names,
            problems=problems,
        )
