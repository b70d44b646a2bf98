"""Sample datasets drawn offline with PIL, for demos and smoke tests without downloading anything.

`shapes`: 32x32 RGB images of one filled shape each (circle, triangle, square, pentagon, hexagon,
star) in a random colour, size, position and rotation on a random plain background. The class label
is the shape; classes cycle with the index (image i has class i % 6), so any prefix is balanced.
Image i depends only on (seed, i): the first N images are the same whatever the total count.
Shapes are drawn 4x larger and box-downscaled, which antialiases the edges by exact area coverage.
"""

import dataclasses
import math
from typing import Callable

import numpy as np
import PIL.Image
import PIL.ImageDraw

from training.dataset_io import DatasetError

SHAPE_CLASSES = ("circle", "triangle", "square", "pentagon", "hexagon", "star")
_SUPERSAMPLE = 4            # Draw at 4x and box-downscale: edges get area-coverage antialiasing.
_MIN_COLOUR_DISTANCE = 100  # Euclidean RGB distance between shape and background, so shapes stay visible.


@dataclasses.dataclass(frozen=True)
class SampleDatasetSpec:
    """What `sample:NAME` produces."""

    class_names: tuple   # Class names; labels index them.
    resolution: int      # Image side (square, power of two).
    default_count: int   # Number of images without --max-images.
    max_count: int       # Largest --max-images accepted.
    draw: Callable       # draw(index, seed) -> uint8 [H, W, 3] image.
    label: Callable      # label(index) -> int class index (known without drawing).


def shape_label(index: int) -> int:
    """Class of image `index` of the shapes set (classes cycle, so every prefix is balanced)."""
    return index % len(SHAPE_CLASSES)


def draw_shape_image(index: int, seed: int, resolution: int = 32) -> np.ndarray:
    """Image `index` of the shapes set: uint8 `[resolution, resolution, 3]`, a shape of class shape_label(index)."""
    if index < 0 or seed < 0:
        raise DatasetError(f"sample:shapes: index and seed must be non-negative, got index {index}, seed {seed}")
    rng = np.random.default_rng([seed, index])
    background, colour = _pick_colours(rng)
    size = resolution * _SUPERSAMPLE
    radius = rng.uniform(0.22, 0.42) * size  # Circumradius, so every class covers a similar extent.
    centre = rng.uniform(radius, size - radius, size=2)  # The whole shape stays inside the frame.
    angle = rng.uniform(0.0, 2.0 * math.pi)
    canvas = PIL.Image.new("RGB", (size, size), tuple(int(c) for c in background))
    draw = PIL.ImageDraw.Draw(canvas)
    fill = tuple(int(c) for c in colour)
    name = SHAPE_CLASSES[shape_label(index)]
    if name == "circle":
        x, y = centre
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
    else:
        draw.polygon(_shape_vertices(name, centre, radius, angle), fill=fill)
    return np.asarray(canvas.reduce(_SUPERSAMPLE))


def _pick_colours(rng):
    """(background, shape colour), each uint8 `[3]`, at least _MIN_COLOUR_DISTANCE apart."""
    background = rng.integers(0, 256, size=3)
    for _ in range(100):
        colour = rng.integers(0, 256, size=3)
        if np.linalg.norm(colour - background) >= _MIN_COLOUR_DISTANCE:
            return background, colour
    return background, 255 - background  # Practically unreachable; keeps the loop bounded.


def _shape_vertices(name, centre, radius, angle):
    """Polygon vertices [(x, y), ...] of a regular shape (or a 5-point star) around `centre`."""
    if name == "star":
        radii = [radius if k % 2 == 0 else 0.45 * radius for k in range(10)]
    else:
        radii = [radius] * {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[name]
    step = 2.0 * math.pi / len(radii)
    return [
        (centre[0] + r * math.cos(angle + k * step), centre[1] + r * math.sin(angle + k * step))
        for k, r in enumerate(radii)
    ]


SAMPLE_DATASETS = {
    "shapes": SampleDatasetSpec(
        class_names=SHAPE_CLASSES,
        resolution=32,
        default_count=1000,
        max_count=100_000,
        draw=draw_shape_image,
        label=shape_label,
    ),
}


def get_sample_spec(name: str) -> SampleDatasetSpec:
    """The spec of `sample:NAME`; an unknown name raises DatasetError listing the known ones."""
    if name not in SAMPLE_DATASETS:
        known = ", ".join(f"sample:{n}" for n in sorted(SAMPLE_DATASETS))
        raise DatasetError(f"sample:{name}: unknown sample dataset; use one of: {known}")
    return SAMPLE_DATASETS[name]
