"""Training datasets: the StyleGAN2-ADA `Dataset` interface and `ImageFolderDataset` (a folder or zip of images).

A dataset yields `(image, label)`: image uint8 `[C, H, W]` (C = 1 grayscale or 3 RGB), label float32
`[label_dim]` (one-hot for class indices, the stored vector for float labels, `[0]` without labels).
Labels come from `dataset.json` at the dataset root: {"labels": [[relative/path.png, int | [floats]], ...]
or null, "class_names": [...] (optional)}. Make datasets with `dataset_tool.py`.
"""

import os
import zipfile

import numpy as np
import torch

import dnnlib
from training.dataset_io import (
    IMAGE_EXTENSIONS,
    DatasetError,
    decode_image,
    list_folder_images,
    list_zip_images,
    open_zip,
    parse_dataset_json,
    read_file_bytes,
    read_zip_member,
)

__all__ = ["Dataset", "ImageFolderDataset", "DatasetError"]

_FIX = "re-create the dataset with dataset_tool.py, which gives every image one size and mode"


class Dataset(torch.utils.data.Dataset):
    """Abstract dataset: subset selection, x-flips and labels on top of `_load_raw_image`/`_load_raw_labels`."""

    def __init__(
        self,
        name,               # Name of the dataset (used in run directory names).
        raw_shape,          # Shape of the raw data: [num_images, C, H, W].
        max_size=None,      # Keep at most this many images (a random subset, fixed by random_seed); None = all.
        use_labels=False,   # Return labels (True) or empty `[0]` labels (False).
        xflip=False,        # Append a mirrored copy of every image, doubling the length.
        random_seed=0,      # Seed of the max_size subset.
    ):
        self._name = name
        self._raw_shape = list(raw_shape)
        self._use_labels = use_labels
        self._raw_labels = None
        self._label_shape = None

        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None:
            if int(max_size) < 1:
                raise DatasetError(f"{name}: max_size must be at least 1, got {max_size}")
            if self._raw_idx.size > max_size:
                # Shuffle-then-sort: a seed-determined subset, still in file order for locality.
                np.random.RandomState(random_seed).shuffle(self._raw_idx)
                self._raw_idx = np.sort(self._raw_idx[: int(max_size)])

        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _get_raw_labels(self):
        """All labels, `[num_raw_images]` int64 class indices or `[num_raw_images, D]` float32; cached."""
        if self._raw_labels is None:
            labels = self._load_raw_labels() if self._use_labels else None
            if labels is None:
                labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
            labels = np.asarray(labels)
            if labels.shape[0] != self._raw_shape[0] or labels.ndim not in (1, 2):
                raise DatasetError(f"{self._name}: labels have shape {labels.shape}, expected one per image")
            if labels.ndim == 1 and labels.dtype != np.int64:
                raise DatasetError(f"{self._name}: class-index labels must be int64, got {labels.dtype}")
            if labels.ndim == 2 and labels.dtype != np.float32:
                raise DatasetError(f"{self._name}: vector labels must be float32, got {labels.dtype}")
            self._raw_labels = labels
        return self._raw_labels

    def close(self):
        """Release open files; the dataset reopens them on next use."""

    def _load_raw_image(self, raw_idx):
        """One image as uint8 `[C, H, W]`. To be overridden."""
        raise NotImplementedError

    def _load_raw_labels(self):
        """int64 `[N]` or float32 `[N, D]` labels, or None when the data has none. To be overridden."""
        raise NotImplementedError

    def __del__(self):
        try:
            self.close()
        except Exception:  # Interpreter shutdown may have torn down what close() needs.
            pass

    def __len__(self):
        return self._raw_idx.size

    def __getitem__(self, idx):
        """Returns (image uint8 `[C, H, W]`, label float32 `[label_dim]`)."""
        image = self._load_raw_image(self._raw_idx[idx])
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8
        assert list(image.shape) == self.image_shape
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy(), self.get_label(idx)

    def get_label(self, idx):
        """Label of item `idx`: float32 `[label_dim]` (one-hot for class indices)."""
        label = self._get_raw_labels()[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            return onehot
        return label.astype(np.float32, copy=True)

    def get_details(self, idx):
        """EasyDict(raw_idx, xflip, raw_label) of item `idx`."""
        return dnnlib.EasyDict(
            raw_idx=int(self._raw_idx[idx]),
            xflip=int(self._xflip[idx]) != 0,
            raw_label=self._get_raw_labels()[self._raw_idx[idx]].copy(),
        )

    @property
    def name(self):
        return self._name

    @property
    def image_shape(self):
        """[C, H, W]."""
        return list(self._raw_shape[1:])

    @property
    def num_channels(self):
        return self.image_shape[0]

    @property
    def resolution(self):
        """Side of the (square) images."""
        _, height, width = self.image_shape
        if height != width:
            raise DatasetError(
                f"{self._name}: images are {width}x{height}, not square; re-run dataset_tool.py with --resolution=NxN"
            )
        return width

    @property
    def class_names(self):
        """Class names from the dataset's metadata, or None."""
        return None

    @property
    def label_shape(self):
        """[label_dim]: number of classes for class indices, vector length for float labels, [0] without."""
        if self._label_shape is None:
            raw_labels = self._get_raw_labels()
            if raw_labels.dtype == np.int64:
                num_classes = int(raw_labels.max()) + 1 if raw_labels.size else 0
                # Declared class names fix the label size even if the last classes have no images.
                num_classes = max(num_classes, len(self.class_names or []))
                self._label_shape = [num_classes]
            else:
                self._label_shape = list(raw_labels.shape[1:])
        return list(self._label_shape)

    @property
    def label_dim(self):
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._get_raw_labels().dtype == np.int64


class ImageFolderDataset(Dataset):
    """Images in a folder (searched recursively) or a zip archive, with optional dataset.json labels."""

    def __init__(
        self,
        path,               # A folder or a .zip of images (PNG, JPEG, ...), e.g. made by dataset_tool.py.
        resolution=None,    # Required image side; None = whatever the images are. Checked against the data.
        **super_kwargs,     # max_size, use_labels, xflip, random_seed: see Dataset.
    ):
        self._path = os.path.normpath(os.fspath(path))
        self._zipfile = None
        self._zip_pid = None    # Process that opened _zipfile: a forked DataLoader worker must reopen it.
        self._metadata = None
        self._raw_shape = None  # Unknown until the first image is read; shape checks start after that.
        self._type = _path_type(self._path)
        self._image_names = self._list_images()
        if not self._image_names:
            raise DatasetError(
                f"{self._path}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "point --data at a dataset made by dataset_tool.py"
            )
        name = os.path.splitext(os.path.basename(os.path.abspath(self._path)))[0]
        raw_shape = [len(self._image_names)] + list(self._load_raw_image(0).shape)
        if resolution is not None and (raw_shape[2] != resolution or raw_shape[3] != resolution):
            raise DatasetError(
                f"{self._path}: images are {raw_shape[3]}x{raw_shape[2]} but resolution {resolution} was requested; "
                f"re-run dataset_tool.py with --resolution={resolution}x{resolution}"
            )
        super().__init__(name=name, raw_shape=raw_shape, **super_kwargs)
        # A handle opened here would be shared with forked DataLoader workers; open it lazily instead.
        self.close()

    def _list_images(self):
        if self._type == "dir":
            return list_folder_images(self._path)
        with open_zip(self._path) as zf:
            return list_zip_images(zf)

    def _get_zipfile(self):
        if self._zipfile is None or self._zip_pid != os.getpid():
            self._zipfile = open_zip(self._path)
            self._zip_pid = os.getpid()
        return self._zipfile

    def _where(self, name):
        return f"{self._path} [{name}]" if self._type == "zip" else os.path.join(self._path, name)

    def _read_bytes(self, name):
        if self._type == "zip":
            return read_zip_member(self._get_zipfile(), name, self._where(name))
        return read_file_bytes(os.path.join(self._path, name))

    def close(self):
        try:
            if self._zipfile is not None and self._zip_pid == os.getpid():
                self._zipfile.close()
        finally:
            self._zipfile = None
            self._zip_pid = None

    def __getstate__(self):
        # Open file handles do not pickle; each process reopens the zip on first use.
        return dict(self.__dict__, _zipfile=None, _zip_pid=None)

    def _load_raw_image(self, raw_idx):
        """Image `raw_idx` as uint8 `[C, H, W]`, checked against the dataset's shape."""
        name = self._image_names[raw_idx]
        where = self._where(name)
        image = decode_image(self._read_bytes(name), where)
        if image.mode not in ("L", "RGB"):
            raise DatasetError(
                f"{where}: image mode {image.mode} is not supported (expected 8-bit grayscale 'L' or 'RGB'"
                f"{_describe_expected(self)}); {_FIX}"
            )
        array = np.asarray(image)
        array = array[:, :, np.newaxis] if array.ndim == 2 else array
        array = array.transpose(2, 0, 1)
        if self._raw_shape is not None and list(array.shape) != self._raw_shape[1:]:
            raise DatasetError(
                f"{where}: image is {_describe_shape(array.shape)}, but this dataset's images are "
                f"{_describe_shape(self._raw_shape[1:])}; {_FIX}"
            )
        return array

    def _read_metadata(self):
        """(labels dict or None, class_names or None) from dataset.json; (None, None) when it is absent."""
        if self._metadata is None:
            self._metadata = (None, None)
            if self._type == "dir":
                json_path = os.path.join(self._path, "dataset.json")
                if os.path.isfile(json_path):
                    self._metadata = parse_dataset_json(read_file_bytes(json_path), json_path)
            else:
                zf = self._get_zipfile()
                if "dataset.json" in zf.namelist():
                    where = self._where("dataset.json")
                    self._metadata = parse_dataset_json(read_zip_member(zf, "dataset.json", where), where)
        return self._metadata

    def _load_raw_labels(self):
        labels, _ = self._read_metadata()
        if labels is None:
            return None
        missing = [name for name in self._image_names if name not in labels]
        if missing:
            raise DatasetError(
                f"{self._where('dataset.json')}: no label for {missing[0]!r} ({len(missing)} images unlabelled); "
                f'add a label for every image, or set "labels" to null'
            )
        values = [labels[name] for name in self._image_names]
        if isinstance(values[0], int):
            return np.array(values, dtype=np.int64)
        return np.array(values, dtype=np.float32)

    @property
    def class_names(self):
        _, class_names = self._read_metadata()
        return None if class_names is None else list(class_names)


def _path_type(path):
    """'dir' or 'zip' for a dataset path; anything else raises DatasetError."""
    if os.path.isdir(path):
        return "dir"
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file or folder; check --data (make a dataset with dataset_tool.py)")
    if os.path.isfile(path) and (path.lower().endswith(".zip") or zipfile.is_zipfile(path)):
        return "zip"
    raise DatasetError(f"{path}: not a folder or a .zip archive; make a dataset with dataset_tool.py")


def _describe_shape(chw):
    channels, height, width = chw
    mode = {1: "grayscale", 3: "RGB"}.get(channels, f"{channels}-channel")
    return f"{mode} {width}x{height} ([C, H, W] = {list(chw)})"


def _describe_expected(dataset):
    shape = dataset._raw_shape
    return f"; this dataset's images are {_describe_shape(shape[1:])}" if shape else ""
