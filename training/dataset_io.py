"""Reading image collections: list the images of a folder or zip, decode one image, parse dataset.json.

Shared by the training-time loader (`training/dataset.py`) and the conversion tool
(`training/dataset_sources.py`), so that both see the same files and report the same errors.
"""

import io
import json
import os
import zipfile

import PIL.Image

# Extensions read as images (lower case). Everything else (dataset.json, notes, ...) is ignored.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})

_REPLACE = "replace or delete the file"


class DatasetError(ValueError):
    """A bad dataset input. The message is one line naming the file and the fix."""


def is_image_name(relpath: str) -> bool:
    """True for an image file name; hidden files and macOS zip debris (`__MACOSX/`, `._x.png`) are skipped."""
    parts = relpath.replace("\\", "/").split("/")
    if any(part.startswith(".") or part == "__MACOSX" for part in parts):
        return False
    return os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS


def list_folder_images(root: str) -> list:
    """Relative '/'-separated paths of all images under `root` (recursive), sorted."""
    names = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        # Pruning hidden folders here saves walking them; is_image_name would drop their files anyway.
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__MACOSX"]
        rel_dir = os.path.relpath(dirpath, root)
        for filename in filenames:
            rel = filename if rel_dir == "." else os.path.join(rel_dir, filename)
            rel = rel.replace(os.sep, "/")
            if is_image_name(rel):
                names.append(rel)
    return sorted(names)


def list_zip_images(zip_file: zipfile.ZipFile) -> list:
    """Member names of all images in an open zip archive, sorted."""
    return sorted(info.filename for info in zip_file.infolist() if not info.is_dir() and is_image_name(info.filename))


def open_zip(path: str) -> zipfile.ZipFile:
    """Open `path` as a zip archive, raising DatasetError when it is not a readable one."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(
            f"{path}: not a readable zip archive ({exc}); pass a folder of images or a .zip made by dataset_tool.py"
        ) from None


def read_zip_member(zip_file: zipfile.ZipFile, name: str, where: str) -> bytes:
    """Bytes of one zip member; a damaged member (bad CRC, short archive) raises DatasetError naming `where`."""
    try:
        return zip_file.read(name)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DatasetError(
            f"{where}: cannot read the zip member ({exc}); the archive is damaged, re-create it"
        ) from None


def read_file_bytes(path: str) -> bytes:
    """Bytes of a file, raising DatasetError naming it when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def open_image_header(data: bytes, where: str) -> PIL.Image.Image:
    """Open encoded image bytes without decoding the pixels (mode and size are known, pixels are not)."""
    try:
        return PIL.Image.open(io.BytesIO(data))
    except PIL.UnidentifiedImageError:
        raise DatasetError(f"{where}: not a readable image (unknown or damaged format); {_REPLACE}") from None
    except Exception as exc:  # PIL raises many types for bad input; all mean "not an image".
        raise DatasetError(f"{where}: not a readable image ({_reason(exc)}); {_REPLACE}") from None


def open_image_file(path: str, where: str) -> PIL.Image.Image:
    """Open an image file lazily (header only; PIL reads the pixels on load())."""
    try:
        return PIL.Image.open(path)
    except PIL.UnidentifiedImageError:
        raise DatasetError(f"{where}: not a readable image (unknown or damaged format); {_REPLACE}") from None
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read the file ({exc.strerror or exc})") from None
    except Exception as exc:  # PIL raises many types for bad input; all mean "not an image".
        raise DatasetError(f"{where}: not a readable image ({_reason(exc)}); {_REPLACE}") from None


def load_pixels(image: PIL.Image.Image, where: str) -> PIL.Image.Image:
    """Decode the pixels of a lazily opened image; corrupt or truncated files raise DatasetError naming `where`."""
    try:
        image.load()
    except Exception as exc:  # Truncated and corrupt files surface here (OSError, SyntaxError, zlib errors).
        image.close()
        raise DatasetError(
            f"{where}: corrupt or truncated image ({_reason(exc)}); replace or delete the file"
        ) from None
    return image


def decode_image(data: bytes, where: str) -> PIL.Image.Image:
    """Decode encoded image bytes fully; corrupt or truncated files raise DatasetError naming `where`."""
    return load_pixels(open_image_header(data, where), where)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def parse_dataset_json(data: bytes, where: str):
    """Parse a dataset.json: returns (labels, class_names).

    labels: None, or a dict {relative image path: int class index | list of floats};
    class_names: None or a list of str. Any structural problem raises DatasetError naming `where`.
    """
    try:
        meta = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc}); fix or delete the file") from None
    if not isinstance(meta, dict):
        raise DatasetError(f'{where}: expected a JSON object with "labels"; fix or delete the file')
    labels = _parse_labels(meta.get("labels"), where)
    class_names = _parse_class_names(meta.get("class_names"), where)
    if labels is not None and class_names is not None:
        top = max((v for v in labels.values() if isinstance(v, int)), default=-1)
        if top >= len(class_names):
            raise DatasetError(
                f'{where}: label {top} has no entry in "class_names" ({len(class_names)} names); fix the file'
            )
    return labels, class_names


def _parse_labels(raw, where: str):
    if raw is None:
        return None
    fix = 'each entry must be ["relative/path.png", class_index or [numbers]]; fix the file'
    if not isinstance(raw, list):
        raise DatasetError(f'{where}: "labels" must be a list or null; {fix}')
    labels = {}
    for entry in raw:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise DatasetError(f'{where}: bad "labels" entry {str(entry)[:80]}; {fix}')
        labels[entry[0].replace("\\", "/")] = _parse_one_label(entry, where, fix)
    kinds = {len(v) if isinstance(v, list) else "int" for v in labels.values()}
    if len(kinds) > 1:
        raise DatasetError(f"{where}: labels mix class indices and vectors of different lengths; {fix}")
    return labels


def _parse_one_label(entry, where: str, fix: str):
    value = entry[1]
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise DatasetError(f"{where}: negative class index for {entry[0]!r}; {fix}")
        return value
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    raise DatasetError(f"{where}: bad label for {entry[0]!r}: {str(value)[:80]}; {fix}")


def _parse_class_names(raw, where: str):
    if raw is None:
        return None
    if not (isinstance(raw, list) and all(isinstance(name, str) for name in raw)):
        raise DatasetError(f'{where}: "class_names" must be a list of strings; fix the file')
    return list(raw)
