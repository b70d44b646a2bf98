"""Tests for dnnlib.util.open_url: local paths, file:// URLs, http downloads, the cache, offline errors."""

import collections
import hashlib
import http.server
import os
import pathlib
import socket
import threading
import time

import pytest

from dnnlib import util

PAYLOAD = bytes(range(256)) * 40  # 10 KiB, not text, so any mangling shows


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves a few fixed paths; the server object counts requests per path."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        counts = self.server.request_counts
        counts[self.path] += 1
        if self.path == "/flaky/net.pkl" and counts[self.path] <= 2:
            self._send(503, b"busy", {"Retry-After": "0"})
        elif self.path == "/truncated.bin":
            self._send(200, PAYLOAD[:10], {"Content-Length": str(len(PAYLOAD))})
        elif self.path in ("/net.pkl", "/flaky/net.pkl", "/dir/weird%20name!.pkl"):
            self._send(200, PAYLOAD)
        else:
            self._send(404, b"not here")

    def _send(self, status, body, headers=None):
        headers = {"Content-Length": str(len(body)), **(headers or {})}
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # keep test output clean


@pytest.fixture
def server():
    """A local HTTP server in a thread; yields (base_url, request_counts, stop)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.request_counts = collections.Counter()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    stopped = []

    def stop():
        if not stopped:
            httpd.shutdown()
            httpd.server_close()
            stopped.append(True)

    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.request_counts, stop
    stop()


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(util, "_BACKOFF_BASE_S", 0.0)


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listing(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


# ---------------------------------------------------------------------------------------------
# Local files.


def test_open_url_plain_path_and_file_url(tmp_path):
    path = tmp_path / "net work.pkl"
    path.write_bytes(PAYLOAD)
    with util.open_url(str(path)) as f:
        assert f.read() == PAYLOAD
    with util.open_url(path) as f:  # os.PathLike works too
        assert f.read() == PAYLOAD
    file_url = path.as_uri()  # percent-encodes the space
    assert "%20" in file_url
    with util.open_url(file_url) as f:
        assert f.read() == PAYLOAD
    assert util.open_url(file_url, return_filename=True) == str(path)
    assert util.open_url(str(path), return_filename=True) == str(path)


def test_open_url_missing_path_names_it(tmp_path):
    missing = str(tmp_path / "nope" / "missing.pkl")
    with pytest.raises(FileNotFoundError) as info:
        util.open_url(missing)
    assert missing in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        util.open_url(pathlib.Path(missing).as_uri())
    with pytest.raises(IsADirectoryError):
        util.open_url(str(tmp_path))


def test_open_url_rejects_unsupported_urls():
    with pytest.raises(ValueError, match="unsupported URL"):
        util.open_url("ftp://example.com/x.pkl")
    with pytest.raises(ValueError, match="host"):
        util.open_url("file://otherhost/x.pkl")


def test_is_url():
    assert util.is_url("https://example.com/a.pkl")
    assert util.is_url("http://127.0.0.1:8000/a")
    assert not util.is_url("/abs/path.pkl")
    assert not util.is_url("relative/path.pkl")
    assert not util.is_url("http://")
    assert not util.is_url(None)
    assert not util.is_url("file:///tmp/x.pkl")
    assert util.is_url("file:///tmp/x.pkl", allow_file_urls=True)


# ---------------------------------------------------------------------------------------------
# Downloads and the cache.


def test_http_download_is_cached_and_reused_offline(server, tmp_path):
    base, counts, stop = server
    url = base + "/net.pkl"
    cache_dir = tmp_path / "cache"
    with util.open_url(url, cache_dir=str(cache_dir), verbose=False) as f:
        assert f.read() == PAYLOAD
    expected_name = hashlib.md5(url.encode()).hexdigest() + "_net.pkl"
    assert _listing(cache_dir) == [expected_name]  # no temp files left behind
    assert counts["/net.pkl"] == 1

    stop()  # the cache must answer without the network from now on
    filename = util.open_url(url, cache_dir=str(cache_dir), return_filename=True)
    assert filename == str(cache_dir / expected_name)
    with util.open_url(url, cache_dir=str(cache_dir)) as f:
        assert f.read() == PAYLOAD
    assert counts["/net.pkl"] == 1


def test_default_cache_dir_is_under_dnnlib_cache(server):
    base, counts, _ = server
    url = base + "/dir/weird%20name!.pkl"
    filename = util.open_url(url, return_filename=True, verbose=False)
    downloads = os.path.join(os.environ["DNNLIB_CACHE_DIR"], "downloads")
    assert os.path.dirname(filename) == downloads
    assert os.path.basename(filename) == hashlib.md5(url.encode()).hexdigest() + "_weird_name_.pkl"
    assert pathlib.Path(filename).read_bytes() == PAYLOAD
    assert util.url_cache_path(url) == filename


def test_cache_false_downloads_into_memory(server, tmp_path):
    base, counts, _ = server
    cache_dir = tmp_path / "cache"
    for _ in range(2):
        with util.open_url(base + "/net.pkl", cache_dir=str(cache_dir), cache=False, verbose=False) as f:
            assert f.read() == PAYLOAD
    assert counts["/net.pkl"] == 2 and _listing(cache_dir) == []
    with pytest.raises(ValueError, match="return_filename"):
        util.open_url(base + "/net.pkl", cache=False, return_filename=True)


def test_server_errors_are_retried(server, tmp_path):
    base, counts, _ = server
    with util.open_url(base + "/flaky/net.pkl", cache_dir=str(tmp_path), verbose=False) as f:
        assert f.read() == PAYLOAD
    assert counts["/flaky/net.pkl"] == 3


def test_truncated_body_is_retried_and_never_cached(server, tmp_path, no_backoff):
    base, counts, _ = server
    url = base + "/truncated.bin"
    with pytest.raises(util.DownloadError) as info:
        util.open_url(url, cache_dir=str(tmp_path), num_attempts=3, verbose=False)
    assert counts["/truncated.bin"] == 3
    assert url in str(info.value) and "after 3 attempts" in str(info.value)
    assert _listing(tmp_path) == []


def test_not_found_fails_without_retrying(server, tmp_path):
    base, counts, _ = server
    url = base + "/missing.pkl"
    with pytest.raises(util.DownloadError, match="HTTP 404") as info:
        util.open_url(url, cache_dir=str(tmp_path), verbose=False)
    assert counts["/missing.pkl"] == 1
    assert info.value.url == url and url in str(info.value)
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("url", [
    "http://nonexistent.invalid/x.pkl",
    f"http://127.0.0.1:{_closed_port()}/x",
])
def test_unreachable_url_fails_fast_with_clear_error(url, tmp_path):
    start = time.monotonic()
    with pytest.raises(util.DownloadError) as info:
        util.open_url(url, cache_dir=str(tmp_path), verbose=False)
    assert time.monotonic() - start < 5
    assert isinstance(info.value, OSError)
    message = str(info.value)
    assert url in message and "local file path" in message
    assert info.value.cache_path in message  # tells the user where a manual copy would be found
    assert os.path.dirname(info.value.cache_path) == str(tmp_path)


def test_dnnlib_offline_refuses_network_but_serves_cache(server, tmp_path, monkeypatch):
    base, counts, _ = server
    cached_url = base + "/net.pkl"
    util.open_url(cached_url, cache_dir=str(tmp_path), verbose=False).close()
    monkeypatch.setenv("DNNLIB_OFFLINE", "1")
    with pytest.raises(util.DownloadError, match="DNNLIB_OFFLINE") as info:
        util.open_url(base + "/flaky/net.pkl", cache_dir=str(tmp_path))
    assert base + "/flaky/net.pkl" in str(info.value)
    assert counts["/flaky/net.pkl"] == 0
    with util.open_url(cached_url, cache_dir=str(tmp_path)) as f:
        assert f.read() == PAYLOAD
    assert counts["/net.pkl"] == 1


def test_manually_copied_cache_file_is_used(tmp_path):
    url = "http://nonexistent.invalid/models/net.pkl"
    target = util.url_cache_path(url, str(tmp_path))
    pathlib.Path(target).write_bytes(PAYLOAD)
    with util.open_url(url, cache_dir=str(tmp_path)) as f:
        assert f.read() == PAYLOAD
