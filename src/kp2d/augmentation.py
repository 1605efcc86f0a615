"""Homographic adaptation and photometric augmentation of training pairs (SPEC §3 steps 1–3).

Everything is batched tensor code on the images' device; all random draws come from one CPU
``torch.Generator`` (plus a device generator seeded from it for the per-pixel noise), so a seeded
generator gives the same batch every time.

Coordinates are normalised ``(x, y)`` in ``[-1, 1]`` (``align_corners=True``, see :mod:`kp2d.geometry`).
For each image of the batch (the *input*, already resized):

- ``affine`` ``A`` maps target coordinates to input coordinates: ``target(q) = input(A q)`` (random flips
  and a random affine, zeros outside the input);
- ``homography`` ``H`` maps source coordinates to target coordinates: ``source(p) = target(H p)``.

The source is sampled from the input in one interpolation, ``source(p) = input(A H p)`` where ``H p`` lies
inside the target, zeros elsewhere, so the correspondence ``source(p) == target(H p)`` holds exactly in the
continuous sense.

Photometric order (the original code's): shared channel permutation, per-image noise, per-image blur,
shared grayscale, per-image colour jitter. The jitter applies brightness, contrast, saturation, hue in
this fixed order (torchvision draws a random order per call; a fixed order keeps it simple and
deterministic). ``original_jitter_noop=True`` skips the jitter, as the original code effectively does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kp2d.config import AugmentationConfig
from kp2d.geometry import HomographySamplerConfig, sample_homographies
from kp2d.io.images import GRAY_WEIGHTS, rgb_to_grayscale

__all__ = [
    "AugmentedBatch",
    "HomographicAugmentation",
    "PhotometricParams",
    "apply_photometric",
    "color_jitter",
    "gaussian_blur",
    "gaussian_kernel_1d",
    "sample_photometric_params",
    "sample_spatial_transforms",
    "shift_hue",
    "spatial_transforms",
    "warp_pair",
]

_OUTSIDE = 4.0  # a normalised coordinate far enough outside [-1, 1] that bilinear sampling gives 0


@dataclass
class AugmentedBatch:
    """One augmented training batch.

    Attributes:
        target: ``(B, 3, H, W)`` float32 in ``[0, 1]``.
        source: ``(B, 3, H, W)`` float32 in ``[0, 1]``: ``source(p) = target(H p)`` before photometry.
        homography: ``(B, 3, 3)`` float32, source-normalised → target-normalised coordinates.
        affine: ``(B, 3, 3)`` float32, target-normalised → input-normalised coordinates (flips + affine).
    """

    target: torch.Tensor
    source: torch.Tensor
    homography: torch.Tensor
    affine: torch.Tensor


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")


def _to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` → float32 ``[0, 1]``; floating images are cast to float32 unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    return images.float()


# --------------------------------------------------------------------------------------------------
# Step 1: flips and affine (target from input)
# --------------------------------------------------------------------------------------------------


def spatial_transforms(
    angles: torch.Tensor,
    translations: torch.Tensor,
    scales: torch.Tensor,
    flip_x: torch.Tensor,
    flip_y: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """Flips followed by an affine, as matrices target-normalised → input-normalised.

    The forward transform (input → target) mirrors the image (``flip_x``: left-right, ``flip_y``:
    up-down), then rotates it by ``angles`` degrees counter-clockwise as displayed (y down) about the
    image centre, scales it by ``scales`` and moves it by ``translations`` pixels — the semantics of
    torchvision's ``RandomVerticalFlip``, ``RandomHorizontalFlip``, ``RandomAffine`` in that order (but
    one bilinear resampling instead of three nearest-neighbour ones, and no rounding of the shift).
    The returned matrix is the inverse of that forward map, the one a sampling grid needs.

    Args:
        angles: ``(B,)`` degrees. translations: ``(B, 2)`` pixels ``(tx, ty)``. scales: ``(B,)``.
        flip_x, flip_y: ``(B,)`` bool.

    Returns:
        ``(B, 3, 3)`` float64 on the inputs' device.
    """
    f64 = torch.float64
    angles = angles.to(f64) * (math.pi / 180.0)
    scales = scales.to(f64)
    half = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=f64, device=angles.device)
    cos, sin = angles.cos(), angles.sin()
    # forward map in pixels about the centre: q = s R p + t, R = [[cos, sin], [-sin, cos]] (CCW on screen)
    # inverse: p = R^T (q - t) / s; in normalised coordinates p_n = D^-1 p with D = diag(half).
    rot_inv = torch.stack([cos, -sin, sin, cos], dim=-1).view(-1, 2, 2)  # R^T
    linear = rot_inv * half.view(1, 1, 2) / half.view(1, 2, 1) / scales.view(-1, 1, 1)  # D^-1 R^T D / s
    offset = -(rot_inv @ translations.to(f64).unsqueeze(-1)).squeeze(-1) / half / scales.unsqueeze(-1)
    mirror = torch.stack(
        [1.0 - 2.0 * flip_x.to(f64), 1.0 - 2.0 * flip_y.to(f64)], dim=-1
    )  # (B, 2): flips are self-inverse and applied first, so they act last on the inverse map
    matrix = torch.zeros(angles.shape[0], 3, 3, dtype=f64, device=angles.device)
    matrix[:, :2, :2] = linear * mirror.unsqueeze(-1)
    matrix[:, :2, 2] = offset * mirror
    matrix[:, 2, 2] = 1.0
    return matrix


def sample_spatial_transforms(
    batch: int, height: int, width: int, config: AugmentationConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random flips and affine of SPEC §3 step 1, as :func:`spatial_transforms` matrices.

    Draw order: vertical flips, horizontal flips, angles, translations, scales (all on the CPU).

    Returns:
        ``(B, 3, 3)`` float64 on the CPU, target-normalised → input-normalised.
    """
    f64 = torch.float64

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=generator, dtype=f64)

    flip_y = torch.rand(batch, generator=generator) < config.vertical_flip
    flip_x = torch.rand(batch, generator=generator) < config.horizontal_flip
    angles = uniform(-config.affine_degrees, config.affine_degrees, batch)
    max_shift = torch.tensor([config.affine_translate * width, config.affine_translate * height], dtype=f64)
    translations = uniform(-1.0, 1.0, batch, 2) * max_shift
    scales = uniform(config.affine_scale[0], config.affine_scale[1], batch)
    return spatial_transforms(angles, translations, scales, flip_x, flip_y, height, width)


def _projective_grid(matrices: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``M p`` (normalised) for every pixel ``p`` of an ``H x W`` image: ``(N, 3, 3)`` → ``(N, H, W, 2)``.

    Same dtype and device as ``matrices``.

    Separable in x and y, so each output coordinate costs a few full-size operations.
    """
    device = matrices.device
    m = matrices.view(-1, 3, 3, 1, 1)
    xs = torch.linspace(-1.0, 1.0, width, device=device).view(1, 1, width)
    ys = torch.linspace(-1.0, 1.0, height, device=device).view(1, height, 1)

    def row(i: int) -> torch.Tensor:  # (N, H, W)
        return m[:, i, 0] * xs + (m[:, i, 1] * ys + m[:, i, 2])

    depth = row(2)
    return torch.stack([row(0).div_(depth), row(1).div_(depth)], dim=-1)


def warp_pair(
    images: torch.Tensor, affine: torch.Tensor, homography: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target and source from the input in one bilinear resampling each (zeros outside).

    Args:
        images: ``(B, C, H, W)`` float.
        affine: ``(B, 3, 3)`` target-normalised → input-normalised (any dtype/device).
        homography: ``(B, 3, 3)`` source-normalised → target-normalised.

    Returns:
        ``target (B, C, H, W)`` with ``target(q) = images(A q)``, and ``source (B, C, H, W)`` with
        ``source(p) = target(H p)`` (computed as ``images(A H p)``, zero where ``H p`` leaves the target).
    """
    batch, _, height, width = images.shape
    affine = affine.detach().to(device="cpu", dtype=torch.float64)  # 3x3 products in float64 on the CPU
    homography = homography.detach().to(device="cpu", dtype=torch.float64)
    matrices = torch.cat([affine, affine @ homography, homography]).to(images.device, torch.float32)
    grids = _projective_grid(matrices, height, width)  # A p, A H p, H p
    outside = (grids[2 * batch :].abs() > 1.0 + 1e-5).any(dim=-1, keepdim=True)  # H p off the target
    grids = grids[: 2 * batch]
    grids[batch:].masked_fill_(outside, _OUTSIDE)
    warped = F.grid_sample(
        images.repeat(2, 1, 1, 1), grids, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return warped[:batch], warped[batch:]


# --------------------------------------------------------------------------------------------------
# Step 3: photometric augmentation
# --------------------------------------------------------------------------------------------------


@dataclass
class PhotometricParams:
    """Random draws of one photometric augmentation of ``B`` pairs.

    Per-pair fields have ``B`` rows and are shared by target and source; per-image fields have ``2B``
    rows, the ``B`` targets first, then the ``B`` sources.

    Attributes:
        channel_order: ``(B, 3)`` long, a permutation (identity when not shuffled).
        grayscale: ``(B,)`` bool.
        noise: ``(2B,)`` bool, add Gaussian noise.
        blur_kernel: ``(2B,)`` long, Gaussian kernel size (0 or 1 = no blur).
        brightness, contrast, saturation: ``(2B,)`` float factors (1 = unchanged).
        hue: ``(2B,)`` float, hue shift in turns (0 = unchanged).
        noise_seed: seed of the generator that draws the per-pixel noise.
    """

    channel_order: torch.Tensor
    grayscale: torch.Tensor
    noise: torch.Tensor
    blur_kernel: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    noise_seed: int


def sample_photometric_params(
    batch: int, config: AugmentationConfig, generator: torch.Generator | None = None
) -> PhotometricParams:
    """Draw the photometric parameters of ``batch`` pairs on the CPU (fixed draw order, field order).

    The jitter factors are drawn even when ``config.original_jitter_noop`` is set, so that switch does
    not change any other draw.
    """

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator)

    def factors(amount: float) -> torch.Tensor:  # torchvision: U[max(0, 1 - a), 1 + a]
        low = max(0.0, 1.0 - amount)
        return low + (1.0 + amount - low) * rand(2 * batch)

    shuffle = rand(batch) < config.channel_shuffle
    permutations = rand(batch, 3).argsort(dim=1)
    identity = torch.arange(3).expand(batch, 3)
    channel_order = torch.where(shuffle.unsqueeze(1), permutations, identity)
    grayscale = rand(batch) < config.grayscale
    noise = rand(2 * batch) < config.noise
    kernels = torch.tensor(config.blur_kernels, dtype=torch.long)
    blur_kernel = kernels[torch.randint(len(kernels), (2 * batch,), generator=generator)]
    brightness_amount, contrast_amount, saturation_amount, hue_amount = config.jitter
    brightness = factors(brightness_amount)
    contrast = factors(contrast_amount)
    saturation = factors(saturation_amount)
    hue = (2.0 * rand(2 * batch) - 1.0) * hue_amount
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return PhotometricParams(
        channel_order, grayscale, noise, blur_kernel, brightness, contrast, saturation, hue, noise_seed
    )


def gaussian_kernel_1d(size: int) -> list[float]:
    """OpenCV's 1-D Gaussian kernel for ``cv2.GaussianBlur(img, (size, size), 0)``.

    Odd sizes up to 7 use OpenCV's fixed binomial tables (what ``getGaussianKernel`` returns for
    sigma <= 0); larger sizes use ``sigma = 0.3 ((size - 1) / 2 - 1) + 0.8`` (OpenCV 4; OpenCV 5 also
    tabulates size 9). Sizes 0 and 1: identity.
    """
    if size <= 1:
        return [1.0]
    if size % 2 == 0:
        raise ValueError(f"blur kernel sizes must be odd (or 0), got {size}")
    tables = {3: [0.25, 0.5, 0.25], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625],
              7: [0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125]}  # fmt: skip
    if size in tables:
        return tables[size]
    sigma = 0.3 * ((size - 1) * 0.5 - 1.0) + 0.8
    taps = [math.exp(-((i - (size - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(size)]
    total = sum(taps)
    return [t / total for t in taps]


def gaussian_blur(images: torch.Tensor, kernel_sizes: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur like ``cv2.GaussianBlur(img, (k, k), 0)`` (reflect-101 borders).

    Only the images with ``k > 1`` are filtered, all at once: each gets a kernel of the largest size,
    zero-padded around its own taps, applied separably as shifted multiply-adds.

    Args:
        images: ``(B, C, H, W)`` float.
        kernel_sizes: ``(B,)`` odd ints or 0 (0 or 1 = unchanged), on any device.

    Returns:
        ``(B, C, H, W)``, a new tensor where anything is blurred, else ``images`` itself.
    """
    kernel_sizes = kernel_sizes.cpu().long()
    blurred = (kernel_sizes > 1).nonzero().flatten()
    if blurred.numel() == 0:
        return images
    widest = int(kernel_sizes.max())
    height, width = images.shape[-2:]
    if min(height, width) <= widest // 2:
        raise ValueError(f"images of shape {tuple(images.shape)} are too small for a {widest}-tap blur")
    table = torch.zeros(widest + 1, widest, dtype=torch.float64)  # row k: the size-k kernel, centred
    for size in kernel_sizes[blurred].unique().tolist():
        kernel = gaussian_kernel_1d(size)
        start = (widest - len(kernel)) // 2
        table[size, start : start + len(kernel)] = torch.tensor(kernel, dtype=torch.float64)
    taps = table[kernel_sizes[blurred]].to(device=images.device, dtype=images.dtype)  # (N, widest)
    taps = taps.view(-1, 1, 1, 1, widest)
    pad = widest // 2
    index = blurred.to(images.device)
    padded = F.pad(images.index_select(0, index), (pad, pad, pad, pad), mode="reflect")
    rows = sum(taps[..., i] * padded[..., i : i + width] for i in range(widest))  # (N, C, H + 2 pad, W)
    smooth = sum(taps[..., i] * rows[..., i : i + height, :] for i in range(widest))
    if blurred.numel() == images.shape[0]:
        return smooth
    return images.index_copy(0, index, smooth)


def shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of ``(B, 3, H, W)`` RGB images in ``[0, 1]`` by ``shift`` ``(B,)`` turns.

    Value (max) and chroma (max - min) are kept; with ``k = (n + 6 hue) mod 6``, channel ``n`` of
    ``(5, 3, 1)`` (R, G, B) becomes ``max - chroma clamp(min(k, 4 - k), 0, 1)`` (HSV → RGB).
    """
    red, green, blue = images.unbind(dim=1)
    value = torch.maximum(torch.maximum(red, green), blue)
    chroma = value - torch.minimum(torch.minimum(red, green), blue)
    inverse = torch.where(chroma > 0, chroma, 1.0).reciprocal_()
    hue_green_max = torch.where(
        green == value, (blue - red).mul_(inverse).add_(2.0), (red - green).mul_(inverse).add_(4.0)
    )
    # hue in sixths of a turn (up to a multiple of 6); arbitrary where chroma = 0: grey pixels stay grey
    hue = torch.where(red == value, (green - blue).mul_(inverse), hue_green_max)
    hue = hue.add_(6.0 * shift.to(device=images.device, dtype=images.dtype).view(-1, 1, 1))
    offsets = images.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = (hue.unsqueeze(1) + offsets).remainder_(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return ramp.mul_(-chroma.unsqueeze(1)).add_(value.unsqueeze(1))


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def color_jitter(
    images: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
) -> torch.Tensor:
    """Colour jitter, torchvision ``ColorJitter`` semantics, given per-image factors, fixed order.

    Order: brightness ``b x``; contrast: blend with the image's mean grey level, ``c x + (1 - c) mean``;
    saturation: blend with the grey image, ``s x + (1 - s) grey``; hue: shift the HSV hue by ``h`` turns.
    Each step clamps to ``[0, 1]``.

    Args:
        images: ``(B, 3, H, W)`` in ``[0, 1]``. brightness, contrast, saturation, hue: ``(B,)``.

    Returns:
        ``(B, 3, H, W)`` in ``[0, 1]`` (a new tensor).
    """
    images = (images * _per_image(brightness, images)).clamp_(0.0, 1.0)
    factor = _per_image(contrast, images)
    weights = images.new_tensor(GRAY_WEIGHTS)
    mean = (images.mean(dim=(2, 3)) @ weights).view(-1, 1, 1, 1)  # mean of the grey image
    images = images.mul_(factor).add_((1.0 - factor) * mean).clamp_(0.0, 1.0)
    factor = _per_image(saturation, images)
    gray = rgb_to_grayscale(images)
    images = images.mul_(factor).add_((1.0 - factor) * gray).clamp_(0.0, 1.0)
    return shift_hue(images, hue).clamp_(0.0, 1.0)


def _pixel_noise(shape: tuple[int, ...], like: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal noise on ``like``'s device and dtype, from a generator seeded with ``seed``."""
    generator = torch.Generator(device=like.device)
    generator.manual_seed(seed)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def apply_photometric(
    target: torch.Tensor,
    source: torch.Tensor,
    params: PhotometricParams,
    config: AugmentationConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Photometric augmentation of pairs (SPEC §3 step 3), in the original code's order.

    Channel permutation (shared), Gaussian noise (per image, ``config.noise_std``, clamped), Gaussian blur
    (per image), grayscale (shared), colour jitter (per image; skipped when ``config.original_jitter_noop``).

    Args:
        target, source: ``(B, 3, H, W)`` float in ``[0, 1]``.
        params: from :func:`sample_photometric_params`.

    Returns:
        ``(target, source)``, ``(B, 3, H, W)`` float in ``[0, 1]``.
    """
    _check_images(target)
    _check_images(source)
    batch = target.shape[0]
    device = target.device
    images = torch.cat([target, source])  # (2B, 3, H, W): targets, then sources

    order = params.channel_order.repeat(2, 1)
    if (order != torch.arange(3)).any():
        images = images.gather(1, order.to(device).view(2 * batch, 3, 1, 1).expand_as(images))

    noisy = params.noise.nonzero().flatten()  # CPU tensors: no device synchronisation
    if noisy.numel():
        index = noisy.to(device)
        noise = _pixel_noise((noisy.numel(), *images.shape[1:]), images, params.noise_seed)
        noisy_images = noise.mul_(config.noise_std).add_(images[index]).clamp_(0.0, 1.0)
        images = images.index_copy(0, index, noisy_images)

    images = gaussian_blur(images, params.blur_kernel)

    gray = params.grayscale.repeat(2).nonzero().flatten()
    if gray.numel():
        index = gray.to(device)
        images = images.index_copy(0, index, rgb_to_grayscale(images[index]).expand(-1, 3, -1, -1))

    if not config.original_jitter_noop:
        images = color_jitter(images, params.brightness, params.contrast, params.saturation, params.hue)
    return images[:batch], images[batch:]


def random_crop(
    images: torch.Tensor, shape: tuple[int, int], generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random ``shape = (h, w)`` window of each of ``images (B, C, H, W)`` (offsets drawn on the CPU)."""
    batch, _, height, width = images.shape
    crop_h, crop_w = shape
    if crop_h > height or crop_w > width:
        raise ValueError(f"images of shape {tuple(images.shape)} are smaller than the crop {tuple(shape)}")
    top = torch.randint(0, height - crop_h + 1, (batch,), generator=generator).to(images.device)
    left = torch.randint(0, width - crop_w + 1, (batch,), generator=generator).to(images.device)
    rows = (top[:, None] + torch.arange(crop_h, device=images.device))[:, None, :, None]  # (B, 1, h, 1)
    cols = (left[:, None] + torch.arange(crop_w, device=images.device))[:, None, None, :]  # (B, 1, 1, w)
    index = torch.arange(batch, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[index, channel, rows, cols]


def scaled_crop(
    images: torch.Tensor,
    shape: tuple[int, int],
    window_scale: tuple[float, float] = (1.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random window of each of ``images (B, C, H, W)``, resized to ``shape = (h, w)``.

    The window is ``shape`` times a factor drawn once per batch, uniform in ``window_scale`` (no draw when
    the range is one value), at most the image; bilinear, antialiased resize. ``(1, 1)`` is
    :func:`random_crop`.
    """
    low, high = window_scale
    factor = low if high == low else low + (high - low) * float(torch.rand((), generator=generator))
    height, width = images.shape[-2:]
    window = (min(height, round(shape[0] * factor)), min(width, round(shape[1] * factor)))
    crops = random_crop(images, window, generator)
    if window == tuple(shape):
        return crops
    resized = F.interpolate(crops, size=tuple(shape), mode="bilinear", align_corners=False, antialias=True)
    return resized.clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# The whole augmentation
# --------------------------------------------------------------------------------------------------


class HomographicAugmentation:
    """Target / source pairs with their homography, from a batch of resized images (SPEC §3 steps 1–3).

    Args:
        config: the augmentation parameters.
        photometric: apply step 3 (False: target and source are pure resamplings of the input).

    Draw order per call (from the CPU ``generator``): the crop window's scale (with ``crop_from`` and a
    ``crop_window_scale`` range) and offsets (with ``crop_from``), flips and
    affine, homographies, photometric parameters (including a seed for the per-pixel noise, drawn on the
    images' device).
    """

    def __init__(self, config: AugmentationConfig | None = None, photometric: bool = True) -> None:
        self.config = config if config is not None else AugmentationConfig()
        self.photometric = photometric
        self.sampler_config = HomographySamplerConfig(
            patch_ratio=self.config.patch_ratio,
            perspective_amplitude=self.config.perspective_amplitude,
            scaling_amplitude=self.config.scaling_amplitude,
            max_angle=self.config.max_angle,
        )

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> AugmentedBatch:
        """Augment ``(B, 3, H, W)`` uint8 (``[0, 255]``) or float (``[0, 1]``) images on any device.

        Args:
            images: the resized input images.
            generator: a CPU generator for every random draw (None: the global RNGs).

        Returns:
            :class:`AugmentedBatch` on ``images``' device.
        """
        _check_images(images)
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
        images = _to_unit_float(images)
        if tuple(self.config.crop_from) != (0, 0):  # photos loaded at crop_from: an image_shape window each
            images = scaled_crop(images, self.config.image_shape, self.config.crop_window_scale, generator)
        batch, _, height, width = images.shape
        affine = sample_spatial_transforms(batch, height, width, self.config, generator)
        homography = sample_homographies(batch, height, width, self.sampler_config, generator)
        target, source = warp_pair(images, affine, homography)
        if self.photometric:
            params = sample_photometric_params(batch, self.config, generator)
            target, source = apply_photometric(target, source, params, self.config)
        return AugmentedBatch(
            target=target,
            source=source,
            homography=homography.to(images.device),
            affine=affine.to(device=images.device, dtype=torch.float32),
        )
