"""Persistent classes: pickles that carry the source code of the classes they contain.

A class decorated with `persistent_class` pickles its instances as a call
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` is a plain dict

    type='class', version=6, module_src=<whole source of the defining module>,
    class_name=<name of the class>, state=<the instance's __getstate__()>.

Loading such a pickle executes `module_src` as a fresh module and rebuilds the instance from it,
so a network pickle keeps working after the code that wrote it has changed or disappeared. This
is the format of the official StyleGAN2-ADA network pickles, which load here unchanged.

Security: loading a pickle runs the source embedded in it. Only load pickles you trust.
"""

import copy
import linecache
import pickle
import sys
import tokenize
import types
import uuid

import dnnlib

# Format version written into `meta`; official pickles use 6 as well.
_version = 6

# Every class returned by `persistent_class`; `is_persistent` looks here.
_decorators = set()

# Original class -> its persistent subclass, so decorating twice yields one class.
_wrapped = {}

# Functions registered by `import_hook`, applied in order to each `meta` being loaded.
_import_hooks = []

# Modules built from pickled source <-> that source. Modules imported from files are not cached,
# so a reloaded module picks up its edited file.
_module_to_src_dict = {}
_src_to_module_dict = {}


def persistent_class(orig_class):
    """Class decorator: make instances of `orig_class` pickle together with their module's source.

    Returns a subclass with the same name and module that records the constructor arguments
    (deep copies, exposed as `init_args` / `init_kwargs`) and reduces to
    `_reconstruct_persistent_obj(meta)` when pickled. `orig_class` must be defined at the top level
    of a module that has a source file (or that was itself built from pickled source).
    Decorating an already persistent class returns it unchanged.
    """
    if not isinstance(orig_class, type):
        raise TypeError(f"persistent_class: expected a class, got {type(orig_class).__name__}; "
                        "apply @persistent_class to a class definition")
    if is_persistent(orig_class):
        return orig_class
    if orig_class in _wrapped:
        return _wrapped[orig_class]
    if orig_class.__qualname__ != orig_class.__name__:
        raise ValueError(f"persistent_class: class '{orig_class.__qualname__}' is nested in a function "
                         "or class; define it at the top level of its module")
    orig_module = sys.modules.get(orig_class.__module__)
    if orig_module is None:
        raise ValueError(f"persistent_class: module '{orig_class.__module__}' of class '{orig_class.__name__}' "
                         "is not in sys.modules; import the module normally before decorating")
    decorator = _make_persistent_subclass(orig_class, _module_to_src(orig_module))
    _decorators.add(decorator)
    _wrapped[orig_class] = decorator
    return decorator


def _make_persistent_subclass(orig_class, module_src):
    """Build the persistent subclass of `orig_class` whose pickles embed `module_src`."""

    class Decorator(orig_class):
        _orig_module_src = module_src
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # Set after the base constructor so that, when persistent classes inherit from each
            # other, the most derived class's arguments win.
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        @property
        def init_args(self):
            """Copy of the positional arguments the instance was constructed with (tuple)."""
            return copy.deepcopy(self._init_args)

        @property
        def init_kwargs(self):
            """Copy of the keyword arguments the instance was constructed with (dict)."""
            return copy.deepcopy(self._init_kwargs)

        def __reduce__(self):
            if type(self) not in _decorators:
                # An undecorated subclass would otherwise come back as its persistent base class.
                return super().__reduce__()
            state = self.__getstate__()
            _check_pickleable(state, type(self).__name__)
            meta = dict(type="class", version=_version, module_src=self._orig_module_src,
                        class_name=self._orig_class_name, state=state)
            return _reconstruct_persistent_obj, (meta,)

    for attr in ("__name__", "__qualname__", "__module__", "__doc__"):
        setattr(Decorator, attr, getattr(orig_class, attr))
    # Without these, copy would go through __reduce__ and return an instance of a source-built class.
    if not hasattr(orig_class, "__copy__"):
        Decorator.__copy__ = _copy_persistent
    if not hasattr(orig_class, "__deepcopy__"):
        Decorator.__deepcopy__ = _deepcopy_persistent
    return Decorator


def _copy_persistent(self):
    """`copy.copy` of a persistent object: same class, state shared as Python's default copy does."""
    result = type(self).__new__(type(self))
    _restore_state(result, self.__getstate__())
    return result


def _deepcopy_persistent(self, memo):
    """`copy.deepcopy` of a persistent object: same class, independent state."""
    result = type(self).__new__(type(self))
    memo[id(self)] = result
    _restore_state(result, copy.deepcopy(self.__getstate__(), memo))
    return result


def is_persistent(obj):
    """True if `obj` is a class returned by `persistent_class`, or an instance of exactly such a class."""
    cls = obj if isinstance(obj, type) else type(obj)
    return cls in _decorators


def import_hook(hook):
    """Register `hook(meta) -> meta or None`, called on each persistent object's `meta` before loading.

    `meta` is an EasyDict with `type`, `version`, `module_src`, `class_name` and `state`. A hook may
    edit it in place and return None, or return a replacement. Returns `hook` (usable as a decorator).
    """
    if not callable(hook):
        raise TypeError(f"import_hook: expected a callable, got {type(hook).__name__}; pass a function of meta")
    _import_hooks.append(hook)
    return hook


def _reconstruct_persistent_obj(meta):
    """Rebuild a persistent object from `meta` (called by pickle; the name is part of the format)."""
    meta = _as_meta(meta)
    for hook in _import_hooks:
        replacement = hook(meta)
        if replacement is not None:
            meta = _as_meta(replacement)
    name = meta.get("class_name", "<unknown>")
    if meta.get("type") != "class":
        raise ValueError(f"persistent pickle of '{name}' has meta type {meta.get('type')!r}; only 'class' is "
                         "supported; register a persistence.import_hook that converts it")
    if meta.get("version") != _version:
        raise ValueError(f"persistent pickle of '{name}' has format version {meta.get('version')!r}; this code "
                         f"reads version {_version}; register a persistence.import_hook that converts it")
    module = _src_to_module(meta.module_src)
    if name not in module.__dict__:
        raise ValueError(f"persistent pickle names class '{name}', which its embedded module source does not "
                         "define; fix class_name with a persistence.import_hook")
    cls = persistent_class(module.__dict__[name])
    obj = cls.__new__(cls)
    _restore_state(obj, meta.state)
    return obj


def _as_meta(meta):
    """`meta` as an EasyDict whose dict `state` is an EasyDict too, so hooks can use attribute access."""
    if not isinstance(meta, dict):
        raise TypeError(f"persistent pickle meta must be a dict, got {type(meta).__name__}; "
                        "make every persistence.import_hook return a dict or None")
    meta = dnnlib.EasyDict(meta)
    if isinstance(meta.get("state"), dict) and not isinstance(meta.state, dnnlib.EasyDict):
        meta.state = dnnlib.EasyDict(meta.state)
    return meta


def _restore_state(obj, state):
    """Apply pickled `state` to a fresh `obj` the way pickle would."""
    if hasattr(obj, "__setstate__"):
        obj.__setstate__(state)
        return
    slots = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slots = state
    if state:
        obj.__dict__.update(state)
    for key, value in (slots or {}).items():
        setattr(obj, key, value)


def _module_to_src(module):
    """Whole source text of `module`: from the registry if built from pickled source, else from its file."""
    src = _module_to_src_dict.get(module)
    if src is not None:
        return src
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        raise ValueError(f"persistent_class: cannot read the source of module '{module.__name__}' (file: {path}); "
                         "persistent classes must live in a .py file or in pickled source")
    # tokenize.open honours a coding cookie and normalises newlines, as the import system does.
    with tokenize.open(path) as f:
        return f.read()


def _src_to_module(src):
    """Module executed from source text `src`, cached by the text and registered in sys.modules."""
    module = _src_to_module_dict.get(src)
    if module is not None:
        return module
    name = "_imported_module_" + uuid.uuid4().hex
    module = types.ModuleType(name)
    filename = f"<persistent module {name}>"
    # Registered before exec: the decorators inside the source look the module up while it runs.
    sys.modules[name] = module
    _module_to_src_dict[module] = src
    _src_to_module_dict[src] = module
    # Lets tracebacks and inspect show the pickled source lines.
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    try:
        exec(compile(src, filename, "exec"), module.__dict__)  # noqa: S102 -- loading pickles runs code by design
    except Exception as err:
        del sys.modules[name], _module_to_src_dict[module], _src_to_module_dict[src]
        err.add_note("while executing the module source embedded in a persistent pickle")
        raise
    return module


class _NullWriter:
    """File-like sink for trial pickling."""

    def write(self, data):
        return len(data)


class _TrialPickler(pickle.Pickler):
    """Pickler that skips tensors, arrays and persistent objects: these are checked elsewhere or always work."""

    def persistent_id(self, obj):
        if is_persistent(obj) and not isinstance(obj, type):
            return "persistent"
        if _is_array(obj):
            return "array"
        return None


def _is_array(obj):
    """True for torch tensors and numeric numpy arrays (without importing either eagerly)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.ndarray) and obj.dtype != object


def _pickle_error(obj):
    """The exception pickling `obj` raises, or None if it pickles."""
    try:
        _TrialPickler(_NullWriter(), protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except Exception as err:  # pickle raises PicklingError, TypeError, AttributeError, ...
        return err
    return None


def _check_pickleable(state, owner):
    """Raise pickle.PicklingError naming the attribute of `owner`'s `state` that cannot be pickled."""
    err = _pickle_error(state)
    if err is None:
        return
    path, culprit, err = _find_unpickleable(state, owner, err, set())
    raise pickle.PicklingError(
        f"cannot pickle persistent object: {path} is a {type(culprit).__name__} that pickle cannot handle "
        f"({type(err).__name__}: {err}); remove or replace that attribute, or leave it out in __getstate__")


def _children(obj):
    """(path suffix, value) pairs that pickle would descend into for `obj`."""
    if isinstance(obj, dict):
        pairs = []
        for key, value in obj.items():
            # nn.Module keeps submodules, parameters and buffers in these dicts; show them as attributes.
            if key in ("_modules", "_parameters", "_buffers") and isinstance(value, dict):
                pairs += [(f".{k}", v) for k, v in value.items()]
            else:
                pairs.append((f".{key}" if isinstance(key, str) and key.isidentifier() else f"[{key!r}]", value))
                pairs.append((f" (key {key!r})", key))
        return pairs
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [(f"[{i}]", v) for i, v in enumerate(obj)]
    getstate = getattr(obj, "__getstate__", None)
    state = None
    if getstate is not None and not isinstance(obj, type):
        try:
            state = getstate()
        except Exception:
            return []
    return _children(state) if isinstance(state, (dict, tuple)) else []


def _find_unpickleable(obj, path, err, seen):
    """Descend into `obj` (known not to pickle) to the deepest part that still fails: (path, part, error)."""
    seen.add(id(obj))
    for suffix, child in _children(obj):
        if id(child) in seen:
            continue
        child_err = _pickle_error(child)
        if child_err is not None:
            return _find_unpickleable(child, path + suffix, child_err, seen)
    return path, obj, err

