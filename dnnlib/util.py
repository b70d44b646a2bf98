"""dnnlib.util: EasyDict, class construction by name, URL opening with a cache.

(Minimal placeholder; the full module is being written.)
"""

import os


class EasyDict(dict):
    """A dict whose keys are also attributes (`d.lr == d['lr']`). Pickled as `dnnlib.util.EasyDict`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        del self[name]


def make_cache_dir_path(*paths: str) -> str:
    """Path under the dnnlib cache: $DNNLIB_CACHE_DIR, else ~/.cache/dnnlib."""
    root = os.environ.get("DNNLIB_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dnnlib")
    return os.path.join(root, *paths)
