"""Snapshots: network pickles, training states, atomic writes, pruning and `latest` lookup.

Files in a run directory (NNNNNN = kimg, 6 digits):
    network-snapshot-NNNNNN.pkl  pickle of dict(G, D, G_ema, augment_pipe, training_set_kwargs,
                                 plugin_states): the modules deep-copied, eval, on the CPU (the
                                 StyleGAN2-ADA format; `plugin_states` maps plugin name -> dict of
                                 plain tensors, which the official loader ignores).
    training-state-NNNNNN.pt     torch.save of the dict built by the training loop (see
                                 `TRAINING_STATE_FORMAT`); plain containers, tensors and numbers
                                 only, so it loads with `torch.load(weights_only=True)`.

Every file is written to a hidden temp name in the same directory (`.tmp-*`), flushed, fsynced
and renamed with os.replace, so a crash never leaves a partial file under a final name.
"""

import copy
import os
import pickle
import re

import torch

import dnnlib
from torch_utils import misc

TRAINING_STATE_FORMAT = "stylegan2-ada-kd/training-state"
TRAINING_STATE_VERSION = 1
NETWORK_RE = re.compile(r"^network-snapshot-(\d{6,})\.pkl$")
STATE_RE = re.compile(r"^training-state-(\d{6,})\.pt$")
TEMP_PREFIX = ".tmp-"
RUN_DIR_RE = re.compile(r"^(\d+)-")


def network_snapshot_name(cur_nimg):
    return f"network-snapshot-{cur_nimg // 1000:06d}.pkl"


def training_state_name(cur_nimg):
    return f"training-state-{cur_nimg // 1000:06d}.pt"


# ----------------------------------------------------------------------------
# Atomic writes.


atomic_write = dnnlib.util.atomic_write



# ----------------------------------------------------------------------------
# Network pickles.


def network_snapshot_data(G, D, G_ema, augment_pipe, training_set_kwargs, plugin_states):
    """The pickle dict: modules deep-copied, eval, no grad, on the CPU; plugin_states {name: {key: tensor}}."""
    data = dict(training_set_kwargs=dnnlib.EasyDict(training_set_kwargs) if training_set_kwargs else None)
    for name, module in [("G", G), ("D", D), ("G_ema", G_ema), ("augment_pipe", augment_pipe)]:
        if module is not None:
            module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
        data[name] = module
    data["plugin_states"] = {name: {key: value.detach().cpu().clone() for key, value in state.items()}
                             for name, state in (plugin_states or {}).items()}
    return data


def save_network_snapshot(run_dir, cur_nimg, data):
    """Write `data` as network-snapshot-<kimg>.pkl in run_dir atomically; return the path."""
    path = os.path.join(run_dir, network_snapshot_name(cur_nimg))
    atomic_write(path, lambda f: pickle.dump(data, f))
    return path


# ----------------------------------------------------------------------------
# Training states.


def save_training_state(run_dir, cur_nimg, state):
    """Write `state` (see the training loop) as training-state-<kimg>.pt atomically; return the path."""
    state = dict(state, format=TRAINING_STATE_FORMAT, version=TRAINING_STATE_VERSION)
    path = os.path.join(run_dir, training_state_name(cur_nimg))
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def is_training_state_path(path):
    return STATE_RE.match(os.path.basename(str(path))) is not None


def load_training_state(path):
    """Read a training-state file (tensors on the CPU); one-line error for foreign or damaged files."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such training state; pass an existing training-state-*.pt") from None
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""  # torch's messages run to pages
        raise ValueError(f"{path}: not a readable training state ({type(err).__name__}: {reason}); "
                         "pass a training-state-*.pt written by this project") from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT:
        raise ValueError(f"{path}: not a stylegan2-ada-kd training state; resume from a training-state-*.pt "
                         "written by train.py, or from a network pickle (weights only)")
    if state.get("version") != TRAINING_STATE_VERSION:
        raise ValueError(f"{path}: training-state version {state.get('version')} is not supported "
                         f"(this code reads version {TRAINING_STATE_VERSION})")
    return state


def plain(value):
    """`value` with EasyDicts/tuples turned into plain dicts/lists and non-data objects into strings.

    Used for the kwargs stored in a training state, so it loads with weights_only=True.
    """
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


# ----------------------------------------------------------------------------
# Pruning and lookup.


def _numbered_files(directory, pattern):
    """{kimg: file name} of the complete files in `directory` whose names match `pattern`."""
    found = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    for name in names:
        match = pattern.match(name)
        if match and os.path.isfile(os.path.join(directory, name)):
            found[int(match.group(1))] = name
    return found


def prune_snapshots(run_dir, keep_last, protect=()):
    """Delete network/state pairs beyond the `keep_last` newest kimg values; return deleted paths.

    keep_last None keeps everything. Files named in `protect` (paths or names) are never deleted.
    """
    if keep_last is None:
        return []
    if int(keep_last) < 1:
        raise ValueError(f"keep_last={keep_last}; pass a count >= 1, or None to keep every snapshot")
    networks = _numbered_files(run_dir, NETWORK_RE)
    states = _numbered_files(run_dir, STATE_RE)
    kimgs = sorted(set(networks) | set(states), reverse=True)
    protected = {os.path.basename(str(p)) for p in protect}
    deleted = []
    for kimg in kimgs[int(keep_last):]:
        for name in (networks.get(kimg), states.get(kimg)):
            if name is not None and name not in protected:
                path = os.path.join(run_dir, name)
                os.remove(path)
                deleted.append(path)
    return deleted


def _newest_in_run_dir(run_dir):
    """(kimg, path) of the newest snapshot in run_dir, preferring the training state at equal kimg."""
    candidates = [(kimg, 1, name) for kimg, name in _numbered_files(run_dir, STATE_RE).items()]
    candidates += [(kimg, 0, name) for kimg, name in _numbered_files(run_dir, NETWORK_RE).items()]
    candidates = [c for c in candidates if looks_complete(os.path.join(run_dir, c[2]))]
    if not candidates:
        return None
    kimg, _, name = max(candidates)
    return kimg, os.path.join(run_dir, name)


def looks_complete(path):
    """Cheap check that a final-named file is a whole zip (torch.save) or pickle, not a stub."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if path.endswith(".pt"):
                f.seek(-22, os.SEEK_END)  # a zip ends with its end-of-central-directory record
                return head == b"PK\x03\x04" and f.read(4) == b"PK\x05\x06"
            return head[:1] == b"\x80"
    except OSError:
        return False


def find_latest(path):
    """Newest complete training-state-*.pt or network-snapshot-*.pkl under `path`, or None.

    path: a run directory (searched itself) or an outdir (its `NNNNN-*` run directories are
    searched, highest run number first; the first one holding a snapshot wins). At equal kimg the
    training state is preferred (it resumes exactly). Temp files (`.tmp-*`) are never returned.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory; pass an outdir or a run directory to find_latest")
    own = _newest_in_run_dir(path)
    if own is not None:
        return own[1]
    runs = []
    for name in os.listdir(path):
        match = RUN_DIR_RE.match(name)
        if match and os.path.isdir(os.path.join(path, name)):
            runs.append((int(match.group(1)), name))
    for _, name in sorted(runs, reverse=True):
        newest = _newest_in_run_dir(os.path.join(path, name))
        if newest is not None:
            return newest[1]
    return None


# ----------------------------------------------------------------------------
# Weight transfer from a network pickle.


def transfer_from_pickle(resume_data, modules, allow_partial, log=print):
    """Copy G, D, G_ema weights from a loaded pickle dict into `modules` ({name: module}).

    Prints a CopyReport per network through `log`. Shape mismatches and destination tensors the
    pickle lacks are an error unless allow_partial (then they keep their fresh values).
    """
    problems = []
    for name, module in modules.items():
        source = resume_data.get(name)
        if source is None:
            problems.append(f"{name}: not in the pickle")
            continue
        report = misc.copy_params_and_buffers(source, module, require_all=False)
        log(f"Resume {name}: {str(report).replace(chr(10), '; ')}")
        if report.shape_mismatch or report.missing:
            problems.append(f"{name}: {len(report.shape_mismatch)} shape mismatch(es), {len(report.missing)} missing")
    if problems and not allow_partial:
        raise ValueError(f"resume pickle does not match the networks ({'; '.join(problems)}); use the same "
                         "network options as the pickle, or allow a partial transfer (allow_partial)")
    return problems
