"""Atomic dataset writer: a zip or a folder of `NNNNN/imgNNNNNNNN.png` plus `dataset.json`.

Everything goes to a hidden temporary name next to the destination (same file system) and is renamed
into place only by `commit()`. Leaving the `with` block without committing (an error, Ctrl-C)
deletes the temporary output, so a destination is either complete or absent. An existing
destination is replaced only with overwrite=True, and even then only once the new one is complete.
"""

import io
import json
import os
import secrets
import shutil
import zipfile

import numpy as np
import PIL.Image

from training.dataset_io import DatasetError

# Fixed member timestamps make the archive a pure function of its contents (reproducible, hashable).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def archive_name(index: int) -> str:
    """Path of image `index` inside a dataset: 1000 images per folder."""
    return f"{index // 1000:05d}/img{index:08d}.png"


def encode_png(image: np.ndarray) -> bytes:
    """Uncompressed PNG bytes of uint8 `[H, W]` (grayscale) or `[H, W, 3]` (RGB)."""
    buffer = io.BytesIO()
    # Level 0: the loader decodes faster, and a zip of PNGs gains nothing from deflating twice.
    PIL.Image.fromarray(image).save(buffer, format="png", compress_level=0)
    return buffer.getvalue()


def is_zip_path(dest: str) -> bool:
    return dest.lower().endswith(".zip")


def check_destination(dest: str, overwrite: bool = False):
    """Raise DatasetError if writing `dest` would clobber data (unless overwrite) or cannot work."""
    if not dest:
        raise DatasetError("--dest is empty; pass a folder or a .zip path")
    if not os.path.lexists(dest):
        return
    if is_zip_path(dest) and not os.path.isfile(dest):
        raise DatasetError(f"{dest}: exists and is not a file; remove it or pick another --dest")
    if not is_zip_path(dest) and not os.path.isdir(dest):
        raise DatasetError(f"{dest}: exists and is not a folder; remove it or pick another --dest")
    if not is_zip_path(dest) and not os.listdir(dest):
        return  # An empty folder holds nothing to lose.
    if not overwrite:
        raise DatasetError(f"{dest}: already exists; pick another --dest, or pass --overwrite to replace it")


class DatasetWriter:
    """Writes one dataset atomically. Use as a context manager; call commit() at the end."""

    def __init__(
        self,
        dest,               # Destination: a path ending in .zip, or a folder.
        overwrite=False,    # Replace an existing destination on commit.
    ):
        check_destination(dest, overwrite)
        self.dest = os.path.abspath(dest)
        self.overwrite = overwrite
        self._is_zip = is_zip_path(dest)
        parent = os.path.dirname(self.dest)
        os.makedirs(parent, exist_ok=True)
        self._tmp = os.path.join(parent, f".{os.path.basename(self.dest)}.tmp-{secrets.token_hex(4)}")
        self._zip = None
        self._done = False
        self.num_images = 0
        try:
            if self._is_zip:
                # Mode "x": never reuse an existing path; ZIP_STORED because PNGs are already encoded.
                self._zip = zipfile.ZipFile(open(self._tmp, "xb"), "w", compression=zipfile.ZIP_STORED)
            else:
                os.mkdir(self._tmp)
        except OSError as exc:
            raise DatasetError(f"{dest}: cannot create {self._tmp} ({exc.strerror or exc}); check the folder") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if not self._done:
            self.abort()

    def add_image(self, image: np.ndarray) -> str:
        """Store uint8 `[H, W]` or `[H, W, 3]` as the next `NNNNN/imgNNNNNNNN.png`; returns that name."""
        name = archive_name(self.num_images)
        self.add(name, encode_png(image))
        self.num_images += 1
        return name

    def add(self, name: str, data: bytes):
        """Store `data` as `name` ('/'-separated path inside the dataset)."""
        try:
            if self._is_zip:
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                self._zip.writestr(info, data)
            else:
                path = os.path.join(self._tmp, *name.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
        except OSError as exc:
            raise DatasetError(
                f"{self.dest}: writing {name} failed ({exc.strerror or exc}); free some space or pick another --dest"
            ) from None

    def commit(self, metadata: dict):
        """Write dataset.json from `metadata`, then move the finished dataset to its destination."""
        self.add("dataset.json", json.dumps(metadata).encode("utf-8"))
        try:
            if self._is_zip:
                self._close_zip(sync=True)
                os.replace(self._tmp, self.dest)  # Atomic, also over an existing file (overwrite checked).
            else:
                self._move_folder_into_place()
        except OSError as exc:
            self.abort()
            raise DatasetError(
                f"{self.dest}: cannot move the finished dataset into place ({exc.strerror or exc})"
            ) from None
        self._done = True

    def _close_zip(self, sync):
        zip_file, self._zip = self._zip, None
        file = zip_file.fp  # ZipFile does not close a file object it was given; we do, after syncing.
        zip_file.close()
        if sync:
            file.flush()
            os.fsync(file.fileno())  # The rename must not expose a file whose bytes are not on disk yet.
        file.close()

    def _move_folder_into_place(self):
        if os.path.isdir(self.dest) and not os.listdir(self.dest):
            os.rmdir(self.dest)
        if not os.path.lexists(self.dest):
            os.rename(self._tmp, self.dest)
            return
        # Overwrite: park the old folder, move the new one in, then delete the old one.
        old = f"{self._tmp}.old"
        os.rename(self.dest, old)
        try:
            os.rename(self._tmp, self.dest)
        except OSError:
            os.rename(old, self.dest)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def abort(self):
        """Delete the temporary output; the destination is left as it was."""
        self._done = True
        if self._zip is not None:
            fp = self._zip.fp
            try:
                self._close_zip(sync=False)
            except Exception:  # The zip may be half-written; all we want now is the file gone.
                fp.close()
        if os.path.isdir(self._tmp):
            shutil.rmtree(self._tmp, ignore_errors=True)
        elif os.path.lexists(self._tmp):
            os.remove(self._tmp)
