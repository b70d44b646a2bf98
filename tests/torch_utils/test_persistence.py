"""Tests for torch_utils.persistence: the pickle protocol of official network pickles."""

import copy
import importlib.util
import io
import pickle
import sys
import types
import uuid

import pytest
import torch

from torch_utils import persistence

PLAIN_SRC = '''
from torch_utils import persistence


@persistence.persistent_class
class Counter:
    def __init__(self, start, step=1):
        self.value = start
        self.step = step

    def advance(self):
        self.value += self.step
        return self.value


class UndecoratedChild(Counter):
    pass
'''

MODULE_SRC = '''
import torch
from torch_utils import persistence


@persistence.persistent_class
class Scale(torch.nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * self.gain


@persistence.persistent_class
class TinyNet(torch.nn.Module):
    def __init__(self, in_features, out_features, frozen=False):
        super().__init__()
        self.fc = torch.nn.Linear(in_features, out_features)
        self.scale = Scale(out_features)
        self.register_buffer("step", torch.zeros([], dtype=torch.int64))
        self.fc.requires_grad_(not frozen)

    def forward(self, x):
        return self.scale(self.fc(x))
'''

# The kind of class found in official pickles: imports our misc by name and calls it in forward.
OFFICIAL_SRC = '''
import torch
from torch_utils import misc, persistence


@persistence.persistent_class
class ToyLayer(torch.nn.Module):
    def __init__(self, in_features, out_features, gain=1.0):
        super().__init__()
        self.in_features = in_features
        self.gain = gain
        self.weight = torch.nn.Parameter(torch.zeros(out_features, in_features))
        self.register_buffer("bias", torch.zeros(out_features))

    def forward(self, x):
        misc.assert_shape(x, [None, self.in_features])
        offset = misc.constant([1.0, -1.0], dtype=x.dtype, device=x.device)
        return (x @ self.weight.t() + self.bias) * self.gain + offset
'''

META_KEYS = {"type", "version", "module_src", "class_name", "state"}


class SourceModules:
    """Imports source text as real file-backed modules and can make them vanish again."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.names = []

    def load(self, src):
        name = f"persist_test_{uuid.uuid4().hex}"
        path = self.tmp_path / f"{name}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        self.names.append(name)
        spec.loader.exec_module(module)
        return module

    def vanish(self, module):
        """Remove the module from sys.modules and delete its file, so only the pickle knows the code."""
        del sys.modules[module.__name__]
        (self.tmp_path / f"{module.__name__}.py").unlink()

    def cleanup(self):
        for name in self.names:
            sys.modules.pop(name, None)


@pytest.fixture
def source_modules(tmp_path):
    modules = SourceModules(tmp_path)
    yield modules
    modules.cleanup()


@pytest.fixture
def no_hooks(monkeypatch):
    """Give the test its own (empty) import-hook list so hooks never leak into other tests."""
    monkeypatch.setattr(persistence, "_import_hooks", [])


class OfficialReduce:
    """Pickles as `_reconstruct_persistent_obj(meta)`, exactly the call an official pickle contains."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return persistence._reconstruct_persistent_obj, (self.meta,)


def intercepting_loads(data, reconstruct):
    """pickle.loads with `_reconstruct_persistent_obj` replaced by `reconstruct`; returns (obj, globals looked up)."""
    looked_up = []

    class Intercept(pickle.Unpickler):
        def find_class(self, module, name):
            looked_up.append((module, name))
            if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
                return reconstruct
            return super().find_class(module, name)

    return Intercept(io.BytesIO(data)).load(), looked_up


# ----------------------------------------------------------------------------


def test_round_trip_after_source_is_gone(source_modules):
    module = source_modules.load(PLAIN_SRC)
    obj = module.Counter(5, step=3)
    obj.advance()
    data = pickle.dumps(obj)
    source_modules.vanish(module)

    restored = pickle.loads(data)
    assert type(restored) is not module.Counter
    assert type(restored).__name__ == "Counter"
    assert (restored.value, restored.step) == (8, 3)
    assert restored.init_args == (5,)
    assert restored.init_kwargs == {"step": 3}
    assert restored.advance() == 11  # methods come from the embedded source
    assert type(restored)._orig_module_src == PLAIN_SRC

    # Nested round trip: the restored object pickles again with the same source and class.
    again = pickle.loads(pickle.dumps(restored))
    assert type(again) is type(restored)
    assert again.value == 11
    assert again.init_kwargs == {"step": 3}
    _, metas = _metas_of(pickle.dumps(restored))
    assert metas[0]["module_src"] == PLAIN_SRC


def test_init_args_are_read_only_copies(source_modules):
    module = source_modules.load(PLAIN_SRC)
    step = [1, 2]
    obj = module.Counter(0, step=step)
    step.append(3)  # the recorded kwargs are a deep copy taken at construction
    kwargs = obj.init_kwargs
    kwargs["step"].append(4)
    assert obj.init_kwargs == {"step": [1, 2]}
    with pytest.raises(AttributeError):
        obj.init_kwargs = {}


def _metas_of(data):
    metas = []

    def record(meta):
        metas.append(meta)
        return meta

    obj, looked_up = intercepting_loads(data, record)
    return obj, metas


def test_pickle_stream_structure_loads_with_independent_reader(source_modules, tmp_path):
    module = source_modules.load(PLAIN_SRC)
    obj = module.Counter(7, step=2)
    data = pickle.dumps(obj)
    source_modules.vanish(module)

    def independent_reconstruct(meta):
        # A reader written from the format description alone: exec the source, __new__, update __dict__.
        assert set(meta) == META_KEYS
        assert (meta["type"], meta["version"], meta["class_name"]) == ("class", 6, "Counter")
        name = f"independent_{uuid.uuid4().hex}"
        path = tmp_path / f"{name}.py"
        path.write_text(meta["module_src"])
        fresh = types.ModuleType(name)
        fresh.__file__ = str(path)
        sys.modules[name] = fresh
        try:
            exec(compile(meta["module_src"], str(path), "exec"), fresh.__dict__)
        finally:
            del sys.modules[name]
        cls = fresh.__dict__[meta["class_name"]]
        instance = cls.__new__(cls)
        instance.__dict__.update(meta["state"])
        return instance

    restored, looked_up = intercepting_loads(data, independent_reconstruct)
    assert looked_up == [("torch_utils.persistence", "_reconstruct_persistent_obj")]
    assert (restored.value, restored.step) == (7, 2)
    assert restored._init_args == (7,) and restored._init_kwargs == {"step": 2}
    assert restored.advance() == 9


def test_meta_state_is_the_instance_dict(source_modules):
    module = source_modules.load(PLAIN_SRC)
    obj = module.Counter(1, step=4)
    _, metas = _metas_of(pickle.dumps(obj))
    assert len(metas) == 1
    assert dict(metas[0]["state"]) == {"value": 1, "step": 4, "_init_args": (1,), "_init_kwargs": {"step": 4}}
    assert metas[0]["module_src"] == PLAIN_SRC


def _module_state(**attrs):
    """State like an official pickle's: nn.Module internals from a real instance, plus `attrs`."""
    state = dict(torch.nn.Module().__dict__)
    # Pickles from older torch lack the hook dicts added since; Module.__setstate__ must fill them in.
    for key in ("_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_backward_pre_hooks"):
        state.pop(key, None)
    state.update(attrs)
    return state


def test_loads_official_format_pickle(no_hooks):
    weight = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    bias = torch.tensor([0.5, -0.5])
    state = _module_state(_parameters={"weight": weight}, _buffers={"bias": bias}, in_features=2, gain=0.5,
                          _init_args=(2, 2), _init_kwargs={"gain": 0.5})
    meta = dict(type="class", version=6, module_src=OFFICIAL_SRC, class_name="ToyLayer", state=state)
    data = pickle.dumps({"G": OfficialReduce(meta), "training_set_kwargs": None}, protocol=2)

    loaded = pickle.load(io.BytesIO(data))
    G = loaded["G"]
    assert isinstance(G, torch.nn.Module) and type(G).__name__ == "ToyLayer"
    assert persistence.is_persistent(G)
    assert G.init_args == (2, 2) and G.init_kwargs == {"gain": 0.5}
    # By hand: x @ W^T = [3, 7]; + bias = [3.5, 6.5]; * gain 0.5 = [1.75, 3.25]; + offset [1, -1].
    out = G(torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(out, torch.tensor([[2.75, 2.25]]))
    with pytest.raises(AssertionError, match="dimension 1"):
        G(torch.zeros(1, 3))
    # Re-pickling the loaded network embeds the same source.
    _, metas = _metas_of(pickle.dumps(G))
    assert metas[0]["module_src"] == OFFICIAL_SRC


def test_import_hooks_rewrite_meta(source_modules, no_hooks):
    module = source_modules.load(PLAIN_SRC)
    data = pickle.dumps(module.Counter(1, step=2))
    calls = []

    @persistence.import_hook
    def edit_in_place(meta):
        calls.append("edit")
        meta.state.value += 100  # meta and meta.state are EasyDicts

    @persistence.import_hook
    def replace_source(meta):
        calls.append("replace")
        new_src = meta.module_src.replace("self.value += self.step", "self.value += 10 * self.step")
        return dict(meta, module_src=new_src)

    restored = pickle.loads(data)
    assert calls == ["edit", "replace"]
    assert restored.value == 101
    assert restored.advance() == 121


@pytest.mark.parametrize("field, value, message", [("version", 5, "version 5"), ("type", "function", "'function'")])
def test_unsupported_meta_is_a_clear_error(no_hooks, field, value, message):
    meta = dict(type="class", version=6, module_src=PLAIN_SRC, class_name="Counter", state={})
    meta[field] = value
    with pytest.raises(ValueError, match=message) as excinfo:
        pickle.loads(pickle.dumps(OfficialReduce(meta)))
    assert "import_hook" in str(excinfo.value)


def test_is_persistent(source_modules):
    module = source_modules.load(PLAIN_SRC)
    assert persistence.is_persistent(module.Counter)
    assert persistence.is_persistent(module.Counter(0))
    assert not persistence.is_persistent(module.UndecoratedChild)
    assert not persistence.is_persistent(module.UndecoratedChild(0))
    assert not persistence.is_persistent(torch.nn.Linear(1, 1))
    assert not persistence.is_persistent(torch.nn.Linear)
    assert not persistence.is_persistent(3)
    assert persistence.persistent_class(module.Counter) is module.Counter


def test_undecorated_subclass_pickles_by_reference(source_modules):
    module = source_modules.load(PLAIN_SRC)
    child = module.UndecoratedChild(4, step=1)
    restored = pickle.loads(pickle.dumps(child))
    # Embedding the parent's source would have turned it into a Counter.
    assert type(restored) is module.UndecoratedChild
    assert restored.value == 4


def test_decorated_class_keeps_identity(source_modules):
    module = source_modules.load(PLAIN_SRC)
    assert module.Counter.__name__ == "Counter"
    assert module.Counter.__qualname__ == "Counter"
    assert module.Counter.__module__ == module.__name__


def test_nested_class_is_rejected():
    class Local:
        pass

    with pytest.raises(ValueError, match="top level"):
        persistence.persistent_class(Local)
    with pytest.raises(TypeError, match="expected a class"):
        persistence.persistent_class(lambda: None)


def test_unpickleable_attribute_is_named(source_modules):
    obj = source_modules.load(PLAIN_SRC).Counter(0)
    obj.callback = lambda: None
    with pytest.raises(pickle.PicklingError, match=r"Counter\.callback is a function"):
        pickle.dumps(obj)

    net = source_modules.load(MODULE_SRC).TinyNet(2, 3)
    net.fc.on_step = lambda: None  # deep inside a non-persistent submodule
    with pytest.raises(pickle.PicklingError, match=r"TinyNet\.fc\.on_step"):
        pickle.dumps(net)


def test_deepcopy_is_independent_and_same_class(source_modules):
    module = source_modules.load(MODULE_SRC)
    net = module.TinyNet(2, 3, frozen=True)
    clone = copy.deepcopy(net)
    assert type(clone) is type(net) and type(clone.scale) is module.Scale
    assert clone.init_args == (2, 3) and clone.init_kwargs == {"frozen": True}
    assert clone.fc.weight is not net.fc.weight
    torch.testing.assert_close(clone.fc.weight, net.fc.weight)
    assert not clone.fc.weight.requires_grad and clone.scale.gain.requires_grad
    with torch.no_grad():
        clone.scale.gain.fill_(7.0)
    assert torch.all(net.scale.gain == 1.0)

    shallow = copy.copy(net)
    assert type(shallow) is type(net) and shallow.fc is net.fc


def test_module_round_trip_keeps_parameters(source_modules):
    module = source_modules.load(MODULE_SRC)
    torch.manual_seed(0)
    net = module.TinyNet(4, 3, frozen=True)
    with torch.no_grad():
        net.scale.gain.copy_(torch.tensor([1.0, 2.0, 3.0]))
    net.step.fill_(17)
    x = torch.randn(5, 4)
    expected = net(x)
    data = pickle.dumps(net)
    source_modules.vanish(module)

    restored = pickle.loads(data)
    assert type(restored).__name__ == "TinyNet" and type(restored.scale).__name__ == "Scale"
    assert persistence.is_persistent(restored.scale)
    assert restored.scale.init_args == (3,)
    assert list(restored.state_dict()) == list(net.state_dict())
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], tensor)
    assert int(restored.step) == 17
    assert not restored.fc.weight.requires_grad and restored.scale.gain.requires_grad
    torch.testing.assert_close(restored(x), expected)
    # Hooks registered after loading work: Module.__setstate__ restored the hook dicts.
    restored.register_forward_hook(lambda mod, inputs, output: output * 0)
    assert torch.all(restored(x) == 0)
