"""Tests for dataset_tool.py and training/dataset_convert.py (sources, transforms, modes, atomic writes)."""

import io
import json
import os
import pickle
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
import training.dataset_writer
from training.dataset import ImageFolderDataset
from training.dataset_convert import convert_dataset
from training.dataset_io import DatasetError


def _save(path, image, fmt="png"):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format=fmt)
    return path


def _rgb(seed, width=16, height=16):
    """Random uint8 [height, width, 3]."""
    return np.random.RandomState(seed).randint(0, 256, size=(height, width, 3), dtype=np.uint8)


def _run(*args):
    """Run the CLI; returns (exit_code, output)."""
    result = CliRunner().invoke(dataset_tool.main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _read_dataset(path):
    """(list of uint8 arrays in index order, dataset.json dict) read with zipfile/PIL, not our loader."""
    if str(path).endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            files = {name: zf.read(name) for name in zf.namelist()}
    else:
        files = {}
        for root, _, names in os.walk(path):
            for name in names:
                full = os.path.join(root, name)
                with open(full, "rb") as f:
                    files[os.path.relpath(full, path).replace(os.sep, "/")] = f.read()
    meta = json.loads(files.pop("dataset.json"))
    assert sorted(files) == [f"{i // 1000:05d}/img{i:08d}.png" for i in range(len(files))]
    return [np.asarray(PIL.Image.open(io.BytesIO(files[name]))) for name in sorted(files)], meta


@pytest.fixture
def class_folder(tmp_path):
    """Folder with sub-folders cat/ (2 images) and dog/ (3 images); returns (path, {relative name: array})."""
    drawn = {}
    for i, name in enumerate(["dog/a.png", "cat/z.png", "dog/b.png", "cat/y.png", "dog/c/deep.png"]):
        drawn[name] = _rgb(i)
        _save(tmp_path / "src" / name, PIL.Image.fromarray(drawn[name]))
    return str(tmp_path / "src"), drawn


def test_class_subfolders_become_labels(tmp_path, class_folder):
    source, drawn = class_folder
    code, output = _run("--source", source, "--dest", tmp_path / "out.zip")
    assert code == 0, output
    images, meta = _read_dataset(tmp_path / "out.zip")
    order = sorted(drawn)  # cat/y, cat/z, dog/a, dog/b, dog/c/deep
    assert meta["class_names"] == ["cat", "dog"]
    assert [label for _, label in meta["labels"]] == [0, 0, 1, 1, 1]
    for image, name in zip(images, order):
        assert np.array_equal(image, drawn[name])
    assert "Wrote 5 images" in output and "2 classes (cat, dog)" in output
    dataset = ImageFolderDataset(str(tmp_path / "out.zip"), use_labels=True)
    assert dataset.class_names == ["cat", "dog"] and dataset.label_shape == [2]


def test_source_dataset_json_overrides_folders(tmp_path, class_folder):
    source, drawn = class_folder
    labels = [[name, 7 - i] for i, name in enumerate(sorted(drawn))]
    with open(os.path.join(source, "dataset.json"), "w") as f:
        json.dump({"labels": labels}, f)
    assert _run("--source", source, "--dest", tmp_path / "out")[0] == 0
    _, meta = _read_dataset(tmp_path / "out")
    assert [label for _, label in meta["labels"]] == [7, 6, 5, 4, 3] and "class_names" not in meta


def test_zip_source(tmp_path, class_folder):
    _, drawn = class_folder
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:
        for name, array in drawn.items():
            buffer = io.BytesIO()
            PIL.Image.fromarray(array).save(buffer, format="png")
            zf.writestr(name, buffer.getvalue())
    assert _run("--source", tmp_path / "src.zip", "--dest", tmp_path / "out.zip", "--max-images", 3)[0] == 0
    images, meta = _read_dataset(tmp_path / "out.zip")
    assert len(images) == 3 and meta["class_names"] == ["cat", "dog"]
    for image, name in zip(images, sorted(drawn)):
        assert np.array_equal(image, drawn[name])


def _cifar_batch(seed, count, num_classes, labels_key):
    rng = np.random.RandomState(seed)
    return {"data": rng.randint(0, 256, (count, 3072), dtype=np.uint8),
            labels_key: [int(x) for x in rng.randint(0, num_classes, count)]}


def _expected_cifar_image(row):
    """Pixel [y, x, c] = row[c * 1024 + y * 32 + x], written out independently of the reader."""
    image = np.zeros((32, 32, 3), np.uint8)
    for c in range(3):
        for y in range(32):
            image[y, :, c] = row[c * 1024 + y * 32: c * 1024 + y * 32 + 32]
    return image


def _check_cifar(dest, batches, labels_key, class_names):
    images, meta = _read_dataset(dest)
    rows = np.concatenate([b["data"] for b in batches])
    labels = sum((b[labels_key] for b in batches), [])
    assert len(images) == len(rows) and meta["class_names"] == class_names
    assert [label for _, label in meta["labels"]] == labels
    for image, row in zip(images, rows):
        assert np.array_equal(image, _expected_cifar_image(row))


def test_cifar10_tar_train_and_test(tmp_path):
    names = [f"class{i}" for i in range(10)]
    train = [_cifar_batch(i, 2, 10, "labels") for i in range(5)]
    test = [_cifar_batch(9, 3, 10, "labels")]
    members = {f"data_batch_{i + 1}": b for i, b in enumerate(train)}
    members.update({"test_batch": test[0], "batches.meta": {"label_names": names}, "readme.html": None})
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, obj in members.items():
            # Protocol 2 with numpy 1's module names, as in the real (Python 2 era) archive.
            data = pickle.dumps(obj, protocol=2).replace(b"numpy._core.", b"numpy.core.") if obj else b"<html/>"
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert _run("--source", archive, "--dest", tmp_path / "train.zip")[0] == 0
    _check_cifar(tmp_path / "train.zip", train, "labels", names)
    assert _run("--source", archive, "--dest", tmp_path / "test.zip", "--split", "test")[0] == 0
    _check_cifar(tmp_path / "test.zip", test, "labels", names)


def test_cifar100_folder_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names = [f"fine{i}" for i in range(100)]
    batches = {"train": _cifar_batch(1, 4, 100, "fine_labels"), "test": _cifar_batch(2, 2, 100, "fine_labels")}
    for batch in batches.values():
        batch["coarse_labels"] = [0] * len(batch["fine_labels"])
    objects = dict(batches, meta={"fine_label_names": names, "coarse_label_names": ["c"] * 20})
    for name, obj in objects.items():
        (folder / name).write_bytes(pickle.dumps(obj))
    for split in ("train", "test"):
        code, output = _run("--source", folder, "--dest", tmp_path / f"{split}.zip", "--split", split)
        assert code == 0, output
        _check_cifar(tmp_path / f"{split}.zip", [batches[split]], "fine_labels", names)


def test_cifar_pickle_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a"], "x": os.getcwd}))
    (folder / "test_batch").write_bytes(b"")
    code, output = _run("--source", folder, "--dest", tmp_path / "o.zip", "--split", "test")
    assert code != 0 and "refusing to load posix.getcwd" in output


def test_sample_shapes_is_deterministic_and_labelled(tmp_path):
    for name in ("a.zip", "b.zip"):
        assert _run("--source", "sample:shapes", "--dest", tmp_path / name, "--max-images", 24)[0] == 0
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    images, meta = _read_dataset(tmp_path / "a.zip")
    assert len(images) == 24 and images[0].shape == (32, 32, 3)
    assert meta["class_names"] == ["circle", "triangle", "square", "pentagon", "hexagon", "star"]
    assert [label for _, label in meta["labels"]] == [i % 6 for i in range(24)]
    assert _run("--source", "sample:shapes", "--dest", tmp_path / "c.zip", "--max-images", 24, "--seed", 1)[0] == 0
    other, _ = _read_dataset(tmp_path / "c.zip")
    assert not any(np.array_equal(x, y) for x, y in zip(images, other))


def test_center_crop_and_wide(tmp_path):
    # 48x32: a red 32x32 centre between 8-pixel green bands.
    array = np.zeros((32, 48, 3), np.uint8)
    array[:, :, 1] = 255
    array[:, 8:40] = [255, 0, 0]
    _save(tmp_path / "src" / "a.png", PIL.Image.fromarray(array))
    assert _run("--source", tmp_path / "src", "--dest", tmp_path / "crop.zip",
                "--resolution", "16x16", "--transform", "center-crop")[0] == 0
    (crop,), _ = _read_dataset(tmp_path / "crop.zip")
    assert crop.shape == (16, 16, 3) and np.array_equal(crop, np.broadcast_to([255, 0, 0], (16, 16, 3)))
    # Wide: a 2:1 output letterboxed into a square with black bars above and below.
    blue = np.broadcast_to(np.array([0, 0, 255], np.uint8), (32, 64, 3))
    _save(tmp_path / "wide" / "b.png", PIL.Image.fromarray(np.ascontiguousarray(blue)))
    assert _run("--source", tmp_path / "wide", "--dest", tmp_path / "wide.zip",
                "--resolution", "32x16", "--transform", "center-crop-wide")[0] == 0
    (wide,), _ = _read_dataset(tmp_path / "wide.zip")
    assert wide.shape == (32, 32, 3)
    assert not wide[:8].any() and not wide[24:].any() and np.array_equal(wide[8:24], blue[:16, :32])


def test_box_filter_is_block_mean(tmp_path):
    array = _rgb(3, 32, 32)
    _save(tmp_path / "src" / "a.png", PIL.Image.fromarray(array))
    for resize_filter in ("box", "lanczos"):
        dest = tmp_path / f"{resize_filter}.zip"
        assert _run("--source", tmp_path / "src", "--dest", dest, "--resolution", "16x16",
                    "--resize-filter", resize_filter)[0] == 0
    block_mean = (array.reshape(16, 2, 16, 2, 3).astype(int).sum(axis=(1, 3)) + 2) // 4  # Round half up.
    (box,), _ = _read_dataset(tmp_path / "box.zip")
    (lanczos,), _ = _read_dataset(tmp_path / "lanczos.zip")
    assert np.array_equal(box, block_mean)
    assert not np.array_equal(lanczos, block_mean)


def test_grayscale_only_stays_one_channel(tmp_path):
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    _save(tmp_path / "src" / "a.png", PIL.Image.fromarray(gray, "L"))
    _save(tmp_path / "src" / "b.png", PIL.Image.fromarray(gray.astype(np.uint16) * 257))  # 16-bit: I;16.
    la = np.stack([gray, np.full_like(gray, 255)], axis=-1)
    _save(tmp_path / "src" / "c.png", PIL.Image.fromarray(la, "LA"))
    assert _run("--source", tmp_path / "src", "--dest", tmp_path / "g.zip")[0] == 0
    images, _ = _read_dataset(tmp_path / "g.zip")
    assert all(image.shape == (16, 16) and np.array_equal(image, gray) for image in images)
    assert ImageFolderDataset(str(tmp_path / "g.zip")).num_channels == 1


def test_mixed_modes_become_rgb(tmp_path):
    src = tmp_path / "src"
    _save(src / "1_gray.png", PIL.Image.fromarray(np.full((8, 8), 77, np.uint8), "L"))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[...] = [200, 100, 50, 128]
    _save(src / "2_rgba.png", PIL.Image.fromarray(rgba, "RGBA"))
    _save(src / "3_cmyk.tif", PIL.Image.new("CMYK", (8, 8), (255, 0, 0, 0)), fmt="tiff")
    palette = PIL.Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    _save(src / "4_palette.png", palette)
    _save(src / "5_la.png", PIL.Image.fromarray(np.dstack([np.full((8, 8), 90, np.uint8)] * 2), "LA"))
    assert _run("--source", src, "--dest", tmp_path / "m.zip", "--resolution", "8x8")[0] == 0
    images, _ = _read_dataset(tmp_path / "m.zip")
    # Alpha is composited onto black with rounding: value * alpha / 255.
    expected = [[77, 77, 77], [(200 * 128 + 127) // 255, (100 * 128 + 127) // 255, (50 * 128 + 127) // 255],
                [0, 255, 255], [10, 20, 30], [(90 * 90 + 127) // 255] * 3]
    assert [image.shape for image in images] == [(8, 8, 3)] * 5
    for image, colour in zip(images, expected):
        assert np.array_equal(image, np.broadcast_to(colour, (8, 8, 3))), colour


def test_output_must_be_square_power_of_two(tmp_path):
    _save(tmp_path / "src" / "a.png", PIL.Image.fromarray(_rgb(0, 24, 24)))
    code, output = _run("--source", tmp_path / "src", "--dest", tmp_path / "o.zip")
    assert code != 0 and "24x24" in output and "power-of-two" in output and "--resolution" in output
    code, output = _run("--source", tmp_path / "src", "--dest", tmp_path / "o.zip", "--resolution", "32x16")
    assert code != 0 and "32x16" in output and "--transform" in output
    assert not os.path.exists(tmp_path / "o.zip")


def test_mismatched_sizes_need_resolution(tmp_path):
    _save(tmp_path / "src" / "a.png", PIL.Image.fromarray(_rgb(0, 16, 16)))
    _save(tmp_path / "src" / "b.png", PIL.Image.fromarray(_rgb(1, 16, 16)))
    _save(tmp_path / "src" / "c.png", PIL.Image.fromarray(_rgb(2, 32, 32)))
    code, output = _run("--source", tmp_path / "src", "--dest", tmp_path / "o.zip")
    assert code != 0 and "c.png" in output and "32x32" in output and "--resolution" in output
    assert _run("--source", tmp_path / "src", "--dest", tmp_path / "o.zip", "--resolution", "16x16")[0] == 0
    images, _ = _read_dataset(tmp_path / "o.zip")
    assert [image.shape for image in images] == [(16, 16, 3)] * 3


def _folder_with_bad_files(tmp_path):
    for i in range(4):
        _save(tmp_path / "src" / f"{i}.png", PIL.Image.fromarray(_rgb(i)))
    (tmp_path / "src" / "1.png").write_bytes(b"garbage")
    good = (tmp_path / "src" / "2.png").read_bytes()
    (tmp_path / "src" / "2.png").write_bytes(good[: len(good) // 2])  # Header reads; pixels do not.
    return tmp_path / "src"


def test_corrupt_file_stops_or_is_skipped(tmp_path):
    src = _folder_with_bad_files(tmp_path)
    code, output = _run("--source", src, "--dest", tmp_path / "o.zip")
    assert code != 0 and "1.png" in output and "--skip-bad" in output
    assert os.listdir(tmp_path) == ["src"]
    code, output = _run("--source", src, "--dest", tmp_path / "o.zip", "--skip-bad")
    assert code == 0 and "skipped:    2 unreadable" in output and "1.png" in output and "2.png" in output
    images, _ = _read_dataset(tmp_path / "o.zip")
    assert len(images) == 2 and np.array_equal(images[0], _rgb(0)) and np.array_equal(images[1], _rgb(3))


@pytest.mark.parametrize("dest_name", ["out.zip", "out"])
@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, dest_name, failure):
    calls = []
    real_encode = training.dataset_writer.encode_png

    def failing_encode(image):
        calls.append(1)
        if len(calls) == 3:
            raise failure("simulated")
        return real_encode(image)

    monkeypatch.setattr(training.dataset_writer, "encode_png", failing_encode)
    out_dir = tmp_path / "out_dir"
    out_dir.mkdir()
    with pytest.raises(failure, match="simulated"):
        convert_dataset("sample:shapes", str(out_dir / dest_name), max_images=6)
    assert len(calls) == 3 and os.listdir(out_dir) == []


def test_existing_destination_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "old.zip").write_bytes(b"precious")
    code, output = _run("--source", "sample:shapes", "--dest", tmp_path / "old.zip", "--max-images", 2)
    assert code != 0 and "already exists" in output and "--overwrite" in output
    assert (tmp_path / "old.zip").read_bytes() == b"precious"
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.txt").write_text("precious")
    assert _run("--source", "sample:shapes", "--dest", tmp_path / "folder", "--max-images", 2)[0] != 0
    assert os.listdir(tmp_path / "folder") == ["keep.txt"]
    for dest in ("old.zip", "folder"):
        assert _run("--source", "sample:shapes", "--dest", tmp_path / dest, "--max-images", 2, "--overwrite")[0] == 0
        assert len(_read_dataset(tmp_path / dest)[0]) == 2
    (tmp_path / "empty").mkdir()
    assert _run("--source", "sample:shapes", "--dest", tmp_path / "empty", "--max-images", 2)[0] == 0
    assert sorted(os.listdir(tmp_path)) == ["empty", "folder", "old.zip"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "MISSING"], "no such file or folder"),
        (["--source", "sample:nope"], "use one of: sample:shapes"),
        (["--source", "sample:shapes", "--max-images", 100001], "at most 100000"),
        (["--source", "sample:shapes", "--split", "test"], "--split applies only to CIFAR"),
        (["--source", "sample:shapes", "--transform", "center-crop"], "needs --resolution"),
        (["--source", "sample:shapes", "--resolution", "big"], "expected WIDTHxHEIGHT"),
        (["--source", "sample:shapes", "--width", 64], "--width and --height go together"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path, args, message):
    args = [str(tmp_path / a) if a == "MISSING" else a for a in args]
    code, output = _run(*args, "--dest", tmp_path / "o.zip")
    assert code != 0 and message in output
    assert output.strip().count("\n") == 0
    assert not os.path.exists(tmp_path / "o.zip")


def test_library_errors_are_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="--max-images=0"):
        convert_dataset("sample:shapes", str(tmp_path / "o.zip"), max_images=0)
