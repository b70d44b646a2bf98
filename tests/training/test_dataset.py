"""Tests for training/dataset.py: ImageFolderDataset over folders and zips, labels, subsets, errors."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from training.dataset import DatasetError, ImageFolderDataset


def _png_bytes(array, mode=None):
    buffer = io.BytesIO()
    PIL.Image.fromarray(array, mode).save(buffer, format="png")
    return buffer.getvalue()


def _random_images(count, size=16, channels=3, seed=0):
    """uint8 [count, size, size, channels] (channels dim dropped for 1)."""
    images = np.random.RandomState(seed).randint(0, 256, size=(count, size, size, channels), dtype=np.uint8)
    return images[..., 0] if channels == 1 else images


def _write_folder(root, files):
    """files: {relative name: bytes}."""
    for name, data in files.items():
        path = os.path.join(root, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return str(root)


def _write_zip(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return str(path)


def _image_files(images, prefix="img"):
    return {f"{i // 3:02d}/{prefix}{i:03d}.png": _png_bytes(image) for i, image in enumerate(images)}


@pytest.fixture
def labelled_files():
    """6 RGB 16x16 images with class labels (classes 0 and 2 of 4 named classes) in a dataset.json."""
    images = _random_images(6)
    files = _image_files(images)
    labels = [[name, [0, 2][i % 2]] for i, name in enumerate(sorted(files))]
    files["dataset.json"] = json.dumps({"labels": labels, "class_names": ["a", "b", "c", "d"]}).encode()
    return images, files


def test_folder_and_zip_give_the_drawn_pixels(tmp_path, labelled_files):
    images, files = labelled_files
    folder = ImageFolderDataset(_write_folder(tmp_path / "data", files))
    archive = ImageFolderDataset(_write_zip(tmp_path / "data.zip", files))
    assert len(folder) == len(archive) == 6
    assert folder.name == archive.name == "data"
    assert folder.image_shape == [3, 16, 16] and folder.resolution == 16 and folder.num_channels == 3
    for i in range(6):
        expected = images[i].transpose(2, 0, 1)
        for dataset in (folder, archive):
            image, label = dataset[i]
            assert image.dtype == np.uint8 and np.array_equal(image, expected)
            assert label.dtype == np.float32 and label.shape == (0,)  # use_labels defaults to False.


def test_onehot_labels_and_class_names(tmp_path, labelled_files):
    _, files = labelled_files
    dataset = ImageFolderDataset(_write_zip(tmp_path / "d.zip", files), use_labels=True)
    # Four class names fix the label size although only classes 0 and 2 occur.
    assert dataset.label_shape == [4] and dataset.label_dim == 4
    assert dataset.has_labels and dataset.has_onehot_labels
    assert dataset.class_names == ["a", "b", "c", "d"]
    for i in range(len(dataset)):
        expected = np.zeros(4, np.float32)
        expected[[0, 2][i % 2]] = 1
        assert np.array_equal(dataset[i][1], expected)
        assert np.array_equal(dataset.get_label(i), expected)
        assert dataset.get_details(i).raw_label == [0, 2][i % 2]
    unlabelled = ImageFolderDataset(_write_zip(tmp_path / "d2.zip", files), use_labels=False)
    assert unlabelled.label_shape == [0] and not unlabelled.has_labels
    assert unlabelled.class_names == ["a", "b", "c", "d"]


def test_vector_labels(tmp_path):
    files = _image_files(_random_images(3))
    vectors = [[0.5, -1.0], [2.0, 0.0], [1.25, 3.0]]
    files["dataset.json"] = json.dumps({"labels": [[n, v] for n, v in zip(sorted(files), vectors)]}).encode()
    dataset = ImageFolderDataset(_write_folder(tmp_path / "v", files), use_labels=True)
    assert dataset.label_shape == [2] and not dataset.has_onehot_labels and dataset.class_names is None
    for i, vector in enumerate(vectors):
        assert np.array_equal(dataset[i][1], np.array(vector, np.float32))


def test_xflip_doubles_and_mirrors(tmp_path):
    images = _random_images(4)
    dataset = ImageFolderDataset(_write_zip(tmp_path / "x.zip", _image_files(images)), xflip=True)
    assert len(dataset) == 8
    for i in range(4):
        assert np.array_equal(dataset[i][0], images[i].transpose(2, 0, 1))
        assert np.array_equal(dataset[i + 4][0], images[i][:, ::-1].transpose(2, 0, 1))
        details = dataset.get_details(i + 4)
        assert details.raw_idx == i and details.xflip is True and dataset.get_details(i).xflip is False


def test_max_size_subset_depends_on_seed(tmp_path):
    # Image i is filled with value i, so the pixels tell which raw image came back.
    files = {f"{i:03d}.png": _png_bytes(np.full((8, 8), i, np.uint8)) for i in range(20)}
    path = _write_folder(tmp_path / "s", files)

    def picked(seed):
        dataset = ImageFolderDataset(path, max_size=5, random_seed=seed)
        values = [int(dataset[i][0][0, 0, 0]) for i in range(len(dataset))]
        assert values == [dataset.get_details(i).raw_idx for i in range(len(dataset))]
        return values

    first = picked(1)
    assert len(first) == 5 and first == sorted(first) and len(set(first)) == 5
    assert picked(1) == first
    assert picked(2) != first
    assert len(ImageFolderDataset(path, max_size=50)) == 20


def test_grayscale_dataset_has_one_channel(tmp_path):
    images = _random_images(3, channels=1)
    dataset = ImageFolderDataset(_write_folder(tmp_path / "g", _image_files(images)))
    assert dataset.image_shape == [1, 16, 16] and dataset.num_channels == 1
    assert np.array_equal(dataset[2][0], images[2][np.newaxis])


def test_resolution_mismatch_names_path_sizes_and_fix(tmp_path):
    path = _write_folder(tmp_path / "r", _image_files(_random_images(2)))
    assert ImageFolderDataset(path, resolution=16).resolution == 16
    with pytest.raises(DatasetError, match=r"16x16.*resolution 32.*--resolution=32x32") as info:
        ImageFolderDataset(path, resolution=32)
    assert path in str(info.value)


def _bad_member_error(tmp_path, bad_bytes, use_zip, images=None):
    """Error text when image 2 of a 16x16 RGB set is replaced by bad_bytes."""
    files = _image_files(_random_images(4) if images is None else images)
    bad_name = sorted(files)[2]
    files[bad_name] = bad_bytes
    path = _write_zip(tmp_path / "b.zip", files) if use_zip else _write_folder(tmp_path / "b", files)
    dataset = ImageFolderDataset(path)
    dataset[1]  # Good images still load.
    with pytest.raises(DatasetError) as info:
        dataset[2]
    message = str(info.value)
    assert bad_name in message and path in message and "\n" not in message
    return message


@pytest.mark.parametrize("use_zip", [False, True])
def test_corrupt_file_names_it(tmp_path, use_zip):
    message = _bad_member_error(tmp_path, b"this is not a png at all", use_zip)
    assert "not a readable image" in message


def test_truncated_png_names_it(tmp_path):
    good = _png_bytes(np.random.RandomState(5).randint(0, 256, (16, 16, 3), dtype=np.uint8))
    message = _bad_member_error(tmp_path, good[: len(good) // 2], use_zip=True)
    assert "truncated" in message


def test_rgba_in_rgb_set_names_it(tmp_path):
    rgba = _png_bytes(np.zeros((16, 16, 4), np.uint8), "RGBA")
    message = _bad_member_error(tmp_path, rgba, use_zip=False)
    assert "RGBA" in message and "RGB 16x16" in message and "dataset_tool.py" in message


def test_grayscale_in_rgb_set_names_it(tmp_path):
    message = _bad_member_error(tmp_path, _png_bytes(np.zeros((16, 16), np.uint8)), use_zip=True)
    assert "grayscale 16x16" in message and "RGB 16x16" in message


def test_wrong_size_names_it(tmp_path):
    message = _bad_member_error(tmp_path, _png_bytes(np.zeros((8, 8, 3), np.uint8)), use_zip=False)
    assert "RGB 8x8" in message and "RGB 16x16" in message


def test_bad_first_image_fails_construction(tmp_path):
    files = _image_files(_random_images(2))
    files[sorted(files)[0]] = b"garbage"
    with pytest.raises(DatasetError, match="00/img000.png"):
        ImageFolderDataset(_write_folder(tmp_path / "f", files))


def test_missing_label_names_the_file(tmp_path):
    files = _image_files(_random_images(3))
    names = sorted(files)
    files["dataset.json"] = json.dumps({"labels": [[names[0], 0], [names[2], 1]]}).encode()
    dataset = ImageFolderDataset(_write_folder(tmp_path / "m", files), use_labels=True)
    with pytest.raises(DatasetError, match=f"no label for '{names[1]}'"):
        dataset.label_shape


def test_bad_paths_raise_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        ImageFolderDataset(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        ImageFolderDataset(str(tmp_path / "empty"))
    notes = _write_folder(tmp_path / "notes", {"a.txt": b"hello", ".hidden.png": b"x", "__MACOSX/._a.png": b"x"})
    with pytest.raises(DatasetError, match="no images found"):
        ImageFolderDataset(notes)
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable zip"):
        ImageFolderDataset(str(tmp_path / "fake.zip"))
    (tmp_path / "image.png").write_bytes(_png_bytes(np.zeros((4, 4), np.uint8)))
    with pytest.raises(DatasetError, match="not a folder or a .zip"):
        ImageFolderDataset(str(tmp_path / "image.png"))


def test_pickle_round_trip_reopens_zip(tmp_path, labelled_files):
    images, files = labelled_files
    dataset = ImageFolderDataset(_write_zip(tmp_path / "p.zip", files), use_labels=True, xflip=True)
    before = dataset[3]  # Opens the zip in this process.
    clone = pickle.loads(pickle.dumps(dataset))
    after = clone[3]
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert np.array_equal(clone[9][0], images[3][:, ::-1].transpose(2, 0, 1))
    assert len(clone) == 12 and clone.class_names == ["a", "b", "c", "d"]
    clone.close()
    dataset.close()


def test_dataloader_with_workers_on_zip(tmp_path):
    images = _random_images(12)
    dataset = ImageFolderDataset(_write_zip(tmp_path / "w.zip", _image_files(images)))
    dataset[0]  # A zip handle open in the parent must not be shared with forked workers.
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2, shuffle=False)
    batches = [batch_images for batch_images, _ in loader]
    loaded = torch.cat(batches).numpy()
    assert np.array_equal(loaded, images.transpose(0, 3, 1, 2))
