import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import color
from skimage import data as samples

from kp2d.augmentation import (
    HomographicAugmentation,
    apply_photometric,
    color_jitter,
    gaussian_blur,
    gaussian_kernel_1d,
    sample_photometric_params,
    sample_spatial_transforms,
    shift_hue,
    spatial_transforms,
    warp_pair,
)
from kp2d.config import AugmentationConfig
from kp2d.geometry import (
    HomographySamplerConfig,
    denormalize_points,
    normalize_points,
    sample_homographies,
    warp_points,
)
from kp2d.io.images import rgb_to_grayscale

HEIGHT, WIDTH = 240, 320
NO_PHOTOMETRY = {"channel_shuffle": 0.0, "grayscale": 0.0, "noise": 0.0, "blur_kernels": (0,)}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def astronaut(batch: int = 1, smooth: float = 0.0) -> torch.Tensor:
    """skimage's astronaut resized to 240x320 (INTER_AREA), float (B, 3, H, W) in [0, 1]."""
    image = cv2.resize(samples.astronaut(), (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    image = image.astype(np.float32) / 255
    if smooth:
        image = cv2.GaussianBlur(image, (0, 0), smooth)
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).repeat(batch, 1, 1, 1).contiguous()


def bilinear_at(images: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Sample (B, C, H, W) at (B, N, 2) pixel (x, y) positions -> (B, N, C)."""
    grid = normalize_points(pixels, *images.shape[-2:]).unsqueeze(1)
    return F.grid_sample(images, grid, align_corners=True).squeeze(2).transpose(1, 2)


def blobs(centers: torch.Tensor, sigma: float = 1.2) -> torch.Tensor:
    """(B, N, 2) pixel centres -> (B, 3, H, W) images with a Gaussian dot (peak 1) at each centre."""
    ys, xs = torch.meshgrid(torch.arange(float(HEIGHT)), torch.arange(float(WIDTH)), indexing="ij")
    dx = xs.view(1, 1, HEIGHT, WIDTH) - centers[..., 0, None, None]
    dy = ys.view(1, 1, HEIGHT, WIDTH) - centers[..., 1, None, None]
    dots = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)).amax(dim=1, keepdim=True)
    return dots.expand(-1, 3, -1, -1).contiguous()


def centroid(image: torch.Tensor, around: torch.Tensor, radius: int = 8) -> torch.Tensor:
    """Intensity centroid (x, y) of channel 0 of (C, H, W) in a window around a pixel position."""
    x0, y0 = (int(round(v)) for v in around.tolist())
    window = image[0, y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    ys, xs = torch.meshgrid(
        torch.arange(y0 - radius, y0 + radius + 1.0),
        torch.arange(x0 - radius, x0 + radius + 1.0),
        indexing="ij",
    )
    total = window.sum()
    return torch.stack([(window * xs).sum() / total, (window * ys).sum() / total])


def inside(pixels: torch.Tensor, margin: float) -> torch.Tensor:
    x, y = pixels.unbind(-1)
    return (x >= margin) & (x <= WIDTH - 1 - margin) & (y >= margin) & (y <= HEIGHT - 1 - margin)


# ---------------------------------------------------------------------------------------------------
# The key property: source(p) == target(H p)
# ---------------------------------------------------------------------------------------------------


def test_source_pixel_matches_target_at_warped_point():
    images = astronaut(batch=4, smooth=1.5)
    batch = HomographicAugmentation(AugmentationConfig(), photometric=False)(images, seeded(1))
    points = torch.rand(4, 2000, 2, generator=seeded(2)) * torch.tensor([WIDTH - 21.0, HEIGHT - 21.0]) + 10
    points = points.round()  # whole source pixels: the source value there is a single interpolation
    warped = denormalize_points(
        warp_points(normalize_points(points, HEIGHT, WIDTH), batch.homography), HEIGHT, WIDTH
    )
    in_input = denormalize_points(
        warp_points(normalize_points(warped, HEIGHT, WIDTH), batch.affine), HEIGHT, WIDTH
    )  # where the content comes from: keep points whose content is real image, not the affine's zeros
    keep = inside(warped, 2) & inside(in_input, 2)
    assert keep.sum() > 2000
    source_values = batch.source[torch.arange(4)[:, None], :, points[..., 1].long(), points[..., 0].long()]
    target_values = bilinear_at(batch.target, warped)
    error = (source_values - target_values).abs()[keep]
    # only the target's extra interpolation differs; a 0.25 px offset would give a mean error of 0.005
    assert error.mean() < 0.0025 and error.max() < 0.04
    inverse = denormalize_points(
        warp_points(normalize_points(points, HEIGHT, WIDTH), torch.linalg.inv(batch.homography)),
        HEIGHT,
        WIDTH,
    )
    wrong = (source_values - bilinear_at(batch.target, inverse)).abs()[keep & inside(inverse, 2)]
    assert wrong.mean() > 10 * error.mean()  # the inverse convention would be far off


def test_dots_land_where_the_matrices_say():
    centers = torch.stack(
        torch.meshgrid(torch.arange(30.0, 300, 45), torch.arange(30.0, 220, 45), indexing="xy"), dim=-1
    ).reshape(1, -1, 2)
    centers = centers.repeat(4, 1, 1)
    images = blobs(centers)
    batch = HomographicAugmentation(AugmentationConfig(), photometric=False)(images, seeded(3))
    in_target = warp_points(
        normalize_points(centers.double(), HEIGHT, WIDTH), torch.linalg.inv(batch.affine.double())
    )
    in_source = warp_points(in_target, torch.linalg.inv(batch.homography.double()))
    in_target = denormalize_points(in_target, HEIGHT, WIDTH).float()
    in_source = denormalize_points(in_source, HEIGHT, WIDTH).float()
    checked = 0
    for b in range(4):
        for i in range(centers.shape[1]):
            if inside(in_target[b, i], 10) and inside(in_source[b, i], 10):
                found_target = centroid(batch.target[b], in_target[b, i])
                found_source = centroid(batch.source[b], in_source[b, i])
                assert torch.dist(found_target, in_target[b, i]) < 0.15
                assert torch.dist(found_source, in_source[b, i]) < 0.15
                checked += 1
    assert checked >= 20


def test_source_sampled_from_input_in_one_interpolation():
    images = astronaut(batch=2)
    affine = sample_spatial_transforms(2, HEIGHT, WIDTH, AugmentationConfig(), seeded(4))
    homography = sample_homographies(2, HEIGHT, WIDTH, generator=seeded(5))
    target, source = warp_pair(images, affine, homography)
    pixels = torch.rand(2, 300, 2, generator=seeded(6)) * torch.tensor([WIDTH - 1.0, HEIGHT - 1.0])
    pixels = pixels.round()
    composed = denormalize_points(
        warp_points(normalize_points(pixels, HEIGHT, WIDTH), affine.float() @ homography), HEIGHT, WIDTH
    )
    expected = bilinear_at(images, composed)
    actual = source[torch.arange(2)[:, None], :, pixels[..., 1].long(), pixels[..., 0].long()]
    torch.testing.assert_close(actual, expected, atol=2e-4, rtol=0)
    identity = torch.eye(3).expand(2, 3, 3)
    same_target, same_source = warp_pair(images, identity, identity)
    torch.testing.assert_close(same_target, images, atol=3e-5, rtol=0)
    torch.testing.assert_close(same_source, images, atol=3e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------
# The homography sampler (SPEC appendix A)
# ---------------------------------------------------------------------------------------------------

UNIT_CORNERS = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])


def patch_corners(homography: torch.Tensor) -> torch.Tensor:
    return warp_points(UNIT_CORNERS.double().expand(homography.shape[0], 4, 2), homography.double())


def only(**switches: bool) -> HomographySamplerConfig:
    base = {"perspective": False, "scaling": False, "translation": False, "rotation": False}
    return HomographySamplerConfig(**{**base, **switches})


def test_sampled_patches_stay_inside_and_are_deterministic():
    homographies = sample_homographies(1000, HEIGHT, WIDTH, generator=seeded(7))
    assert homographies.shape == (1000, 3, 3) and homographies.dtype == torch.float32
    assert patch_corners(homographies).abs().max() <= 1 + 1e-5
    torch.testing.assert_close(homographies, sample_homographies(1000, HEIGHT, WIDTH, generator=seeded(7)))
    assert not torch.allclose(homographies, sample_homographies(1000, HEIGHT, WIDTH, generator=seeded(8)))


def test_identity_patch_is_a_centred_zoom_source_to_target():
    homography = sample_homographies(3, HEIGHT, WIDTH, only())
    torch.testing.assert_close(homography, torch.diag(torch.tensor([0.7, 0.7, 1.0])).expand(3, 3, 3))
    # the source is the target's central 70 %: source pixel (0, 0) shows target content at 15 % of the size
    target = astronaut(batch=1, smooth=1.0)
    _, source = warp_pair(target, torch.eye(3).unsqueeze(0), homography[:1])
    corner = bilinear_at(target, torch.tensor([[[0.15 * (WIDTH - 1), 0.15 * (HEIGHT - 1)]]]))
    torch.testing.assert_close(source[0, :, 0, 0], corner[0, 0], atol=1e-5, rtol=0)


def test_rotation_only_uses_the_candidate_angles():
    corners = patch_corners(sample_homographies(2000, HEIGHT, WIDTH, only(rotation=True), seeded(9)))
    corners[..., 1] *= HEIGHT / WIDTH  # back to the isotropic frame the rotation acts in
    midline = (corners[:, 2] + corners[:, 3] - corners[:, 0] - corners[:, 1]) / 2
    angles = torch.atan2(midline[:, 1], midline[:, 0])
    candidates = torch.cat([torch.zeros(1), torch.linspace(-math.pi / 4, math.pi / 4, 100)]).double()
    assert (angles[:, None] - candidates).abs().amin(dim=1).max() < 1e-6
    assert angles.abs().max() <= math.pi / 4 + 1e-9
    assert angles.min() < -0.3 and angles.max() > 0.3 and abs(angles.mean()) < 0.05
    torch.testing.assert_close(midline.norm(dim=1), torch.full((2000,), 1.4, dtype=torch.float64))


def test_scaling_only_statistics():
    corners = patch_corners(sample_homographies(4000, HEIGHT, WIDTH, only(scaling=True), seeded(10)))
    scales = corners[:, 3] / 0.7  # (0.7 s, 0.7 s): centred square scaled by s
    torch.testing.assert_close(scales[:, 0], scales[:, 1])
    assert scales.min() >= 0.9 - 1e-6 and scales.max() <= 1.1 + 1e-6
    assert abs(scales[:, 0].mean() - 1) < 0.005
    assert 0.065 < scales[:, 0].std() < 0.080  # N(1, 0.1) clipped at +-1 sigma: std 0.072


def test_perspective_only_statistics():
    corners = patch_corners(sample_homographies(4000, HEIGHT, WIDTH, only(perspective=True), seeded(11)))
    offsets = corners - 0.7 * UNIT_CORNERS.double()  # y is already divided by H/W again
    assert offsets.abs().max() <= 0.2 + 1e-6
    assert 0.13 < offsets.std() < 0.16  # N(0, 0.2) clipped at +-1 sigma: std 0.144
    # the left and right edges tilt symmetrically: the corners' mean stays at the centre
    assert corners.mean(dim=1).abs().max() < 1e-6


def test_translation_only_statistics():
    corners = patch_corners(sample_homographies(4000, HEIGHT, WIDTH, only(translation=True), seeded(12)))
    shifts = corners.mean(dim=1)
    assert shifts.abs().max() <= 0.3 + 1e-6
    assert (shifts.amin(dim=0) < -0.28).all() and (shifts.amax(dim=0) > 0.28).all()
    assert 0.15 < shifts.std() < 0.2  # uniform on [-0.3, 0.3]: std 0.173


# ---------------------------------------------------------------------------------------------------
# Flips and affine
# ---------------------------------------------------------------------------------------------------

IDENTITY = torch.eye(3).unsqueeze(0)


def test_flipped_marker_lands_mirrored():
    image = blobs(torch.tensor([[[50.0, 40.0]]]))
    spatial = AugmentationConfig(affine_degrees=0, affine_translate=0, affine_scale=(1.0, 1.0))
    for flip_x, flip_y, expected in [
        (1.0, 0.0, (269.0, 40.0)),
        (0.0, 1.0, (50.0, 199.0)),
        (1.0, 1.0, (269.0, 199.0)),
    ]:
        config = replace(spatial, horizontal_flip=flip_x, vertical_flip=flip_y)
        affine = sample_spatial_transforms(1, HEIGHT, WIDTH, config, seeded(13)).float()
        target, _ = warp_pair(image, affine, IDENTITY)
        assert torch.dist(centroid(target[0], torch.tensor(expected)), torch.tensor(expected)) < 1e-3
        torch.testing.assert_close(
            target, image.flip([-1] * int(flip_x) + [-2] * int(flip_y)), atol=1e-5, rtol=0
        )


def one(value: float) -> torch.Tensor:
    return torch.tensor([value])


def test_rotation_by_90_degrees_is_rot90():
    square = astronaut()[..., :HEIGHT]  # (1, 3, 240, 240)
    affine = spatial_transforms(
        one(90), torch.zeros(1, 2), one(1), one(0).bool(), one(0).bool(), HEIGHT, HEIGHT
    )
    target, _ = warp_pair(square, affine, IDENTITY)
    torch.testing.assert_close(target, torch.rot90(square, 1, dims=(-2, -1)), atol=3e-5, rtol=0)


def test_affine_matches_opencv_warp_affine():
    image = astronaut(smooth=1.0)
    angle, scale, shift = 12.0, 1.08, (-14.0, 9.0)
    affine = spatial_transforms(
        one(angle), torch.tensor([shift]), one(scale), one(0).bool(), one(1).bool(), HEIGHT, WIDTH
    )
    target, _ = warp_pair(image, affine, IDENTITY)
    flipped = image[0].flip(-2).permute(1, 2, 0).numpy()  # flips come first
    matrix = cv2.getRotationMatrix2D(((WIDTH - 1) / 2, (HEIGHT - 1) / 2), angle, scale)
    matrix[:, 2] += shift
    expected = cv2.warpAffine(flipped, matrix, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
    support, _ = warp_pair(torch.ones(1, 1, HEIGHT, WIDTH), affine, IDENTITY)
    interior = torch.from_numpy(cv2.erode((support[0, 0].numpy() > 0.999).astype(np.uint8), np.ones((5, 5))))
    difference = (target[0].permute(1, 2, 0) - torch.from_numpy(expected)).abs()[interior.bool()]
    assert interior.float().mean() > 0.7 and difference.max() < 0.01
    # a point moves like OpenCV's matrix says
    point = torch.tensor([[[100.0, 50.0]]])
    forward = torch.from_numpy(matrix).float() @ torch.tensor([100.0, HEIGHT - 1 - 50.0, 1.0])
    back = denormalize_points(
        warp_points(normalize_points(forward.view(1, 1, 2), HEIGHT, WIDTH), affine.float()), HEIGHT, WIDTH
    )
    torch.testing.assert_close(back, point, atol=1e-3, rtol=0)


def test_sampled_spatial_statistics():
    affine = sample_spatial_transforms(2000, HEIGHT, WIDTH, AugmentationConfig(), seeded(14))
    linear = affine[:, :2, :2] * torch.tensor([WIDTH - 1.0, HEIGHT - 1.0]).double().view(1, 2, 1)
    linear = linear / torch.tensor([WIDTH - 1.0, HEIGHT - 1.0]).double().view(1, 1, 2)  # back to pixels
    determinant = torch.linalg.det(linear)
    assert 0.45 < (determinant < 0).double().mean() < 0.55  # exactly one flip half of the time
    scales = determinant.abs().rsqrt()
    assert scales.min() >= 0.9 - 1e-9 and scales.max() <= 1.1 + 1e-9
    shift = affine[:, :2, 2].abs() * torch.tensor([(WIDTH - 1) / 2, (HEIGHT - 1) / 2]).double()
    assert shift.max() < 0.1 * WIDTH * 1.1 / 0.9 + 1  # translation of at most 10 % (rotated, scaled)


# ---------------------------------------------------------------------------------------------------
# Photometric augmentation
# ---------------------------------------------------------------------------------------------------


def test_shared_permutation_and_grayscale():
    config = AugmentationConfig(
        channel_shuffle=1.0, grayscale=0.5, noise=0.0, blur_kernels=(0,), original_jitter_noop=True
    )
    images = astronaut(batch=16)[..., ::4, ::4].contiguous()
    params = sample_photometric_params(16, config, seeded(15))
    target, source = apply_photometric(images, images.clone(), params, config)
    assert torch.equal(target, source)  # source and target share the draws
    assert 3 <= int(params.grayscale.sum()) <= 13
    assert (params.channel_order != torch.arange(3)).any(dim=1).sum() >= 10
    for b in range(16):
        permuted = images[b, params.channel_order[b]]
        expected = rgb_to_grayscale(permuted[None])[0].expand(3, -1, -1) if params.grayscale[b] else permuted
        torch.testing.assert_close(target[b], expected, atol=1e-6, rtol=0)


def test_grayscale_uses_opencv_weights():
    image = samples.coffee()[::4, ::4]
    tensor = torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None]
    expected = cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2GRAY)
    torch.testing.assert_close(rgb_to_grayscale(tensor)[0, 0], torch.from_numpy(expected), atol=1e-6, rtol=0)


def test_everything_on_stays_in_range_and_is_deterministic():
    images = torch.randint(0, 256, (4, 3, 96, 128), dtype=torch.uint8, generator=seeded(16))
    augment = HomographicAugmentation(AugmentationConfig(noise=1.0, jitter=(0.9, 0.9, 0.9, 0.5)))
    batch = augment(images, seeded(17))
    for image in (batch.target, batch.source):
        assert image.dtype == torch.float32 and image.shape == (4, 3, 96, 128)
        assert image.min() >= 0 and image.max() <= 1
    again = augment(images.float() / 255, seeded(17))  # float input in [0, 1] gives the same batch
    torch.testing.assert_close(again.target, batch.target, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.source, batch.source, atol=1e-6, rtol=0)
    other = augment(images, seeded(18))
    assert not torch.allclose(other.source, batch.source)
    with pytest.raises(ValueError, match="shape"):
        augment(images[:, :1])


def test_original_jitter_noop_leaves_colours_alone():
    base = AugmentationConfig(**NO_PHOTOMETRY)
    images = astronaut(batch=4)[..., ::2, ::2].contiguous()
    params = sample_photometric_params(4, base, seeded(19))
    jittered, _ = apply_photometric(images, images, params, base)
    untouched, _ = apply_photometric(images, images, params, replace(base, original_jitter_noop=True))
    torch.testing.assert_close(untouched, images, atol=0, rtol=0)
    assert (jittered - images).abs().mean() > 0.02
    ones = torch.ones(8)
    identity = color_jitter(images, ones[:4], ones[:4], ones[:4], torch.zeros(4))
    torch.testing.assert_close(identity, images, atol=2e-6, rtol=0)


def test_color_jitter_semantics():
    image = astronaut()[..., ::2, ::2].contiguous()
    gray = rgb_to_grayscale(image)
    one_, zero = torch.ones(1), torch.zeros(1)
    torch.testing.assert_close(
        color_jitter(image, one(1.5), one_, one_, zero), (1.5 * image).clamp(0, 1), atol=2e-6, rtol=0
    )
    flat = color_jitter(image, one_, zero, one_, zero)  # contrast 0: the mean grey level everywhere
    torch.testing.assert_close(flat, gray.mean().expand_as(image), atol=2e-6, rtol=0)
    torch.testing.assert_close(
        color_jitter(image, one_, one_, zero, zero), gray.expand_as(image), atol=2e-6, rtol=0
    )
    half = color_jitter(image, one_, one(0.5), one_, zero)
    torch.testing.assert_close(half, (0.5 * image + 0.5 * gray.mean()).clamp(0, 1), atol=2e-6, rtol=0)


def test_hue_shift_matches_hsv_reference():
    image = astronaut()[..., ::4, ::4]
    reference_hsv = color.rgb2hsv(image[0].permute(1, 2, 0).numpy())
    for shift in (0.05, -0.05, 0.5, 0.0):
        hsv = reference_hsv.copy()
        hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
        expected = torch.from_numpy(color.hsv2rgb(hsv)).permute(2, 0, 1).float()
        torch.testing.assert_close(shift_hue(image, one(shift))[0], expected, atol=1e-5, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(shift_hue(red, one(0.5)).flatten(), torch.tensor([0.0, 1.0, 1.0]))


@pytest.mark.parametrize("size", [3, 5, 7, 11])
def test_blur_matches_opencv(size):
    assert gaussian_kernel_1d(size) == pytest.approx(
        cv2.getGaussianKernel(size, 0).ravel().tolist(), abs=1e-7
    )
    image = astronaut()[0].permute(1, 2, 0).numpy()[:64, :80].copy()
    expected = cv2.GaussianBlur(image, (size, size), 0)  # BORDER_DEFAULT = reflect-101
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].repeat(3, 1, 1, 1)
    blurred = gaussian_blur(batch, torch.tensor([size, 0, 1]))
    torch.testing.assert_close(blurred[0], torch.from_numpy(expected).permute(2, 0, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(blurred[1:], batch[1:], atol=0, rtol=0)


def test_noise_std_and_probability():
    config = AugmentationConfig(
        noise=1.0, channel_shuffle=0, grayscale=0, blur_kernels=(0,), original_jitter_noop=True
    )
    flat = torch.full((4, 3, 64, 64), 0.5)
    params = sample_photometric_params(4, config, seeded(20))
    target, source = apply_photometric(flat, flat, params, config)
    noise = torch.cat([target, source]) - 0.5
    assert abs(noise.std() - 0.05) < 0.002 and noise.mean().abs() < 0.002
    assert not torch.allclose(target, source)  # independent noise per image
    half = sample_photometric_params(500, replace(config, noise=0.5), seeded(21))
    assert 0.45 < half.noise.double().mean() < 0.55
    kernels = sample_photometric_params(500, AugmentationConfig(), seeded(22)).blur_kernel
    assert set(kernels.tolist()) == {0, 1, 3, 5}


def test_random_crop_cuts_each_image_at_its_own_drawn_offset():
    from kp2d.augmentation import random_crop

    images = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8)
    crops = random_crop(images, (4, 5), torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    top = torch.randint(0, 3, (2,), generator=generator)
    left = torch.randint(0, 4, (2,), generator=generator)
    for b in range(2):
        torch.testing.assert_close(crops[b], images[b, :, top[b] : top[b] + 4, left[b] : left[b] + 5])
    with pytest.raises(ValueError, match="smaller than the crop"):
        random_crop(images, (7, 5))


def test_scaled_crop_resizes_a_window_of_the_drawn_scale():
    from kp2d.augmentation import random_crop, scaled_crop

    images = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    # (1, 1): the plain crop, the same draws
    torch.testing.assert_close(
        scaled_crop(images, (8, 12), (1.0, 1.0), torch.Generator().manual_seed(2)),
        random_crop(images, (8, 12), torch.Generator().manual_seed(2)),
    )
    # (2, 2): the whole 16x24 image is the window, shrunk by 2 (offsets 0: the draws are of a single value)
    whole = scaled_crop(images, (8, 12), (2.0, 2.0), torch.Generator().manual_seed(2))
    shrunk = F.interpolate(images, size=(8, 12), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(whole, shrunk.clamp(0, 1), atol=0, rtol=0)
    # a range: the factor is drawn first, then the offsets of a window of that size
    generator = torch.Generator().manual_seed(3)
    factor = 1.0 + float(torch.rand((), generator=generator))
    window = (round(8 * factor), round(12 * factor))
    want = F.interpolate(
        random_crop(images, window, generator), size=(8, 12), mode="bilinear", align_corners=False,
        antialias=True,
    )
    got = scaled_crop(images, (8, 12), (1.0, 2.0), torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want.clamp(0, 1))


def test_crop_window_scale_is_checked():
    from kp2d.errors import ConfigError

    config = AugmentationConfig(crop_from=(480, 640), crop_window_scale=(1.0, 2.0))
    assert config.crop_window_scale == (1.0, 2.0)
    for bad in ((0.5, 1.0), (2.0, 1.0)):
        with pytest.raises(ConfigError, match="crop_window_scale"):
            AugmentationConfig(crop_from=(480, 640), crop_window_scale=bad)
    with pytest.raises(ConfigError, match="without crop_from"):
        AugmentationConfig(crop_window_scale=(1.0, 2.0))
    with pytest.raises(ConfigError, match="larger than crop_from"):
        AugmentationConfig(crop_from=(480, 640), crop_window_scale=(1.0, 2.5))
