"""Tests for dnnlib.util: EasyDict, objects by name, time formatting and the Logger."""

import collections
import copy
import fractions
import os
import pickle
import pickletools
import sys
import uuid

import pytest

import dnnlib
from dnnlib import util


# ---------------------------------------------------------------------------------------------
# EasyDict and the cache dir.


def test_easydict_attribute_and_item_access_agree():
    d = util.EasyDict(lr=0.002, betas=(0, 0.99))
    assert d.lr == 0.002 and d["betas"] == (0, 0.99)
    d.batch = 32
    assert d["batch"] == 32
    del d.lr
    assert "lr" not in d
    with pytest.raises(AttributeError):
        _ = d.lr
    assert not hasattr(d, "missing")
    assert dnnlib.EasyDict is util.EasyDict


def test_easydict_pickles_as_dnnlib_util_easydict():
    d = util.EasyDict(class_name="torch.optim.Adam", nested=util.EasyDict(a=1))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps(d, protocol=protocol)
        loaded = pickle.loads(data)
        assert type(loaded) is util.EasyDict and type(loaded.nested) is util.EasyDict
        assert loaded == d and loaded.nested.a == 1
        # The class reference in the stream is what other tools (and old pickles) rely on.
        args = [arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
        assert "dnnlib.util EasyDict" in args or ("dnnlib.util" in args and "EasyDict" in args)
    assert b"cdnnlib.util\nEasyDict\n" in pickle.dumps(d, protocol=0)


def test_easydict_deepcopy_is_independent():
    d = util.EasyDict(inner=util.EasyDict(x=[1]))
    clone = copy.deepcopy(d)
    clone.inner.x.append(2)
    assert d.inner.x == [1] and type(clone.inner) is util.EasyDict


def test_make_cache_dir_path_follows_env_and_set_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(tmp_path / "env"))
    assert util.make_cache_dir_path("downloads", "a.pkl") == os.path.join(str(tmp_path / "env"), "downloads", "a.pkl")
    try:
        util.set_cache_dir(tmp_path / "explicit")
        assert util.make_cache_dir_path("x") == os.path.join(str(tmp_path / "explicit"), "x")
    finally:
        util.set_cache_dir(None)
    monkeypatch.delenv("DNNLIB_CACHE_DIR")
    assert util.make_cache_dir_path() == os.path.join(os.path.expanduser("~"), ".cache", "dnnlib")


# ---------------------------------------------------------------------------------------------
# Objects by name.


@pytest.fixture
def temp_package(tmp_path, monkeypatch):
    """A fresh importable package (unique name) with a class, a function and a broken module."""
    name = f"dnnlib_test_pkg_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "things.py").write_text(
        "class Widget:\n"
        "    class Part:\n"
        "        pass\n"
        "    def __init__(self, size, colour='red'):\n"
        "        self.size, self.colour = size, colour\n"
        "\n"
        "def double(x):\n"
        "    return 2 * x\n"
        "\n"
        "VALUE = 7\n"
    )
    (pkg / "needs_dep.py").write_text("import dnnlib_definitely_missing_dep\n")
    (pkg / "bad_from.py").write_text("from os import dnnlib_no_such_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def test_construct_class_by_name_stdlib():
    obj = util.construct_class_by_name(3, 4, class_name="fractions.Fraction")
    assert obj == fractions.Fraction(3, 4)
    od = util.construct_class_by_name(class_name="collections.OrderedDict", a=1)
    assert type(od) is collections.OrderedDict and od == {"a": 1}


def test_construct_class_by_name_temp_module(temp_package):
    kwargs = util.EasyDict(class_name=f"{temp_package}.things.Widget", size=5, colour="blue")
    widget = util.construct_class_by_name(**kwargs)
    assert type(widget).__name__ == "Widget" and (widget.size, widget.colour) == (5, "blue")
    assert type(widget).__module__ == f"{temp_package}.things"
    part_cls = util.get_obj_by_name(f"{temp_package}.things.Widget.Part")
    assert part_cls.__qualname__ == "Widget.Part"
    assert util.call_func_by_name(21, func_name=f"{temp_package}.things.double") == 42


def test_get_module_from_obj_name_uses_longest_importable_prefix(temp_package):
    module, local = util.get_module_from_obj_name(f"{temp_package}.things.Widget.Part")
    assert module.__name__ == f"{temp_package}.things" and local == "Widget.Part"
    module, local = util.get_module_from_obj_name("os.path")
    assert module is os.path and local == ""
    assert util.get_obj_from_module(module, "") is os.path
    assert util.get_obj_by_name("os.path.join") is os.path.join


def test_get_obj_by_name_unknown_module_names_full_name():
    with pytest.raises(ModuleNotFoundError) as info:
        util.get_obj_by_name("dnnlib_no_such_module.sub.Thing")
    message = str(info.value)
    assert "dnnlib_no_such_module.sub.Thing" in message
    assert "'dnnlib_no_such_module.sub'" in message and "'dnnlib_no_such_module'" in message


def test_get_obj_by_name_missing_attribute_names_full_name(temp_package):
    with pytest.raises(AttributeError) as info:
        util.get_obj_by_name(f"{temp_package}.things.Widget.Nope")
    assert f"{temp_package}.things.Widget.Nope" in str(info.value)
    assert "'Widget.Nope'" in str(info.value)
    with pytest.raises(AttributeError, match="collections.NoSuchThing"):
        util.get_obj_by_name("collections.NoSuchThing")


def test_import_error_inside_existing_module_propagates(temp_package):
    with pytest.raises(ModuleNotFoundError) as info:
        util.get_obj_by_name(f"{temp_package}.needs_dep.Anything")
    assert info.value.name == "dnnlib_definitely_missing_dep"
    with pytest.raises(ImportError, match="dnnlib_no_such_name"):
        util.get_obj_by_name(f"{temp_package}.bad_from.Anything")


@pytest.mark.parametrize("bad_name", ["", ".os", "os.", "os..path", None, 3])
def test_get_obj_by_name_rejects_malformed_names(bad_name):
    with pytest.raises(ValueError, match="dotted name"):
        util.get_obj_by_name(bad_name)


def test_call_and_construct_need_a_name_and_a_callable():
    with pytest.raises(ValueError, match="class_name"):
        util.construct_class_by_name(a=1)
    with pytest.raises(ValueError, match="func_name"):
        util.call_func_by_name(1)
    with pytest.raises(TypeError, match="math.pi"):
        util.call_func_by_name(func_name="math.pi")


def test_top_level_function_names_round_trip(temp_package):
    double = util.get_obj_by_name(f"{temp_package}.things.double")
    assert util.is_top_level_function(double)
    name = util.get_top_level_function_name(double)
    assert name == f"{temp_package}.things.double"
    assert util.get_obj_by_name(name) is double
    assert util.get_obj_by_name(util.get_top_level_function_name(os.path.join)) is os.path.join
    assert not util.is_top_level_function(lambda x: x)
    with pytest.raises(ValueError, match="module-level"):
        util.get_top_level_function_name(lambda x: x)


# ---------------------------------------------------------------------------------------------
# Time formatting.


@pytest.mark.parametrize("seconds, expected", [
    (0, "0s"),
    (5, "5s"),
    (59.4, "59s"),
    (59.6, "1m 00s"),  # rounds to the nearest second
    (3 * 60 + 4, "3m 04s"),
    (3599, "59m 59s"),
    (3600, "1h 00m 00s"),
    (2 * 3600 + 3 * 60 + 4, "2h 03m 04s"),
    (86399, "23h 59m 59s"),
    (86400, "1d 00h 00m"),
    (86400 + 2 * 3600 + 3 * 60 + 4, "1d 02h 03m"),
    (12 * 86400 + 5, "12d 00h 00m"),
])
def test_format_time_exact(seconds, expected):
    assert util.format_time(seconds) == expected


@pytest.mark.parametrize("seconds, expected", [
    (5, "5s"), (184, "3m 04s"), (7384, "2h 03m"), (86400 + 7384, "1d 02h"),
])
def test_format_time_brief_exact(seconds, expected):
    assert util.format_time_brief(seconds) == expected


def test_format_time_rejects_nan():
    with pytest.raises(ValueError, match="seconds"):
        util.format_time(float("nan"))


# ---------------------------------------------------------------------------------------------
# Logger.


def test_logger_tees_and_restores_streams(tmp_path, capsys):
    log_path = tmp_path / "log.txt"
    orig_out, orig_err = sys.stdout, sys.stderr
    with util.Logger(str(log_path), file_mode="w") as logger:
        assert sys.stdout is not orig_out and sys.stderr is not orig_err
        print("hello stdout")
        print("hello stderr", file=sys.stderr)
        logger.write("direct write\n")
        assert log_path.read_text() == "hello stdout\nhello stderr\ndirect write\n"  # flushed per write
    assert sys.stdout is orig_out and sys.stderr is orig_err
    logger.close()  # a second close is harmless
    assert sys.stdout is orig_out
    captured = capsys.readouterr()
    assert captured.out == "hello stdout\ndirect write\n"
    assert captured.err == "hello stderr\n"


def test_logger_appends_by_default_and_truncates_with_w(tmp_path, capsys):
    log_path = tmp_path / "log.txt"
    for line in ("one", "two"):
        logger = util.Logger(str(log_path))
        print(line)
        logger.close()
    assert log_path.read_text() == "one\ntwo\n"
    with util.Logger(str(log_path), file_mode="w"):
        print("three")
    assert log_path.read_text() == "three\n"
    with pytest.raises(ValueError, match="file_mode"):
        util.Logger(str(log_path), file_mode="rb")
    capsys.readouterr()


def test_logger_without_file_only_passes_through(capsys):
    orig_out = sys.stdout
    with util.Logger():
        print("through")
        assert sys.stdout.encoding == orig_out.encoding  # other attributes come from the real stream
    assert sys.stdout is orig_out
    assert capsys.readouterr().out == "through\n"


def test_atomic_write_mode_and_failure(tmp_path):
    old_mask = os.umask(0o022)
    try:
        target = tmp_path / "out.bin"
        dnnlib.util.atomic_write(str(target), lambda f: f.write(b"abc"))
        assert target.read_bytes() == b"abc"
        assert target.stat().st_mode & 0o777 == 0o644  # the usual mode for the umask, not mkstemp's 0600

        def fail(f):
            f.write(b"partial")
            raise RuntimeError("disk full")

        with pytest.raises(RuntimeError):
            dnnlib.util.atomic_write(str(target), fail)
        assert target.read_bytes() == b"abc"  # the previous version survives
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temp file left
    finally:
        os.umask(old_mask)
