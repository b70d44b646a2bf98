"""Tests for training/sample_datasets.py: the procedurally drawn shapes set."""

import numpy as np
import pytest

from training.dataset_io import DatasetError
from training.dataset_sources import open_source
from training.sample_datasets import SHAPE_CLASSES, draw_shape_image, get_sample_spec, shape_label


def test_image_depends_only_on_seed_and_index():
    first = draw_shape_image(7, seed=3)
    assert first.dtype == np.uint8 and first.shape == (32, 32, 3)
    assert np.array_equal(first, draw_shape_image(7, seed=3))
    assert not np.array_equal(first, draw_shape_image(7, seed=4))
    assert not np.array_equal(first, draw_shape_image(8, seed=3))


def test_source_prefix_is_stable_and_balanced():
    small = list(open_source("sample:shapes", max_images=12))
    large = list(open_source("sample:shapes", max_images=60))
    for a, b in zip(small, large):
        assert np.array_equal(np.asarray(a.open()), np.asarray(b.open())) and a.label == b.label
    counts = np.bincount([item.label for item in large], minlength=len(SHAPE_CLASSES))
    assert counts.tolist() == [10] * 6
    assert [shape_label(i) for i in range(7)] == [0, 1, 2, 3, 4, 5, 0]


@pytest.mark.parametrize("index", range(12))
def test_each_image_is_one_shape_on_a_plain_background(index):
    image = draw_shape_image(index, seed=0).reshape(-1, 3)
    colours, counts = np.unique(image, axis=0, return_counts=True)
    order = np.argsort(counts)[::-1]
    # Two solid colours (background and shape, either may be larger) cover almost everything;
    # the rest are antialiased edge pixels.
    assert counts[order[0]] + counts[order[1]] > 0.75 * len(image)
    assert counts[order[1]] > 0.03 * len(image)
    assert np.linalg.norm(colours[order[0]].astype(float) - colours[order[1]]) >= 100


def test_spec_and_unknown_name():
    spec = get_sample_spec("shapes")
    assert spec.class_names == SHAPE_CLASSES and spec.resolution == 32 and spec.default_count == 1000
    assert len(open_source("sample:shapes")) == 1000
    with pytest.raises(DatasetError, match="unknown sample dataset"):
        get_sample_spec("faces")
