"""Reading the CIFAR-10 and CIFAR-100 "python version" archives (tar.gz or extracted folder).

Layout (Krizhevsky's distribution): CIFAR-10 `cifar-10-batches-py/` holds `data_batch_1..5`, `test_batch`
and `batches.meta` (`label_names`); CIFAR-100 `cifar-100-python/` holds `train`, `test` and `meta`
(`fine_label_names`). Each batch is a pickled dict with `data`, uint8 `[N, 3072]` (the R, G and B
planes of a 32x32 image, row-major) and `labels` (CIFAR-10) or `fine_labels` (CIFAR-100).

The pickles are read with an unpickler that only rebuilds numpy arrays and plain Python values, so
an archive from an untrusted place cannot run code.
"""

import dataclasses
import io
import os
import pickle
import tarfile

import numpy as np

from training.dataset_io import DatasetError


@dataclasses.dataclass(frozen=True)
class CifarLayout:
    """File names and pickle keys of one CIFAR variant."""

    title: str          # For messages.
    meta: str           # Metadata pickle (class names).
    names_key: str      # Key of the class names in the metadata.
    labels_key: str     # Key of the labels in a batch.
    splits: dict        # split -> batch file names, in order.


CIFAR_LAYOUTS = (
    CifarLayout(
        title="CIFAR-10",
        meta="batches.meta",
        names_key="label_names",
        labels_key="labels",
        splits={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    ),
    CifarLayout(
        title="CIFAR-100",
        meta="meta",
        names_key="fine_label_names",
        labels_key="fine_labels",
        splits={"train": ("train",), "test": ("test",)},
    ),
)


@dataclasses.dataclass
class CifarData:
    """A decoded CIFAR split."""

    title: str                # "CIFAR-10" or "CIFAR-100".
    images: np.ndarray        # uint8 [N, 32, 32, 3].
    labels: np.ndarray        # int64 [N] class indices.
    class_names: list         # [num_classes] names.
    names: list               # [N] per-image names for messages, e.g. "data_batch_1[17]".


def is_cifar_folder(path: str) -> bool:
    """True when `path` is an extracted CIFAR-10 or CIFAR-100 python folder."""
    def has(name):
        return os.path.isfile(os.path.join(path, name))

    # A bare "meta" file is too common a name to decide on alone; CIFAR-100 also has train or test next to it.
    return any(
        has(layout.meta) and any(has(batch) for batches in layout.splits.values() for batch in batches)
        for layout in CIFAR_LAYOUTS
    )


def read_cifar(path: str, split: str) -> CifarData:
    """Read one split ('train' or 'test') of a CIFAR archive (.tar.gz) or extracted folder."""
    if split not in ("train", "test"):
        raise DatasetError(f"{path}: unknown split {split!r}; use --split=train or --split=test")
    wanted = {layout.meta for layout in CIFAR_LAYOUTS}
    wanted |= {name for layout in CIFAR_LAYOUTS for name in layout.splits[split]}
    files = _read_folder(path, wanted) if os.path.isdir(path) else _read_tar(path, wanted)
    layout = next((layout for layout in CIFAR_LAYOUTS if layout.meta in files), None)
    if layout is not None:
        return _decode(path, layout, split, files)
    raise DatasetError(
        f"{path}: not a CIFAR-10/CIFAR-100 python archive (no batches.meta or meta); "
        "pass cifar-10-python.tar.gz, cifar-100-python.tar.gz or their extracted folders"
    )


def _read_folder(path, wanted):
    files = {}
    for name in wanted:
        file_path = os.path.join(path, name)
        if os.path.isfile(file_path):
            with open(file_path, "rb") as f:
                files[name] = f.read()
    return files


def _read_tar(path, wanted):
    """{basename: bytes} for the wanted members, read in one streaming pass (gzip cannot seek cheaply)."""
    files = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = os.path.basename(member.name)
                if member.isfile() and base in wanted and base not in files:
                    files[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read the tar archive ({exc}); re-download it") from None
    return files


def _decode(path, layout, split, files):
    meta = _unpickle(files[layout.meta], f"{path} [{layout.meta}]")
    class_names = [_text(name) for name in meta.get(layout.names_key, [])]
    if not class_names:
        raise DatasetError(f"{path} [{layout.meta}]: no {layout.names_key!r}; the {layout.title} archive is damaged")
    images, labels, names = [], [], []
    for batch in layout.splits[split]:
        if batch not in files:
            raise DatasetError(f"{path}: {layout.title} file {batch!r} is missing; re-download the archive")
        batch_images, batch_labels = _decode_batch(files[batch], layout, len(class_names), f"{path} [{batch}]")
        images.append(batch_images)
        labels.append(batch_labels)
        names += [f"{batch}[{i}]" for i in range(len(batch_labels))]
    return CifarData(
        title=layout.title,
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        class_names=class_names,
        names=names,
    )


def _decode_batch(data, layout, num_classes, where):
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of one pickled batch."""
    batch = _unpickle(data, where)
    pixels = np.asarray(batch.get("data", np.zeros([0])))
    labels = np.asarray(batch.get(layout.labels_key, []), dtype=np.int64)
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{where}: 'data' is {pixels.dtype} {list(pixels.shape)}, expected uint8 [N, 3072]; re-download"
        )
    if labels.shape != (pixels.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
        raise DatasetError(f"{where}: {layout.labels_key!r} do not match 'data' or the class names; re-download")
    # Each row is three 32x32 planes (R, G, B), so [N, C, H, W] then channels last.
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # Python 3 writes bytes this way under protocol 2.
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and builtins only; any other global is refused."""

    def find_class(self, module, name):
        # The original archives name numpy 1's numpy.core; numpy 2 calls it numpy._core.
        canonical = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core") else module
        if (canonical, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        try:
            return super().find_class(canonical, name)
        except ImportError:  # numpy 1 has no numpy._core.
            return super().find_class(module, name)


def _unpickle(data, where):
    """A CIFAR pickle as a dict with str keys (Python 2 pickles have bytes keys under encoding='bytes')."""
    try:
        # latin1 is what numpy documents for Python 2 array pickles; it maps every byte, so it never fails.
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # Any failure here means the file is not a CIFAR pickle.
        raise DatasetError(f"{where}: not a CIFAR pickle ({exc}); re-download the archive") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: not a CIFAR pickle (not a dict); re-download the archive")
    return {_text(key): value for key, value in obj.items()}


def _text(value):
    return value.decode("latin1") if isinstance(value, bytes) else str(value)
