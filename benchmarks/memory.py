"""Peak memory of ``kp2d.extract`` on the CPU per image size and backend: the figures of docs/memory.md.

Each measurement runs in a fresh Python process (the peak resident size, ``ru_maxrss``, only grows): it
builds the network (random weights: memory does not depend on their values), makes a uint8 RGB image,
turns kp2d's own memory check off (``KP2D_MEMORY_LIMIT=none``), notes ``ru_maxrss``, runs one
``extract`` and reports the growth of ``ru_maxrss``. A least-squares line ``bytes = a * pixels + b``
through the points is printed per backend, with the network input's pixels (the image padded to a
multiple of 8) as ``pixels``.

    python benchmarks/memory.py                                   # torch-fp32 and torch-bf16
    python benchmarks/memory.py --backends torch-fp32 --sizes 512x384 1024x768
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = ("320x240", "640x480", "1024x768", "1600x1200", "2048x1536")
DEFAULT_BACKENDS = ("torch-fp32", "torch-bf16")

_CHILD = r"""
import json, resource, sys
import numpy as np, torch
import kp2d
from kp2d.deploy.backends import load_backend
torch.manual_seed(0)
width, height, backend_name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
model = kp2d.KeyPointNet().eval()
backend = None if backend_name == "torch-fp32" else load_backend(backend_name, model)
image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
kp2d.extract(model, image[:64, :64], backend=backend)  # first-call allocations are not per image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kp2d.extract(model, image, backend=backend)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_bytes": (after - before) * 1024}))
"""


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` → ``(W, H)``."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"memory.py: error: sizes are WxH, got {text!r}") from None
    return width, height


def measure(width: int, height: int, backend: str) -> int:
    """Peak growth in bytes of one ``extract`` of a ``width x height`` image, in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"), KP2D_MEMORY_LIMIT="none")
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(width), str(height), backend],
        env=env, capture_output=True, text=True, check=True,
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])


def fit_line(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of ``bytes = a * pixels + b``."""
    count = len(points)
    mean_x = sum(x for x, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    var = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0
    return slope, mean_y - slope * mean_x


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="image sizes WxH")
    parser.add_argument("--backends", nargs="+", default=DEFAULT_BACKENDS, help="fast backends")
    args = parser.parse_args(argv)
    sizes = [parse_size(text) for text in args.sizes]
    for backend in args.backends:
        points = []
        for width, height in sizes:
            pixels = (-(-width // 8) * 8) * (-(-height // 8) * 8)
            peak = measure(width, height, backend)
            points.append((pixels, peak))
            print(f"{backend:11s} {width:5d}x{height:<5d} {peak / 2**20:8.1f} MiB  {peak / pixels:6.1f} B/px")
        slope, intercept = fit_line(points)
        print(f"{backend:11s} fit: {slope:.1f} bytes/pixel + {intercept / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
