"""Procedural 32×32 RGB images of ten shape classes: an offline data set that is learnable but not trivial.

Each image is one shape drawn at a random position, scale and rotation (up to ±MAX_ROTATION radians),
in a random foreground colour on a random background colour (0.25 to 0.75 apart in every channel), plus
Gaussian pixel noise. Everything is drawn
from one seed, so the same seed always gives the same images.
"""

from __future__ import annotations

import torch

from sdexp.models import IMAGE_SIZE

CLASSES = (
    "disk",
    "square",
    "triangle",
    "plus",
    "ring",
    "cross",
    "horizontal_stripes",
    "vertical_stripes",
    "checkerboard",
    "diamond",
)
NOISE_STD = 0.12
MAX_ROTATION = 0.3


def _shape_mask(label: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Pixels inside shape ``label``, in coordinates (u, v) centred on the shape and scaled to ±1."""
    r2 = u * u + v * v
    box = torch.maximum(u.abs(), v.abs()) < 0.9
    masks = {
        "disk": lambda: r2 < 1.0,
        "square": lambda: box,
        "triangle": lambda: (v.abs() < 0.8) & (u.abs() < (v + 0.8) * 0.6),
        "plus": lambda: ((u.abs() < 0.3) | (v.abs() < 0.3)) & box,
        "ring": lambda: (r2 > 0.36) & (r2 < 1.0),
        "cross": lambda: (((u - v).abs() < 0.35) | ((u + v).abs() < 0.35)) & box,
        "horizontal_stripes": lambda: (torch.sin(v * 2 * torch.pi) > 0) & box,
        "vertical_stripes": lambda: (torch.sin(u * 2 * torch.pi) > 0) & box,
        "checkerboard": lambda: (torch.sin(u * 1.5 * torch.pi) * torch.sin(v * 1.5 * torch.pi) > 0) & box,
        "diamond": lambda: u.abs() + v.abs() < 1.0,
    }
    return masks[CLASSES[label]]()


def make_synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (uint8, n×3×32×32) and their labels (int64), balanced over the ten classes."""
    size = IMAGE_SIZE
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % len(CLASSES))[torch.randperm(n, generator=g)]
    scale = size * (0.16 + 0.16 * torch.rand(n, 1, 1, generator=g))
    centre = size * (0.3 + 0.4 * torch.rand(2, n, 1, 1, generator=g))
    angle = MAX_ROTATION * (2 * torch.rand(n, 1, 1, generator=g) - 1)
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dx = (grid.view(1, 1, size) - centre[0]) / scale
    dy = (grid.view(1, size, 1) - centre[1]) / scale
    u = dx * torch.cos(angle) + dy * torch.sin(angle)
    v = dy * torch.cos(angle) - dx * torch.sin(angle)
    inside = torch.zeros(n, size, size, dtype=torch.bool)
    for label in range(len(CLASSES)):
        idx = (labels == label).nonzero().squeeze(1)
        inside[idx] = _shape_mask(label, u[idx], v[idx])
    background = torch.rand(n, 3, 1, 1, generator=g)
    foreground = (background + 0.25 + 0.5 * torch.rand(n, 3, 1, 1, generator=g)) % 1.0
    images = torch.where(inside.unsqueeze(1), foreground, background)
    images = images + NOISE_STD * torch.randn(images.shape, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels
