"""dnnlib.util: kwargs dicts, objects by dotted name, URL opening with a download cache, logging.

Official network pickles and `training_options.json` refer to this module by name
(`dnnlib.util.EasyDict`), so the names here are part of the on-disk format.
"""

import contextlib
import glob
import hashlib
import importlib
import inspect
import io
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

import requests

_log = logging.getLogger(__name__)

_cache_dir_override = None  # set by set_cache_dir(); wins over $DNNLIB_CACHE_DIR

_CONNECT_TIMEOUT_S = 10.0  # an unreachable host should fail in seconds, not minutes
_BACKOFF_BASE_S = 1.0  # first retry delay; doubles per attempt
_BACKOFF_MAX_S = 16.0
_RETRY_AFTER_MAX_S = 30.0  # never let a server's Retry-After stall us longer than this
_PROGRESS_DELAY_S = 2.0  # only downloads that take longer than this get a progress bar
_CHUNK_BYTES = 1 << 20


# ---- Dicts and paths.

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


def set_cache_dir(path):
    """Make `make_cache_dir_path` use `path` (None restores $DNNLIB_CACHE_DIR / ~/.cache/dnnlib)."""
    global _cache_dir_override
    _cache_dir_override = None if path is None else os.fspath(path)


def make_cache_dir_path(*paths: str) -> str:
    """Path under the dnnlib cache: set_cache_dir(), else $DNNLIB_CACHE_DIR, else ~/.cache/dnnlib."""
    root = _cache_dir_override or os.environ.get("DNNLIB_CACHE_DIR")
    if not root:
        root = os.path.join(os.path.expanduser("~"), ".cache", "dnnlib")
    return os.path.join(root, *paths)


# ---- Formatting.

def _whole_seconds(seconds) -> int:
    # Round to nearest so that 59.6 s reads "1m 00s", not "59s" one tick and "1m 00s" the next.
    value = float(seconds)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"format_time: seconds={seconds!r} is not finite; pass a number of seconds")
    return max(0, int(math.floor(value + 0.5)))


def _format_fields(seconds, max_fields: int) -> str:
    s = _whole_seconds(seconds)
    fields = [(s // 86400, "d"), (s // 3600 % 24, "h"), (s // 60 % 60, "m"), (s % 60, "s")]
    while len(fields) > 1 and fields[0][0] == 0:
        fields.pop(0)
    (head, head_unit), *tail = fields[:max_fields]
    return " ".join([f"{head}{head_unit}"] + [f"{value:02d}{unit}" for value, unit in tail])


def format_time(seconds) -> str:
    """Human-readable duration: '5s', '3m 04s', '2h 03m 04s', '1d 02h 03m' (rounded to whole seconds)."""
    return _format_fields(seconds, 3)


def format_time_brief(seconds) -> str:
    """Shorter duration with two fields at most: '5s', '3m 04s', '2h 03m', '1d 02h'."""
    return _format_fields(seconds, 2)


# ---- Objects by dotted name.

def _is_missing_module(exc: ModuleNotFoundError, module_name: str) -> bool:
    # True only when the module we asked for (or one of its parents) does not exist; a module that
    # exists but fails on one of its own imports must surface that error, not look like a typo.
    missing = exc.name
    return missing is not None and (module_name == missing or module_name.startswith(missing + "."))


def get_module_from_obj_name(obj_name: str):
    """Split 'pkg.mod.Obj.attr' into (imported module pkg.mod, 'Obj.attr') using the longest importable prefix."""
    if not isinstance(obj_name, str) or not obj_name or any(not part for part in obj_name.split(".")):
        raise ValueError(f"Invalid object name {obj_name!r}; pass a dotted name such as 'torch.optim.Adam'")
    parts = obj_name.split(".")
    tried = []
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if not _is_missing_module(exc, module_name):
                raise
            tried.append(module_name)
            continue
        return module, ".".join(parts[split:])
    raise ModuleNotFoundError(f"Cannot resolve {obj_name!r}: no importable module among {tried}; check the "
                              f"spelling and that the package is installed or on sys.path", name=parts[0])


def get_obj_from_module(module, obj_name: str):
    """Walk the dotted attribute path `obj_name` inside `module` ('' returns the module itself)."""
    obj = module
    if not obj_name:
        return obj
    walked = []
    for part in obj_name.split("."):
        walked.append(part)
        try:
            obj = getattr(obj, part)
        except AttributeError:
            full_name = f"{module.__name__}.{obj_name}"
            raise AttributeError(
                f"Cannot resolve {full_name!r}: module {module.__name__!r} imports but has no attribute "
                f"{'.'.join(walked)!r}; check the spelling of the name"
            ) from None
    return obj


def get_obj_by_name(name: str):
    """Return the object named by a dotted path, e.g. 'torch.optim.Adam' or 'training.dataset.ImageFolderDataset'."""
    module, local_name = get_module_from_obj_name(name)
    return get_obj_from_module(module, local_name)


def call_func_by_name(*args, func_name: str = None, **kwargs):
    """Call the function named by the dotted path `func_name` with the remaining arguments."""
    if func_name is None:
        raise ValueError("call_func_by_name: func_name is missing; pass func_name='package.module.function'")
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise TypeError(f"call_func_by_name: {func_name!r} is a {type(func).__name__}, not callable; "
                        f"name a function or class")
    return func(*args, **kwargs)


def construct_class_by_name(*args, class_name: str = None, **kwargs):
    """Instantiate the class named by the dotted path `class_name` (the 'class_name' entry of a kwargs dict)."""
    if class_name is None:
        raise ValueError("construct_class_by_name: class_name is missing; "
                         "add e.g. class_name='torch.optim.Adam' to the kwargs")
    return call_func_by_name(*args, func_name=class_name, **kwargs)


def is_top_level_function(obj) -> bool:
    """True for a plain function defined at module level (so it can be found again by name)."""
    return inspect.isfunction(obj) and obj.__qualname__ == obj.__name__ and not obj.__name__.startswith("<")


def get_top_level_function_name(obj) -> str:
    """Dotted name ('module.func') under which `get_obj_by_name` finds a top-level function again."""
    if not is_top_level_function(obj):
        raise ValueError(f"get_top_level_function_name: {obj!r} is not a module-level function; "
                         f"define it at module level")
    module = obj.__module__
    if module == "__main__":
        # A script's functions are importable later under the script's file name, not as __main__.
        main_file = getattr(sys.modules[module], "__file__", None)
        if main_file:
            module = os.path.splitext(os.path.basename(main_file))[0]
    return f"{module}.{obj.__name__}"


# ---- URLs and the download cache.

class DownloadError(OSError):
    """A URL could not be fetched (offline, unreachable, HTTP error). `url` and `cache_path` say what and where."""

    def __init__(self, message: str, url: str = None, cache_path: str = None):
        super().__init__(message)
        self.url = url
        self.cache_path = cache_path


def is_url(obj, allow_file_urls: bool = False) -> bool:
    """True if `obj` is an http(s) URL with a host (or a file:// URL when allow_file_urls)."""
    if not isinstance(obj, str) or "://" not in obj:
        return False
    if obj.startswith("file://"):
        return allow_file_urls
    try:
        parsed = urllib.parse.urlparse(obj)
    except ValueError:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.netloc)


def is_offline() -> bool:
    """True when $DNNLIB_OFFLINE forbids network access (1/true/yes/on)."""
    return os.environ.get("DNNLIB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def url_cache_path(url: str, cache_dir: str = None) -> str:
    """Cache file for `url`: '<md5 of url>_<sanitised basename>' in cache_dir (default: cache 'downloads')."""
    cache_dir = cache_dir or make_cache_dir_path("downloads")
    url_md5 = hashlib.md5(url.encode("utf-8"), usedforsecurity=False).hexdigest()
    basename = urllib.parse.unquote(os.path.basename(urllib.parse.urlparse(url).path))
    # Leading dots are stripped so an entry is never hidden or mistaken for one of our temp files.
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", basename)[:128].lstrip("._") or "download"
    return os.path.join(cache_dir, f"{url_md5}_{safe_name}")


def _find_cached(cache_path: str):
    if os.path.isfile(cache_path):
        return cache_path
    # Entries with the same URL hash but another basename spelling (e.g. from older tools) also count.
    prefix = os.path.basename(cache_path).split("_", 1)[0] + "_"
    matches = sorted(glob.glob(os.path.join(glob.escape(os.path.dirname(cache_path)), prefix + "*")))
    return next((path for path in matches if os.path.isfile(path)), None)


def _exception_chain(exc):
    seen, stack = set(), [exc]
    while stack:
        err = stack.pop()
        if not isinstance(err, BaseException) or id(err) in seen:
            continue
        seen.add(id(err))
        yield err
        stack.extend([getattr(err, "reason", None), err.__cause__, err.__context__])
        stack.extend(arg for arg in err.args if isinstance(arg, BaseException))


def _is_unreachable(exc) -> bool:
    # Failures that waiting will not fix (offline, DNS, refused, no route, TLS): fail fast instead.
    from urllib3.exceptions import NewConnectionError  # requests depends on urllib3
    fatal_types = (NewConnectionError, ConnectionRefusedError,
                   requests.exceptions.SSLError, requests.exceptions.ProxyError)
    for err in _exception_chain(exc):
        if isinstance(err, fatal_types) or type(err).__name__ == "gaierror":
            return True
    return False


def _retry_delay(exc, attempt: int):
    """Seconds to wait before retrying after `exc`, or None when retrying cannot help."""
    backoff = min(_BACKOFF_BASE_S * 2 ** (attempt - 1), _BACKOFF_MAX_S)
    if isinstance(exc, requests.exceptions.HTTPError):
        response = exc.response
        status = response.status_code if response is not None else 0
        if status not in (408, 429) and status < 500:
            return None
        retry_after = response.headers.get("Retry-After", "") if response is not None else ""
        return min(float(retry_after), _RETRY_AFTER_MAX_S) if retry_after.strip().isdigit() else backoff
    if isinstance(exc, requests.exceptions.ConnectTimeout) or _is_unreachable(exc):
        return None
    transient = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                 requests.exceptions.ChunkedEncodingError, _ShortRead)
    return backoff if isinstance(exc, transient) else None


class _ShortRead(requests.exceptions.RequestException):
    """The body ended before Content-Length bytes arrived."""


def _describe_failure(url: str, exc) -> str:
    host = urllib.parse.urlparse(url).netloc
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        return f"the server answered HTTP {exc.response.status_code} {exc.response.reason}"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection to {host} within the connect timeout (offline or firewalled?)"
    chain = list(_exception_chain(exc))
    # The OS-level error (gaierror, ConnectionRefusedError, ...) says most in the fewest words.
    root = next((err for err in chain if isinstance(err, OSError)
                 and not isinstance(err, requests.exceptions.RequestException)), chain[-1])
    if _is_unreachable(exc):
        return f"cannot reach {host}: offline, unknown host or connection refused ({type(root).__name__}: {root})"
    return f"{type(exc).__name__}: {exc}"


def _download_error(url: str, reason: str, cache_path: str, attempts: int = 1) -> DownloadError:
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    hint = f"To work without network access, download {url} elsewhere and pass the local file path instead of the URL"
    if cache_path:
        hint += f", or copy the file to {cache_path} (the cache entry this URL maps to)"
    return DownloadError(f"Could not download {url}{tries}: {reason}. {hint}.", url=url, cache_path=cache_path)


def _content_length(response):
    # With a Content-Encoding the header counts compressed bytes, not the decoded ones we see.
    if response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _download_once(url: str, dest, timeout: float, verbose: bool):
    from tqdm import tqdm

    timeouts = (min(timeout, _CONNECT_TIMEOUT_S), timeout)
    with requests.get(url, stream=True, timeout=timeouts) as response:
        response.raise_for_status()
        total = _content_length(response)
        received = 0
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False,
                   desc=os.path.basename(urllib.parse.urlparse(url).path) or url,
                   disable=not verbose, delay=_PROGRESS_DELAY_S)
        with bar:
            for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
                dest.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise _ShortRead(f"got {received} of {total} bytes")


def _download_with_retries(url: str, dest, num_attempts: int, timeout: float, verbose: bool, cache_path: str):
    """Write the body of `url` into the binary file `dest`, starting over on each retry."""
    for attempt in range(1, num_attempts + 1):
        dest.seek(0)
        dest.truncate()
        try:
            _download_once(url, dest, timeout, verbose)
            return
        except requests.exceptions.RequestException as exc:
            delay = _retry_delay(exc, attempt)
            if delay is None or attempt == num_attempts:
                raise _download_error(url, _describe_failure(url, exc), cache_path, attempt) from exc
            _log.log(logging.WARNING if verbose else logging.DEBUG,
                     "Download of %s failed (%s); retry %d of %d in %.1f s", url, exc, attempt, num_attempts - 1, delay)
            time.sleep(delay)


def _download_to_cache(url: str, cache_path: str, num_attempts: int, timeout: float, verbose: bool):
    cache_dir = os.path.dirname(cache_path)
    os.makedirs(cache_dir, exist_ok=True)
    # A hidden temp file in the same directory makes the final rename atomic, so readers (other
    # ranks, later runs) see either nothing or the whole file.
    fd, tmp_path = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "w+b") as tmp:
            _download_with_retries(url, tmp, num_attempts, timeout, verbose, cache_path)
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600 files; a shared cache should stay readable
        os.replace(tmp_path, cache_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp_path)
        raise


def _file_url_to_path(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"open_url: {url!r} names host {parsed.netloc!r}; use a local URL such as file:///abs/path")
    return urllib.request.url2pathname(parsed.path)


def _open_local(path: str, return_filename: bool):
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"open_url: {path!r} is a directory; pass the path of a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"open_url: no such file {path!r}; check the path, or pass an http(s) URL")
    return path if return_filename else open(path, "rb")


def open_url(url, cache_dir: str = None, num_attempts: int = 5, verbose: bool = True,
             return_filename: bool = False, cache: bool = True, timeout: float = 30.0):
    """Open a local path, file:// URL or http(s) URL as a binary file (or return its local filename).

    http(s) downloads are cached in `cache_dir` (default: make_cache_dir_path('downloads')); a cache
    hit never touches the network. Transient failures (read timeouts, HTTP 408/429/5xx, dropped
    connections) are retried `num_attempts` times in all with exponential backoff; unreachable
    hosts fail at once. `timeout` is the read timeout in seconds (connecting gets at most 10 s).
    With $DNNLIB_OFFLINE=1 only local files and cache hits work. Raises DownloadError (an OSError).
    """
    url = os.fspath(url) if isinstance(url, os.PathLike) else url
    if not isinstance(url, str) or not url:
        raise ValueError(f"open_url: url={url!r} is not a path or URL; pass a file path or an http(s) URL")
    if num_attempts < 1:
        raise ValueError(f"open_url: num_attempts={num_attempts} must be at least 1")
    if url.startswith("file://"):
        return _open_local(_file_url_to_path(url), return_filename)
    if not is_url(url):
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url):
            raise ValueError(f"open_url: unsupported URL {url!r}; use http://, https://, file:// or a local path")
        return _open_local(url, return_filename)
    if return_filename and not cache:
        raise ValueError("open_url: return_filename=True needs cache=True (the file must live somewhere)")
    cache_path = url_cache_path(url, cache_dir) if cache else None
    cached = _find_cached(cache_path) if cache else None
    if cached:
        return cached if return_filename else open(cached, "rb")
    if is_offline():
        raise _download_error(url, "DNNLIB_OFFLINE is set, so network access is disabled", cache_path)
    if not cache:
        buffer = io.BytesIO()
        _download_with_retries(url, buffer, num_attempts, timeout, verbose, None)
        buffer.seek(0)
        return buffer
    _download_to_cache(url, cache_path, num_attempts, timeout, verbose)
    return cache_path if return_filename else open(cache_path, "rb")


# ---- Files.

def _current_umask() -> int:
    # /proc avoids briefly changing the process umask, which other threads could observe.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write_fn):
    """Call write_fn(binary file) on a hidden temp file (`.tmp-<name>.*`) next to `path`, fsync it, rename it.

    On any exception the temp file is removed and the exception re-raised; `path` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory):
    """Persist the rename itself (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- Logging.

class _TeeStream:
    """Stands in for sys.stdout or sys.stderr: writes go to the original stream and the log file."""

    def __init__(self, stream, logger):
        self._stream = stream
        self._logger = logger

    def write(self, text):
        self._logger._write_file(text)
        count = self._stream.write(text)
        if self._logger.should_flush:
            self._stream.flush()
        return count

    def flush(self):
        self._stream.flush()
        self._logger._flush_file()

    def __getattr__(self, name):
        # isatty(), encoding, fileno() etc. come from the real stream so tqdm and friends still work.
        if name.startswith("__") or name in ("_stream", "_logger"):
            raise AttributeError(name)
        return getattr(self._stream, name)


class Logger:
    """Tee stdout and stderr to a log file until close(); usable as a context manager.

    Args:
        file_name:    log file path; None = tee nothing, only redirect through this object.
        file_mode:    'a' to append (resumed runs keep their history) or 'w' to truncate.
        should_flush: flush after every write so the log survives a crash.
    """

    def __init__(self, file_name: str = None, file_mode: str = "a", should_flush: bool = True):
        if file_mode not in ("a", "w", "x"):
            raise ValueError(f"Logger: file_mode={file_mode!r} is not a text write mode; use 'a' or 'w'")
        self.file = open(file_name, file_mode, encoding="utf-8") if file_name is not None else None
        self.should_flush = should_flush
        self._lock = threading.Lock()
        self._closed = False
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self._tee_stdout = _TeeStream(self.stdout, self)
        self._tee_stderr = _TeeStream(self.stderr, self)
        sys.stdout = self._tee_stdout
        sys.stderr = self._tee_stderr

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        self.close()

    def _write_file(self, text):
        with self._lock:
            if self.file is not None and text:
                self.file.write(text)
                if self.should_flush:
                    self.file.flush()

    def _flush_file(self):
        with self._lock:
            if self.file is not None:
                self.file.flush()

    def write(self, text: str):
        """Write `text` to the original stdout and the log file."""
        return self._tee_stdout.write(text)

    def flush(self):
        """Flush the original stdout and the log file."""
        self._tee_stdout.flush()

    def close(self):
        """Flush, close the file and put the original streams back. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.flush()
        self._tee_stderr.flush()
        # Restore only streams that are still ours, so closing out of order does not undo a newer logger.
        if sys.stdout is self._tee_stdout:
            sys.stdout = self.stdout
        if sys.stderr is self._tee_stderr:
            sys.stderr = self.stderr
        with self._lock:
            if self.file is not None:
                self.file.close()
                self.file = None
