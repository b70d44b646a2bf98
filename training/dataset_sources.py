"""Sources for dataset_tool.py: each yields (name, lazily opened PIL image, label) items.

Kinds (picked by `open_source`):
- a folder of images, searched recursively;
- a zip of images (same rules as a folder);
- a CIFAR-10 / CIFAR-100 python archive (`*.tar.gz`) or its extracted folder (see dataset_cifar.py);
- `sample:NAME`, a dataset drawn offline (see sample_datasets.py).

Labels of a folder or zip: when it holds a dataset.json, its "labels" (and "class_names") are used;
otherwise, when every image lies in a first-level sub-folder and there are at least two such
sub-folders, the label is the index of the sub-folder name in sorted order and the class names
are the sorted sub-folder names; otherwise there are no labels.
"""

import dataclasses
import os
import tarfile
import zipfile
from typing import Callable, Optional

import PIL.Image

from training.dataset_cifar import is_cifar_folder, read_cifar
from training.dataset_io import (
    DatasetError,
    list_folder_images,
    list_zip_images,
    open_image_file,
    open_image_header,
    open_zip,
    parse_dataset_json,
    read_file_bytes,
    read_zip_member,
)
from training.sample_datasets import get_sample_spec


@dataclasses.dataclass(frozen=True)
class SourceItem:
    """One source image, opened on demand."""

    name: str                              # Short name (relative path, "data_batch_1[17]") for reports.
    where: str                             # Full location for error messages.
    label: object                          # int class index, list of floats, or None.
    open: Callable[[], PIL.Image.Image]    # Opens the image lazily; raises DatasetError naming `where`.


class ImageSource:
    """Base of all sources: a sized, ordered collection of SourceItems."""

    description = ""            # What the source is, for messages ("folder /data/x").
    class_names = None          # list of str, or None.
    labelled = False            # Whether items carry labels.
    uniform_format = None       # (PIL mode, (width, height)) when every item has it; None = unknown.

    def __len__(self):
        raise NotImplementedError

    def __iter__(self):
        raise NotImplementedError

    def close(self):
        """Release open files."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def labels_from_subfolders(names):
    """(labels [len(names)] ints, class_names) from first-level sub-folders, or (None, None) (see module doc)."""
    tops = [name.split("/", 1)[0] if "/" in name else None for name in names]
    if None in tops or len(set(tops)) < 2:
        return None, None
    class_names = sorted(set(tops))
    index = {class_name: i for i, class_name in enumerate(class_names)}
    return [index[top] for top in tops], class_names


def _resolve_labels(names, metadata, json_where):
    """(labels list or None, class_names or None) for a folder or zip: dataset.json first, else sub-folders."""
    if metadata is None:
        return labels_from_subfolders(names)
    labels, class_names = metadata
    if labels is None:
        return None, class_names
    missing = [name for name in names if name not in labels]
    if missing:
        raise DatasetError(
            f"{json_where}: no label for {missing[0]!r} ({len(missing)} images unlabelled); "
            'add a label for every image, or set "labels" to null'
        )
    return [labels[name] for name in names], class_names


class _CollectionSource(ImageSource):
    """Shared logic of folder and zip sources: a sorted list of image names plus labels."""

    def _setup(self, names, metadata, json_where):
        if not names:
            raise DatasetError(f"{self.path}: no images found; pass a folder or zip that contains PNG or JPEG files")
        self.names = names
        self.labels, self.class_names = _resolve_labels(names, metadata, json_where)
        self.labelled = self.labels is not None

    def __len__(self):
        return len(self.names)

    def __iter__(self):
        for i, name in enumerate(self.names):
            label = self.labels[i] if self.labelled else None
            yield SourceItem(name=name, where=self._where(name), label=label, open=self._opener(name))


class FolderSource(_CollectionSource):
    """A folder of images, searched recursively."""

    def __init__(self, path):
        self.path = path
        self.description = f"folder {path}"
        json_path = os.path.join(path, "dataset.json")
        metadata = parse_dataset_json(read_file_bytes(json_path), json_path) if os.path.isfile(json_path) else None
        self._setup(list_folder_images(path), metadata, json_path)

    def _where(self, name):
        return os.path.join(self.path, name)

    def _opener(self, name):
        where = self._where(name)
        return lambda: open_image_file(where, where)


class ZipSource(_CollectionSource):
    """A zip archive of images."""

    def __init__(self, path):
        self.path = path
        self.description = f"zip {path}"
        self._zip = open_zip(path)
        json_where = self._where("dataset.json")
        metadata = None
        if "dataset.json" in self._zip.namelist():
            metadata = parse_dataset_json(read_zip_member(self._zip, "dataset.json", json_where), json_where)
        self._setup(list_zip_images(self._zip), metadata, json_where)

    def _where(self, name):
        return f"{self.path} [{name}]"

    def _opener(self, name):
        where = self._where(name)
        return lambda: open_image_header(read_zip_member(self._zip, name, where), where)

    def close(self):
        self._zip.close()


class ArraySource(ImageSource):
    """Images already in memory (CIFAR) or drawn on demand (samples): uint8 [H, W, 3] per item."""

    def __init__(
        self,
        description,    # What the source is, for messages.
        count,          # Number of images.
        get_array,      # index -> uint8 [H, W, 3].
        get_label,      # index -> int class index.
        names,          # index -> short name for messages.
        class_names,    # Names of the classes.
        size,           # (width, height) of every image.
    ):
        self.description = description
        self.class_names = list(class_names)
        self.labelled = True
        self.uniform_format = ("RGB", size)
        self._count = count
        self._get_array = get_array
        self._get_label = get_label
        self._names = names

    def __len__(self):
        return self._count

    def __iter__(self):
        for i in range(self._count):
            name = self._names(i)
            yield SourceItem(
                name=name,
                where=f"{self.description} [{name}]",
                label=int(self._get_label(i)),
                open=lambda i=i: PIL.Image.fromarray(self._get_array(i), "RGB"),
            )


def cifar_source(path, split):
    """ArraySource over one split of a CIFAR-10/100 archive or extracted folder."""
    data = read_cifar(path, split)
    return ArraySource(
        description=f"{data.title} {split} {path}",
        count=len(data.labels),
        get_array=lambda i: data.images[i],
        get_label=lambda i: data.labels[i],
        names=lambda i: data.names[i],
        class_names=data.class_names,
        size=(32, 32),
    )


def sample_source(name, seed, max_images):
    """ArraySource drawing `sample:NAME` (max_images images, or the spec's default count)."""
    spec = get_sample_spec(name)
    count = spec.default_count if max_images is None else max_images
    if count > spec.max_count:
        raise DatasetError(f"sample:{name}: at most {spec.max_count} images can be drawn; lower --max-images")
    return ArraySource(
        description=f"sample:{name} (seed {seed})",
        count=count,
        get_array=lambda i: spec.draw(i, seed),
        get_label=spec.label,
        names=lambda i: f"{name}[{i}]",
        class_names=spec.class_names,
        size=(spec.resolution, spec.resolution),
    )


def open_source(spec: str, split: Optional[str] = None, seed: Optional[int] = None, max_images=None) -> ImageSource:
    """The source named by `spec` (a path or `sample:NAME`); `split` is for CIFAR, `seed` for samples."""
    if spec.startswith("sample:"):
        if split is not None:
            raise DatasetError(f"{spec}: --split applies only to CIFAR sources; drop it")
        return sample_source(spec[len("sample:"):], 0 if seed is None else seed, max_images)
    if seed is not None:
        raise DatasetError(f"{spec}: --seed applies only to sample: sources; drop it")
    if not os.path.exists(spec):
        raise DatasetError(f"{spec}: no such file or folder; check --source")
    is_cifar = os.path.isdir(spec) and is_cifar_folder(spec)
    if os.path.isfile(spec) and not zipfile.is_zipfile(spec):
        if not tarfile.is_tarfile(spec):
            raise DatasetError(
                f"{spec}: not a folder, a zip, or a CIFAR .tar.gz; pass one of those or sample:shapes"
            )
        is_cifar = True
    if is_cifar:
        return cifar_source(spec, split or "train")
    if split is not None:
        raise DatasetError(f"{spec}: --split applies only to CIFAR sources; drop it")
    return FolderSource(spec) if os.path.isdir(spec) else ZipSource(spec)
