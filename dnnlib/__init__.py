"""Small utilities shared by every part of the codebase (kwargs dicts, URLs, caches)."""

from .util import EasyDict, make_cache_dir_path  # noqa: F401
